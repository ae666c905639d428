"""Dependency injection: routes receive the Runtime and a CallInfo, never a global."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from ..handlers import CallInfo
from ..runtime import Runtime

T = TypeVar("T")


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_call_info(request: Request) -> CallInfo:
    """The access-log facts of this request, filled in by its handler (read by ``RequestContextMiddleware``)."""
    call = CallInfo()
    request.state.call = call
    return call


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
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
