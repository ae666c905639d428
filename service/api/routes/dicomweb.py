"""``/dicomweb/explain/{method}`` and ``/dicomweb/localize``: the image comes from the PACS (WADO-RS), the DICOM
results optionally go back to it (STOW-RS). HTTP only: the work is the usual handlers'."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request

from ...errors import BadOption, FieldError
from ...handlers import dicomweb as dicomweb_handler
from ...handlers import explain as explain_handler
from ...handlers import localize as localize_handler
from ..deps import CallDep, RuntimeDep
from ..inputs import parse_json_object, parse_options
from ..schemas import (
    DicomwebExplainResponse,
    DicomwebLocalizeResponse,
    ExplainOptions,
    LocalizeOptions,
    dicomweb_request_body,
    problem_responses,
)

router = APIRouter(tags=["dicomweb"])

_REFERENCE = ("study", "series", "instance")
_PROBLEMS = problem_responses(400, 401, 404, 422, 502, 503, 504)


async def _reference_and_options(request: Request) -> tuple[tuple[str, str, str | None], bool, dict[str, Any]]:
    raw = parse_json_object(await request.body(), what="{study, series, instance, ...options}")
    missing = [name for name in _REFERENCE if not isinstance(raw.get(name), str)
               and not (name == "instance" and raw.get(name) is None)]
    if missing:
        raise BadOption(f"missing or not a string: {', '.join(missing)}",
                        errors=[FieldError(name, "a DICOM UID string") for name in missing])
    reference = tuple(raw.pop(name, None) for name in _REFERENCE)
    store = raw.pop("store", False)
    if not isinstance(store, bool):
        raise BadOption("store must be true or false", errors=[FieldError("store", "a boolean")])
    return reference, store, raw  # type: ignore[return-value]


def _split_extras(raw: dict[str, Any], names: frozenset[str], model: type) -> dict[str, Any]:
    return {k: raw.pop(k) for k in list(raw) if k in names and k not in model.model_fields}


@router.post("/dicomweb/explain/{method}", response_model=DicomwebExplainResponse, response_model_exclude_unset=True,
             summary="Explain an instance fetched from the PACS (WADO-RS); with store, write the DICOM results back "
             "(STOW-RS)", responses=_PROBLEMS, openapi_extra=dicomweb_request_body("POST /explain/{method}"))
async def dicomweb_explain(request: Request, runtime: RuntimeDep, call: CallDep,
                           method: str = Path(max_length=64, description="See GET /methods.")
                           ) -> DicomwebExplainResponse:
    reference, store, raw = await _reference_and_options(request)
    names = explain_handler.method_param_names(method)
    extras = _split_extras(raw, names, ExplainOptions)
    opts = parse_options(ExplainOptions, raw, names)
    dicomweb_handler.check_reference(runtime, reference, opts.model)
    return await dicomweb_handler.from_pacs(
        runtime, reference, store, lambda data: explain_handler.explain(runtime, method, data, opts, extras, call),
        lambda body: [item.dicom for item in body.explanations], DicomwebExplainResponse)


@router.post("/dicomweb/localize", response_model=DicomwebLocalizeResponse, response_model_exclude_unset=True,
             summary="Boxes for an instance fetched from the PACS; with store, write the SR back (STOW-RS)",
             responses=_PROBLEMS, openapi_extra=dicomweb_request_body("POST /localize"))
async def dicomweb_localize(request: Request, runtime: RuntimeDep, call: CallDep) -> DicomwebLocalizeResponse:
    reference, store, raw = await _reference_and_options(request)
    names = localize_handler.param_names(raw)
    extras = _split_extras(raw, names, LocalizeOptions)
    opts = parse_options(LocalizeOptions, raw, names)
    dicomweb_handler.check_reference(runtime, reference, opts.model)
    return await dicomweb_handler.from_pacs(
        runtime, reference, store, lambda data: localize_handler.localize(runtime, data, opts, extras, call),
        lambda body: [body.dicom], DicomwebLocalizeResponse)
