from __future__ import annotations

from fastapi import APIRouter, Request

from ...handlers import display as display_handler
from ..deps import RuntimeDep
from ..inputs import read_image_request
from ..schemas import DisplayOptions, DisplayResponse, image_request_body, problem_responses

router = APIRouter(tags=["display"])


@router.post("/display", response_model=DisplayResponse, response_model_exclude_none=True,
             summary="An image or volume decoded for a viewer (grey DICOM and volumes: values and windows to window "
                     "client-side)",
             responses=problem_responses(400, 401, 408, 413, 415, 422),
             openapi_extra=image_request_body(DisplayOptions))
async def display(request: Request, runtime: RuntimeDep) -> DisplayResponse:
    data, opts, _ = await read_image_request(request, DisplayOptions, max_image_bytes=runtime.settings.max_body_bytes)
    return await display_handler.display(runtime, data, opts.frame, opts.volume)
