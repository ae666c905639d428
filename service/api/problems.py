"""RFC 9457 problem+json responses for every error path, and the ``Allow`` header of 405 answers."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from ..errors import FieldError, XaasError
from .deps import ClientDisconnected

PROBLEM_TYPE_BASE = "https://xaas.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

log = logging.getLogger("xaas.api")


def problem_response(status: int, detail: str, *, title: str | None = None, code: str | None = None,
                     errors: list[FieldError] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + (code or phrase.lower().replace(" ", "-")),
        "title": title or phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = [e.to_json() for e in errors]
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def from_error(exc: XaasError) -> JSONResponse:
    return problem_response(exc.status, exc.detail, title=exc.title, code=exc.code, errors=exc.errors,
                            headers=exc.headers)


def _validation_errors(exc: RequestValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        out.append(FieldError(".".join(loc) or "request", str(err.get("msg", "invalid"))))
    return out


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own 405 names only the first matching route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if not getattr(route, "methods", None):
            continue
        match, _ = route.matches(request.scope)
        if match in (Match.FULL, Match.PARTIAL):
            methods |= set(route.methods)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _for_oip(request: Request, response: JSONResponse) -> JSONResponse:
    """Open Inference Protocol clients read an error's text from member ``error``: under ``/v2/`` the problem
    carries it too (same text as ``detail``), so both kinds of client understand the answer."""
    if not request.url.path.startswith("/v2/"):
        return response
    body = json.loads(response.body)
    body["error"] = body.get("detail", "")
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return JSONResponse(body, status_code=response.status_code, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def install(app: FastAPI) -> None:
    @app.exception_handler(XaasError)
    async def _xaas(request: Request, exc: XaasError) -> JSONResponse:
        return _for_oip(request, from_error(exc))

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nobody reads it; 499 ("client closed request") marks it in logs/metrics

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return _for_oip(request, problem_response(400, f"body is not valid JSON ({detail})",
                                                      title="Malformed option", code="bad-option", errors=errors))
        return _for_oip(request, problem_response(422, detail, title="Invalid request", code="invalid-option",
                                                  errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            allow = allowed_methods(request)
            headers["Allow"] = ", ".join(allow)
            detail = f"{request.method} is not allowed here; allowed: {', '.join(allow)}"
        return _for_oip(request, problem_response(exc.status_code, detail, headers=headers))
