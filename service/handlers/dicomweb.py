"""The PACS round trip around an explanation: fetch the instance (WADO-RS), run the usual handler on its bytes, and
with ``store`` write the DICOM results back (STOW-RS); and the review page's picker: QIDO-RS searches and one
instance's Part 10. PACS calls are blocking HTTP: they run in the thread pool."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

from ..dicomweb import Pacs
from ..errors import NotFound, XaasError
from ..runtime import Runtime

__all__ = ["from_pacs", "instance", "search"]


async def from_pacs(runtime: Runtime, reference: tuple[str, str, str], store: bool,
                    run: Callable[[bytes], Awaitable[Any]],
                    dicom_of: Callable[[Any], list[dict[str, str] | None]]) -> dict[str, Any]:
    """``run(data)`` answers for the fetched instance (a handler result with a ``body``); ``dicom_of(body)`` picks
    the DICOM outputs (``{kind: base64}`` members) to store. The answer is the usual body plus ``stored``: the SOP
    Instance UIDs the PACS accepted."""
    pacs = Pacs(runtime.settings)
    data = await runtime.in_thread(pacs.fetch, *reference)
    result = await run(data)
    if result.body is None:  # a conditional (304) answer: the handlers only give one for If-None-Match
        raise XaasError("no body to store")
    body = result.body.model_dump(mode="json", exclude_unset=True)
    blobs = [base64.b64decode(value) for item in dicom_of(result.body) if item for value in item.values()]
    body["stored"] = await runtime.in_thread(pacs.store, blobs) if store and blobs else []
    return body


def _browsable(runtime: Runtime) -> Pacs:
    # Without a PACS these resources do not exist on this deployment (a 404, as for any absent resource), whereas the
    # explain routes, which need one to do their work, answer 503.
    if not runtime.settings.dicomweb_url:
        raise NotFound("no PACS is configured (set XAAS_DICOMWEB_URL)")
    return Pacs(runtime.settings)


async def search(runtime: Runtime, level: str, study: str | None = None, series: str | None = None, *,
                 limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    pacs = _browsable(runtime)
    return await runtime.in_thread(pacs.search, level, study, series, limit=limit, offset=offset)


async def instance(runtime: Runtime, study: str, series: str, sop: str) -> bytes:
    """The instance's Part 10 bytes, for a viewer that then sends them to the usual endpoints."""
    pacs = _browsable(runtime)
    return await runtime.in_thread(pacs.fetch, study, series, sop)
