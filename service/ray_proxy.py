"""Serve's own error answers as RFC 9457 problems, like every other error of the service.

Ray Serve's proxy answers some requests itself, in plain text: 429 when its queue is full (backpressure), 408 past
``request_timeout_s``, 503 while no replica can take the request, 500 when a replica died mid-request. This ASGI
middleware runs *in the proxy* (Serve's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` hook, set by
``xaas serve --ray``: ``service.ray_proxy:middlewares``) and rewrites exactly those — an error status whose body is not
already ``application/problem+json`` — into problem documents, keeping the status, ``Retry-After`` and
``X-Request-ID``; the app's own answers pass through untouched. Imports nothing heavy: it loads in the proxy process.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

CALLBACK = "service.ray_proxy:middlewares"
_TITLES = {408: ("Request Timeout", "request-timeout"), 429: ("Too many requests queued", "queue-full"),
           500: ("Internal Server Error", "internal-error"), 503: ("Service unavailable", "unavailable"),
           504: ("Request deadline exceeded", "deadline-exceeded")}
_KEEP = {b"retry-after", b"x-request-id"}


class ServeProblems:
    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict[str, Any] | None = None
        body = bytearray()

        async def rewrite(message: dict[str, Any]) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                problem = headers.get(b"content-type", b"").startswith(b"application/problem+json")
                if message["status"] in _TITLES and not problem:
                    held = message  # Serve's own plain-text answer: rewritten once its body is complete
                    return
            elif message["type"] == "http.response.body" and held is not None:
                body.extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                await _send_problem(send, held, bytes(body))
                return
            await send(message)

        await self.app(scope, receive, rewrite)


async def _send_problem(send: Callable, start: dict[str, Any], original: bytes) -> None:
    status = start["status"]
    title, code = _TITLES[status]
    detail = original.decode("utf-8", "replace").strip() or title
    doc = json.dumps({"type": f"https://xaas.dev/problems/{code}", "title": title, "status": status,
                      "detail": f"{detail} (answered by Ray Serve's proxy)"}).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() in _KEEP]
    headers += [(b"content-type", b"application/problem+json"), (b"content-length", str(len(doc)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": doc})


def middlewares() -> list[Any]:
    """The proxy callback: Serve calls it in each proxy and wraps its HTTP app in what it returns."""
    from starlette.middleware import Middleware

    return [Middleware(ServeProblems)]
