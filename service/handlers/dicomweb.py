"""The PACS round trip around an explanation: fetch the instance (WADO-RS), run the usual handler on its bytes, and
with ``store`` write the DICOM results back (STOW-RS); and the review page's picker: QIDO-RS searches and one
instance's Part 10. PACS calls are blocking HTTP: they run in the thread pool."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from ..dicomweb import Pacs
from ..errors import BadOption, FieldError, NotFound, PacsTimeout, XaasError
from ..runtime import Runtime

__all__ = ["check_reference", "from_pacs", "instance", "search"]

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")


def check_reference(runtime: Runtime, reference: tuple[str, str, str | None], model: str | None) -> None:
    """A 2-D model explains one instance: ``instance`` is required unless the model takes volumes (then the whole
    series is fetched when it is left out)."""
    if reference[2] is None and not runtime.model(model).volumetric:
        raise BadOption("missing or not a string: instance (only volume models take a whole series)",
                        errors=[FieldError("instance", "a DICOM UID string")])


async def from_pacs(runtime: Runtime, reference: tuple[str, str, str | None], store: bool,
                    run: Callable[[bytes], Awaitable[Any]],
                    dicom_of: Callable[[Any], list[dict[str, str] | None]], answer: type[R]) -> R:
    """``run(data)`` answers for the fetched instance (a handler result with a ``body``); ``dicom_of(body)`` picks
    the DICOM outputs (``{kind: base64}`` members) to store. The answer (of type ``answer``) is the usual body plus
    ``stored``: the SOP Instance UIDs the PACS accepted."""
    pacs = Pacs(runtime.settings)
    data = await _within(pacs, "retrieve", runtime.in_thread(pacs.fetch, *reference))
    result = await run(data)
    if result.body is None:  # a conditional (304) answer: the handlers only give one for If-None-Match
        raise XaasError("no body to store")
    blobs = [base64.b64decode(value) for item in dicom_of(result.body) if item for value in item.values()]
    stored = await _within(pacs, "store", runtime.in_thread(pacs.store, blobs)) if store and blobs else []
    # validated from the body's JSON: the fields it left unset stay unset (the routes exclude them)
    return answer.model_validate({**result.body.model_dump(mode="json", exclude_unset=True), "stored": stored})


async def _within(pacs: Pacs, operation: str, work: Awaitable[T]) -> T:
    """The PACS request's answer within the timeout in all. Socket timeouts bound each read only: a PACS that
    trickles its answer a byte at a time would hold the request for ever. Past the deadline the client is answered
    at once, and the body being read is shut down so that the thread is free again."""
    try:
        return await asyncio.wait_for(work, pacs.timeout)
    except TimeoutError:
        pacs.abort()
        raise PacsTimeout(operation, pacs.timeout) from None


def _browsable(runtime: Runtime) -> Pacs:
    # Without a PACS these resources do not exist on this deployment (a 404, as for any absent resource), whereas the
    # explain routes, which need one to do their work, answer 503.
    if not runtime.settings.dicomweb_url:
        raise NotFound("no PACS is configured (set XAAS_DICOMWEB_URL)")
    return Pacs(runtime.settings)


async def search(runtime: Runtime, level: str, study: str | None = None, series: str | None = None, *,
                 limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    pacs = _browsable(runtime)
    return await _within(pacs, "search", runtime.in_thread(pacs.search, level, study, series, limit=limit,
                                                           offset=offset))


async def instance(runtime: Runtime, study: str, series: str, sop: str) -> bytes:
    """The instance's Part 10 bytes, for a viewer that then sends them to the usual endpoints."""
    pacs = _browsable(runtime)
    return await _within(pacs, "retrieve", runtime.in_thread(pacs.fetch, study, series, sop))
