"""Dependency injection: handlers receive the Runtime, never a global."""

from __future__ import annotations

from fastapi import Request

from ..runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime
