from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ...handlers import localize as localize_handler
from ..conditional import CONDITIONAL_RESPONSES, IfNoneMatch, answer, parse_if_none_match
from ..deps import CallDep, RuntimeDep, unless_disconnected
from ..inputs import read_image_request
from ..schemas import IMAGE_PROBLEMS, LocalizeOptions, LocalizeResponse, image_request_body, problem_responses

router = APIRouter(tags=["localize"])


@router.post("/localize", response_model=LocalizeResponse, summary="Bounding boxes from heatmaps",
             responses={**CONDITIONAL_RESPONSES, **problem_responses(*IMAGE_PROBLEMS)},
             openapi_extra=image_request_body(LocalizeOptions))
async def localize(request: Request, response: Response, runtime: RuntimeDep, call: CallDep,
                   if_none_match: IfNoneMatch = None,
                   ) -> LocalizeResponse | Response:
    data, opts, extras = await read_image_request(request, LocalizeOptions,
                                                  max_image_bytes=runtime.settings.max_body_bytes,
                                                  extra_names=localize_handler.param_names)
    # ``if_none_match`` documents the header; the parser reads every line of it, not only the first.
    held = parse_if_none_match(request.headers.getlist("if-none-match"))
    result = await unless_disconnected(request, localize_handler.localize(runtime, data, opts, extras, call, held))
    return answer(result, response)
