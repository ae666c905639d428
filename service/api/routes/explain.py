from __future__ import annotations

from fastapi import APIRouter, Path, Request, Response

from ...handlers import explain as explain_handler
from ...handlers import models as models_handler
from ..conditional import CONDITIONAL_RESPONSES, IfNoneMatch, answer, parse_if_none_match
from ..deps import AsyncDep, CallDep, RuntimeDep, accepted, unless_disconnected
from ..dicom_accept import dicom_response, wants_dicom, with_dicom_alternative
from ..inputs import read_image_request
from ..schemas import (
    ASYNC_ACCEPTED,
    IMAGE_PROBLEMS,
    ExplainOptions,
    ExplainResponse,
    MethodList,
    image_request_body,
    problem_responses,
)

router = APIRouter(tags=["explain"])


@router.get("/methods", response_model=MethodList, summary="Explanation methods, their families and parameters")
async def methods() -> MethodList:
    return models_handler.list_methods()


@router.post("/explain/{method}", response_model=ExplainResponse, response_model_exclude_unset=True,
             summary="Heatmaps explaining the model's score for each target",
             responses={**ASYNC_ACCEPTED, **with_dicom_alternative(CONDITIONAL_RESPONSES),
                        **problem_responses(*IMAGE_PROBLEMS)},
             openapi_extra=image_request_body(ExplainOptions, prefer=True))
async def explain(request: Request, response: Response, runtime: RuntimeDep, call: CallDep, respond_async: AsyncDep,
                  method: str = Path(max_length=64, description="See GET /methods."),
                  if_none_match: IfNoneMatch = None,
                  ) -> ExplainResponse | Response:
    data, opts, extras = await read_image_request(request, ExplainOptions,
                                                  max_image_bytes=runtime.settings.max_body_bytes,
                                                  extra_names=explain_handler.method_param_names(method))
    if respond_async:
        return accepted(await explain_handler.explain_async(runtime, method, data, opts, extras, call))
    as_dicom = wants_dicom(request, opts.outputs)
    # ``if_none_match`` documents the header; the parser reads every line of it, not only the first.
    held = parse_if_none_match(request.headers.getlist("if-none-match"))
    result = await unless_disconnected(request, explain_handler.explain(runtime, method, data, opts, extras, call,
                                                                        held))
    if as_dicom and result.body is not None:
        return dicom_response([item.dicom for item in result.body.explanations], "hit" if result.cache_hit else "miss")
    return answer(result, response)
