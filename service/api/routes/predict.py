from __future__ import annotations

from fastapi import APIRouter, Request

from ...handlers import predict as predict_handler
from ..deps import CallDep, RuntimeDep, unless_disconnected
from ..inputs import read_image_request
from ..schemas import IMAGE_PROBLEMS, PredictOptions, PredictResponse, image_request_body, problem_responses

router = APIRouter(tags=["predict"])


# segmentation-only members (labelmap, pixel_fraction, mean_probability, mask) are left out for classifiers
@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True,
             summary="Top-k classes of an image (segmentation: per-class masks)",
             responses=problem_responses(*IMAGE_PROBLEMS), openapi_extra=image_request_body(PredictOptions))
async def predict(request: Request, runtime: RuntimeDep, call: CallDep) -> PredictResponse:
    data, opts, _ = await read_image_request(request, PredictOptions, max_image_bytes=runtime.settings.max_body_bytes)
    return await unless_disconnected(request, predict_handler.predict(runtime, data, opts, call))
