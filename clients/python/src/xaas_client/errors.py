"""Typed exceptions mirroring the server's RFC 9457 problem documents.

One class per status family lets callers write ``except NotFound`` instead of comparing numbers, while every
instance still carries the raw problem fields (and the ``X-Request-ID`` to quote when reporting a bug).
"""

from __future__ import annotations

from typing import Any

import httpx

from .retry import parse_retry_after

__all__ = [
    "APIError",
    "BadRequest",
    "ClientError",
    "Forbidden",
    "InvalidInput",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobTimeout",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "XaasConnectionError",
    "XaasError",
    "error_from_response",
]


class XaasError(Exception):
    """Base of every error this client raises, so one ``except XaasError`` handles them all.

    ``status`` is ``None`` when no HTTP answer was received (see :class:`XaasConnectionError`).
    """

    def __init__(self, detail: str, *, status: int | None = None, title: str | None = None, type: str | None = None,
                 errors: list[dict[str, Any]] | None = None, request_id: str | None = None,
                 retry_after: float | None = None, response: httpx.Response | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.title = title
        self.type = type
        self.errors = errors
        self.request_id = request_id
        self.retry_after = retry_after
        self.response = response

    def __str__(self) -> str:
        head = " ".join(str(p) for p in (self.status, self.title) if p)
        text = f"{head}: {self.detail}" if head else self.detail
        return f"{text} (request id {self.request_id})" if self.request_id else text


class APIError(XaasError):
    """The server answered with an error status (usually an ``application/problem+json`` body)."""


class ClientError(APIError):
    """4xx: the request needs changing before it can succeed (except :class:`RateLimited`)."""


class BadRequest(ClientError):
    """400: a malformed or unknown option."""


class Unauthorized(ClientError):
    """401: missing or wrong API key."""


class Forbidden(ClientError):
    """403: the API key may not do this."""


class NotFound(ClientError):
    """404: unknown model, method or route."""


class PayloadTooLarge(ClientError):
    """413: body or image over the server's limits."""


class UnsupportedMediaType(ClientError):
    """415: the body is neither multipart nor JSON."""


class InvalidInput(ClientError):
    """422: undecodable image or an option value out of range (e.g. an unknown target)."""


class RateLimited(ClientError):
    """429: the model's queue is full; ``retry_after`` says how long the server asks you to wait."""


class ServerError(APIError):
    """5xx: the server failed; retrying later may help."""


class Unavailable(ServerError):
    """503: not ready yet or shutting down; ``retry_after`` is the server's hint."""


class Timeout(ServerError):
    """504: the request exceeded its server-side deadline (try a cheaper method or fewer targets)."""


class XaasConnectionError(XaasError):
    """No usable HTTP answer: the server could not be reached, or the connection broke or timed out."""


class UnexpectedResponse(XaasError):
    """A success status with a body that does not match the API schema (a proxy page, an incompatible server)."""


class JobError(XaasError):
    """A background job (e.g. a class impression) did not end ``done``; ``job`` is its last known state."""

    def __init__(self, detail: str, *, job: Any = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.job = job


class JobFailed(JobError):
    """The job ended ``failed``; ``job.error`` is the server's reason."""


class JobCancelled(JobError):
    """The job ended ``cancelled`` (by a ``DELETE /jobs/{id}``, or the server shutting down)."""


class JobTimeout(JobError):
    """The job did not finish within the client's ``timeout``; the client cancelled it."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 413: PayloadTooLarge,
    415: UnsupportedMediaType, 422: InvalidInput, 429: RateLimited, 503: Unavailable, 504: Timeout,
}


def error_class(status: int) -> type[APIError]:
    """The most specific class for ``status``, falling back to the 4xx/5xx family."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return ClientError
    if status >= 500:
        return ServerError
    return APIError


def error_from_response(response: httpx.Response) -> APIError:
    """Build the typed error for an error response; tolerates non-problem bodies (proxies, load balancers)."""
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        pass
    problem = body if isinstance(body, dict) else {}
    status = response.status_code
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = response.text.strip()[:500] or response.reason_phrase or "error"
    errors = problem.get("errors")
    return error_class(status)(
        detail,
        status=status,
        title=str(problem.get("title") or response.reason_phrase or "Error"),
        type=problem.get("type") if isinstance(problem.get("type"), str) else None,
        errors=errors if isinstance(errors, list) else None,
        request_id=response.headers.get("x-request-id"),
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        response=response,
    )
