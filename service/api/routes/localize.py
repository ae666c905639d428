from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ...handlers import localize as localize_handler
from ..conditional import CONDITIONAL_RESPONSES, IfNoneMatch, answer, parse_if_none_match
from ..deps import AsyncDep, CallDep, RuntimeDep, accepted, unless_disconnected
from ..dicom_accept import dicom_response, wants_dicom, with_dicom_alternative
from ..inputs import read_image_request
from ..schemas import (
    ASYNC_ACCEPTED,
    IMAGE_PROBLEMS,
    LocalizeOptions,
    LocalizeResponse,
    image_request_body,
    problem_responses,
)

router = APIRouter(tags=["localize"])


@router.post("/localize", response_model=LocalizeResponse, response_model_exclude_unset=True,
             summary="Bounding boxes from heatmaps",
             responses={**ASYNC_ACCEPTED, **with_dicom_alternative(CONDITIONAL_RESPONSES),
                        **problem_responses(*IMAGE_PROBLEMS)},
             openapi_extra=image_request_body(LocalizeOptions, prefer=True))
async def localize(request: Request, response: Response, runtime: RuntimeDep, call: CallDep, respond_async: AsyncDep,
                   if_none_match: IfNoneMatch = None,
                   ) -> LocalizeResponse | Response:
    data, opts, extras = await read_image_request(request, LocalizeOptions,
                                                  max_image_bytes=runtime.settings.max_body_bytes,
                                                  extra_names=localize_handler.param_names)
    if respond_async:
        return accepted(await localize_handler.localize_async(runtime, data, opts, extras, call))
    as_dicom = wants_dicom(request, opts.outputs)
    # ``if_none_match`` documents the header; the parser reads every line of it, not only the first.
    held = parse_if_none_match(request.headers.getlist("if-none-match"))
    result = await unless_disconnected(request, localize_handler.localize(runtime, data, opts, extras, call, held))
    if as_dicom and result.body is not None:
        return dicom_response([result.body.dicom], "hit" if result.cache_hit else "miss")
    return answer(result, response)
