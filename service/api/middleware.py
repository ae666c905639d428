"""Pure-ASGI middleware: request ids + access metrics + last-resort 500s, and the body-size limit.

Pure ASGI (not BaseHTTPMiddleware) so streaming bodies are limited *before* they are read into memory and every
response, including an unexpected 500, carries ``X-Request-ID``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..metrics import Metrics

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("xaas.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _problem_bytes(status: int, title: str, detail: str, code: str) -> bytes:
    return json.dumps({"type": f"https://xaas.dev/problems/{code}", "title": title, "status": status,
                       "detail": detail}).encode()


async def _send_problem(send: Send, status: int, title: str, detail: str, code: str,
                        extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = _problem_bytes(status, title, detail, code)
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """Require one of the configured API keys (``Authorization: Bearer <key>`` or ``X-API-Key``) on every route but
    the exempt ones. Keys are compared with ``hmac.compare_digest`` against every key (no early exit), so timing
    reveals neither which key nor how much of one matched."""

    def __init__(self, app: ASGIApp, keys: list[str], exempt: frozenset[str], exempt_prefixes: tuple[str, ...] = ()):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.exempt = exempt
        self.exempt_prefixes = exempt_prefixes

    def _authorised(self, headers: list[tuple[bytes, bytes]]) -> bool:
        presented = b""
        for name, value in headers:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
            elif name == b"x-api-key" and not presented:
                presented = value.strip()
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(presented, key)
        return ok and bool(presented)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] in self.exempt or scope["path"].startswith(self.exempt_prefixes)
                or scope.get("method") == "OPTIONS"):
            return await self.app(scope, receive, send)
        if not self._authorised(scope.get("headers", [])):
            return await _send_problem(send, 401, "Unauthorized",
                                       "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
                                       "unauthorized",
                                       [(b"www-authenticate", b'Bearer realm="xaas"')])
        return await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class BodyLimitMiddleware:
    """413 when ``Content-Length`` exceeds the limit (before reading), or when a chunked body grows past it; 408 when
    the body does not arrive within ``body_timeout`` seconds (slow-body clients cannot hold a request open)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout: float = 30.0):
        self.app = app
        self.max = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_problem(send, 400, "Bad Request", "Content-Length is not an integer",
                                               "bad-request")
                if declared > self.max:
                    return await _send_problem(send, 413, "Payload too large",
                                               f"request body of {declared} bytes exceeds the limit of "
                                               f"{self.max} bytes", "payload-too-large",
                                               [(b"connection", b"close")])
        seen = 0
        started = False
        body_done = False
        deadline = time.monotonic() + self.body_timeout

        async def limited_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body only a disconnect can come: no deadline (the handler polls for it)
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyTimeout() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max:
                    raise BodyTooLarge()
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_problem(send, 413, "Payload too large",
                                    f"request body exceeds the limit of {self.max} bytes", "payload-too-large",
                                    [(b"connection", b"close")])
        except BodyTimeout:
            if not started:
                await _send_problem(send, 408, "Request Timeout",
                                    f"the request body did not arrive within {self.body_timeout:g} s",
                                    "request-timeout",
                                    [(b"connection", b"close")])


class RequestContextMiddleware:
    """Echo or mint ``X-Request-ID``, log one line per request, record route metrics, turn crashes into 500 problems."""

    def __init__(self, app: ASGIApp, metrics: Metrics, *, id_from_proxy: bool = False, served_by: str | None = None):
        """``id_from_proxy``: a proxy in front (Ray Serve's) has already chosen the request id, passes it in
        ``X-Request-ID`` and adds that header to every response itself — so it is used as given (it is what the client
        sees) and not added a second time. ``served_by``: sent as ``X-Served-By`` (which replica answered)."""
        self.app = app
        self.metrics = metrics
        self.id_from_proxy = id_from_proxy
        self.extra_headers = [(b"x-served-by", served_by.encode())] if served_by else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        if self.id_from_proxy and incoming:
            request_id = incoming[:128]
        else:
            request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        added = self.extra_headers if self.id_from_proxy else [*self.extra_headers,
                                                               (b"x-request-id", request_id.encode())]
        status = 500
        started = False
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *added]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            if not started:
                await _send_problem(send_with_id, 500, "Internal Server Error",
                                    "an unexpected error occurred; quote the X-Request-ID when reporting it",
                                    "internal-error")
        finally:
            elapsed = time.perf_counter() - t0
            route = _route_template(scope)
            self.metrics.requests.labels(route, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            call = scope.get("state", {}).get("call")
            log.info("request", extra={
                "request_id": request_id, "route": route, "http_method": scope.get("method"), "status": status,
                "latency_ms": round(elapsed * 1000, 2), "model": getattr(call, "model", None),
                "method": getattr(call, "method", None), "batch_rows": getattr(call, "rows", None),
                "cache": getattr(call, "cache", None),
            })


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path or "unmatched"
