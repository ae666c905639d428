"""``/dicomweb/explain/{method}`` and ``/dicomweb/localize``: the image comes from the PACS (WADO-RS), the DICOM
results optionally go back to it (STOW-RS). HTTP only: the work is the usual handlers'."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

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
    PacsInstances,
    PacsSeriesList,
    PacsStudies,
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


# QIDO-RS / WADO-RS through the service, for the review page's study / series / instance picker
_UID = r"^[0-9.]{1,64}$"
_SEARCH_PROBLEMS = problem_responses(400, 401, 404, 422, 502, 504)
Limit = Query(100, ge=1, le=1000, description="Most matches returned.")
Offset = Query(0, ge=0, le=1_000_000, description="Matches skipped (paging).")


@router.get("/dicomweb/studies", response_model=PacsStudies, summary="Studies in the PACS (QIDO-RS; UIDs, dates, "
            "descriptions and counts only: no patient attribute)", responses=_SEARCH_PROBLEMS)
async def pacs_studies(runtime: RuntimeDep, limit: int = Limit, offset: int = Offset) -> PacsStudies:
    return PacsStudies(studies=await dicomweb_handler.search(runtime, "studies", limit=limit, offset=offset))


@router.get("/dicomweb/studies/{study}/series", response_model=PacsSeriesList,
            summary="Series of a study in the PACS (QIDO-RS)", responses=_SEARCH_PROBLEMS)
async def pacs_series(runtime: RuntimeDep, study: str = Path(pattern=_UID), limit: int = Limit,
                      offset: int = Offset) -> PacsSeriesList:
    return PacsSeriesList(series=await dicomweb_handler.search(runtime, "series", study, limit=limit, offset=offset))


@router.get("/dicomweb/studies/{study}/series/{series}/instances", response_model=PacsInstances,
            summary="Instances of a series in the PACS (QIDO-RS)", responses=_SEARCH_PROBLEMS)
async def pacs_instances(runtime: RuntimeDep, study: str = Path(pattern=_UID), series: str = Path(pattern=_UID),
                         limit: int = Limit, offset: int = Offset) -> PacsInstances:
    found = await dicomweb_handler.search(runtime, "instances", study, series, limit=limit, offset=offset)
    return PacsInstances(instances=found)


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{instance}", response_class=Response,
            summary="One instance from the PACS as DICOM Part 10 (WADO-RS)",
            responses={200: {"content": {"application/dicom": {}}, "description": "The instance, Part 10"},
                       **problem_responses(400, 401, 404, 422, 502, 504)})
async def pacs_instance(runtime: RuntimeDep, study: str = Path(pattern=_UID), series: str = Path(pattern=_UID),
                        instance: str = Path(pattern=_UID)) -> Response:
    data = await dicomweb_handler.instance(runtime, study, series, instance)
    # the file carries the patient's identity: never cached by intermediaries
    return Response(data, media_type="application/dicom", headers={"Cache-Control": "no-store"})
