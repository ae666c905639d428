"""The handler layer: what each endpoint *does*, without HTTP (the MLServer dataplane pattern).

Routes (:mod:`service.api.routes`) parse a request into options and image bytes, call one handler function and turn
its result — a response schema of :mod:`service.api.schemas` — into HTTP. Handlers validate against the registry and
the model's capabilities before any model work, submit work to the runtime (batchers, jobs) and shape the results.
They never see a ``Request``, headers or status codes; errors are :mod:`service.errors` exceptions.

Each handler call gets a :class:`CallInfo` to fill in for the access log (model, explanation method, rows), so a
request that fails half-way is still logged with what it was about.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CallInfo"]


@dataclass
class CallInfo:
    """What the access log line says about one call; handlers fill it in as they learn it."""

    model: str | None = None
    method: str | None = None
    rows: int | None = None
