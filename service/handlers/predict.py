"""``/predict``: class scores of one image."""

from __future__ import annotations

from ..api.schemas import ImageInfo, Prediction, PredictOptions, PredictResponse
from ..runtime import Runtime
from . import CallInfo

__all__ = ["DEFAULT_TOP_K", "predict"]

DEFAULT_TOP_K = 5


async def predict(runtime: Runtime, data: bytes, opts: PredictOptions, call: CallInfo) -> PredictResponse:
    """The explicit ``target`` classes, else the ``top_k`` most probable (default 5), with their probabilities."""
    model = runtime.model(opts.model)
    call.model = model.name
    targets = runtime.resolve_targets(model, opts.target)
    image, tensor = await runtime.load_image(model, data, frame=opts.frame)
    result = await runtime.predict(model, tensor, timeout=runtime.timeout(opts.timeout))
    probs = result.probabilities
    if targets:
        chosen = targets
    else:
        k = min(opts.top_k or DEFAULT_TOP_K, model.num_classes, runtime.settings.max_targets)
        chosen = probs.topk(k).indices.tolist()
    return PredictResponse(
        model=model.name,
        task=model.task,
        image=ImageInfo(width=image.width, height=image.height),
        predictions=[Prediction(index=i, label=model.labels[i], score=float(probs[i])) for i in chosen],
    )
