"""Dependency injection: routes receive the Runtime and a CallInfo, never a global."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from ..handlers import CallInfo
from ..runtime import Runtime
from .schemas import JobAccepted

T = TypeVar("T")


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_call_info(request: Request) -> CallInfo:
    """The access-log facts of this request, filled in by its handler (read by ``RequestContextMiddleware``)."""
    call = CallInfo()
    request.state.call = call
    return call


def prefers_async(request: Request) -> bool:
    """Whether the request asks ``Prefer: respond-async`` (RFC 7240: comma-separated preferences, each a token with
    optional ``=value`` and ``;`` parameters, names case-insensitive; several Prefer headers combine)."""
    for header in request.headers.getlist("prefer"):
        for preference in header.split(","):
            name = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
            if name == "respond-async":
                return True
    return False


def accepted(job: JobAccepted) -> JSONResponse:
    """The 202 answer to a ``Prefer: respond-async`` request (RFC 7240)."""
    return JSONResponse(job.model_dump(mode="json"), status_code=202,
                        headers={"Location": f"/jobs/{job.id}", "Preference-Applied": "respond-async"})


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
AsyncDep = Annotated[bool, Depends(prefers_async)]
CallDep = Annotated[CallInfo, Depends(get_call_info)]


class ClientDisconnected(Exception):
    """The client went away while its job waited; the job was cancelled (dropped if it had not started)."""


async def unless_disconnected(request: Request, awaitable: Awaitable[T], poll: float = 0.2) -> T:
    """Await ``awaitable`` but cancel it as soon as the client disconnects, so a queued job whose client gave up is
    dropped before it costs model time."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ClientDisconnected()
    finally:
        if not task.done():
            task.cancel()
