from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...runtime import Runtime
from ..deps import get_runtime, unless_disconnected
from ..inputs import read_image_request
from ..schemas import PROBLEM_RESPONSES, ImageInfo, Prediction, PredictOptions, PredictResponse, image_request_body

router = APIRouter(tags=["predict"])


@router.post("/predict", response_model=PredictResponse, summary="Top-k classes of an image",
             responses=PROBLEM_RESPONSES, openapi_extra=image_request_body(PredictOptions))
async def predict(request: Request, runtime: Runtime = Depends(get_runtime)) -> PredictResponse:
    data, opts, _ = await read_image_request(request, PredictOptions, max_image_bytes=runtime.settings.max_body_bytes)
    model = runtime.model(opts.model)
    request.state.model = model.name
    targets = runtime.resolve_targets(model, opts.target)
    image, tensor = await runtime.load_image(model, data, frame=opts.frame)
    result = await unless_disconnected(request, runtime.predict(model, tensor, timeout=runtime.timeout(opts.timeout)))
    probs = result.probabilities
    if targets:
        chosen = targets
    else:
        k = min(opts.top_k or 5, model.num_classes, runtime.settings.max_targets)
        chosen = probs.topk(k).indices.tolist()
    return PredictResponse(
        model=model.name,
        task=model.task,
        image=ImageInfo(width=image.width, height=image.height),
        predictions=[Prediction(index=i, label=model.labels[i], score=float(probs[i])) for i in chosen],
    )
