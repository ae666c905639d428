"""``Accept: application/dicom``: answer with the one DICOM result itself (Part 10) instead of the JSON body.

Content negotiation is HTTP-only, so it lives here; the handlers build the same objects either way. A DICOM result
has new UIDs in every answer, so it carries no entity tag (the handlers answer untagged, never 304); ``Vary: Accept``
keeps caches from serving it for the JSON.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import Request, Response

from ..errors import FieldError, InvalidOption

__all__ = ["DICOM_MEDIA_TYPE", "dicom_response", "with_dicom_alternative", "wants_dicom"]

DICOM_MEDIA_TYPE = "application/dicom"


def with_dicom_alternative(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` whose 200 also documents the application/dicom representation (a copy)."""
    ok = dict(responses.get(200, {"description": "Successful Response"}))
    ok["description"] = (f"{ok.get('description', 'Successful Response')}. With Accept: {DICOM_MEDIA_TYPE} and "
                         "exactly one dicom-* output for one target: that DICOM object itself (Part 10), no ETag.")
    ok["content"] = {**ok.get("content", {}), DICOM_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}
    return {**responses, 200: ok}


def wants_dicom(request: Request, outputs: list[str]) -> bool:
    """True when the client's Accept names application/dicom; then exactly one DICOM output must be asked for."""
    accept = ",".join(request.headers.getlist("accept")).lower()
    media = {part.split(";")[0].strip() for part in accept.split(",")}
    if DICOM_MEDIA_TYPE not in media:
        return False
    kinds = [kind for kind in outputs if kind.startswith("dicom-")]
    if len(kinds) != 1:
        raise InvalidOption(f"Accept: {DICOM_MEDIA_TYPE} returns one DICOM object: ask for exactly one DICOM output "
                            f"(got {len(kinds)})", errors=[FieldError("outputs", "exactly one dicom-* output")])
    return True


def dicom_response(objects: list[dict[str, str] | None], cache: str | None) -> Response:
    """The single object of ``objects`` (the ``dicom`` members of the body) as application/dicom."""
    blobs = [value for item in objects if item for value in item.values()]
    if len(blobs) != 1:
        raise InvalidOption(f"Accept: {DICOM_MEDIA_TYPE} returns one DICOM object, this request yields "
                            f"{len(blobs)} (one per target): ask for one target (top_k=1 or one target)",
                            errors=[FieldError("top_k", "one target with Accept: application/dicom")])
    headers: dict[str, Any] = {"Vary": "Accept"}
    if cache:
        headers["X-Cache"] = cache
    return Response(content=base64.b64decode(blobs[0]), media_type=DICOM_MEDIA_TYPE, headers=headers)
