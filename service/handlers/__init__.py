"""The handler layer: what each endpoint *does*, without HTTP (the MLServer dataplane pattern).

Routes (:mod:`service.api.routes`) parse a request into options and image bytes, call one handler function and turn
its result — a response schema of :mod:`service.api.schemas`, or a :class:`Conditional` around one — into HTTP.
Handlers validate against the registry and the model's capabilities before any model work, submit work to the runtime
(batchers, jobs, the result cache) and shape the results. They never see a ``Request``, headers or status codes;
errors are :mod:`service.errors` exceptions.

Each handler call gets a :class:`CallInfo` to fill in for the access log (model, explanation method, rows, cache), so
a request that fails half-way is still logged with what it was about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

__all__ = ["CallInfo", "Conditional", "HeldTags", "untagged"]

T = TypeVar("T")


@dataclass
class CallInfo:
    """What the access log line says about one call; handlers fill it in as they learn it."""

    model: str | None = None
    method: str | None = None
    rows: int | None = None
    cache: Literal["hit", "miss", "not-modified"] | None = None


@dataclass(frozen=True)
class HeldTags:
    """The entity tags a client says it already holds (``If-None-Match``, parsed by the route): ``any`` for ``*``,
    else the opaque tags (quotes included, without the ``W/`` prefix)."""

    any: bool = False
    opaque: frozenset[str] = frozenset()

    def names(self, etag: str) -> bool:
        """A listed tag matches ``etag`` by weak comparison (RFC 9110 §8.8.3.2, the one ``If-None-Match`` uses: equal
        opaque tags, ``W/`` ignored). The client then got exactly this answer before — the image was valid, the answer
        a 200 — so nothing needs computing, not even the image decoded."""
        return etag.removeprefix("W/") in self.opaque

    def matches(self, etag: str) -> bool:
        """``If-None-Match`` is false (answer "not modified") once the answer exists: for ``*``, any answer does —
        known only after the request was processed, since an undecodable image has none."""
        return self.any or self.names(etag)


@dataclass(frozen=True)
class Conditional(Generic[T]):
    """A tagged answer: its entity tag, the body (None = the client's copy is current, answer "not modified"), and
    whether the body's maps came from the result cache (None when nothing was computed).

    ``etag`` None: the answer has no entity tag and is never "not modified" — a body with DICOM results holds new
    UIDs each time, so no two answers are the same representation (see :func:`untagged`)."""

    etag: str | None
    body: T | None = None
    cache_hit: bool | None = None

    @property
    def not_modified(self) -> bool:
        return self.body is None


def untagged(body: T, cache_hit: bool | None) -> Conditional[T]:
    """An answer that must not be cached by entity tag: each one is new (DICOM results: new SOP Instance, Series
    UIDs), so a 304 would make the client reuse objects whose UIDs a PACS already holds."""
    return Conditional(None, body, cache_hit=cache_hit)
