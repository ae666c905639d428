"""``/predict``: class scores of one image (segmentation models: per-class pixel statistics and masks)."""

from __future__ import annotations

import base64

import numpy as np
import torch
import torch.nn.functional as F

from ..api.schemas import ImageInfo, Prediction, PredictOptions, PredictResponse
from ..engine.detection import detection_count
from ..engine.targets import predicted_masks
from ..rendering import encode_png
from ..runtime import Runtime
from . import CallInfo
from .detections import box_to_original
from .explain import volume_info

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
    if model.task == "detection":
        return _detections(model, result.logits, targets, opts, image.width, image.height)
    if model.task == "segmentation":
        return await runtime.in_thread(_segmentation, model, result.logits, probs, targets, opts, image.width,
                                       image.height)
    if targets:
        chosen = targets
    else:
        k = min(opts.top_k or DEFAULT_TOP_K, model.num_classes, runtime.settings.max_targets)
        chosen = probs.topk(k).indices.tolist()
    return PredictResponse(
        model=model.name,
        task=model.task,
        image=volume_info(image.geometry) if model.volumetric else ImageInfo(width=image.width, height=image.height),
        predictions=[Prediction(index=i, label=model.labels[i], score=float(probs[i])) for i in chosen],
    )


def _detections(model, detections: torch.Tensor, targets: list[int], opts: PredictOptions, width: int,
                height: int) -> PredictResponse:
    """The detections that reach the entry's score threshold, best first, their boxes in original pixels; ``id`` is
    the rank /explain's ``detection`` takes. ``target`` keeps those classes, ``top_k`` the first k."""
    keep = detections[: detection_count(detections)]
    predictions = []
    wanted = set(targets)
    limit = opts.top_k or model.spec.max_detections
    for i, row in enumerate(keep.tolist()):
        if row[4] < model.spec.score_threshold:
            break
        label = int(row[5])
        if wanted and label not in wanted:
            continue
        predictions.append(Prediction(index=label, label=_label(model, label), score=row[4], id=i,
                                      box=box_to_original(row[:4], width, height, model.spec.input_size)))
        if len(predictions) >= limit:
            break
    return PredictResponse(model=model.name, task=model.task, image=ImageInfo(width=width, height=height),
                           predictions=predictions)


def _label(model, index: int) -> str:
    return model.labels[index] if 0 <= index < len(model.labels) else str(index)


def _png(pixels: np.ndarray) -> str:
    return base64.b64encode(encode_png(pixels)).decode("ascii")


def _segmentation(model, logits: torch.Tensor, probs: torch.Tensor, targets: list[int], opts: PredictOptions,
                  width: int, height: int) -> PredictResponse:
    """Per class: fraction of pixels predicted as it, its mean probability there and overall, and its mask resized
    (nearest neighbour) to the original size. Statistics are on the model's output grid."""
    masks = predicted_masks(logits[None], model.spec.activation)[0]            # [C, H, W] bool
    fraction = masks.float().mean((1, 2))
    inside = (probs * masks).sum((1, 2)) / masks.sum((1, 2)).clamp_min(1)
    overall = probs.mean((1, 2))
    chosen = targets or overall.topk(min(opts.top_k or model.num_classes, model.num_classes)).indices.tolist()
    full = F.interpolate(masks[None].float(), size=(height, width), mode="nearest")[0] > 0.5
    predictions = []
    for i in chosen:
        mask = _png(full[i].numpy().astype(np.uint8) * 255) if "mask" in opts.outputs else None
        predictions.append(Prediction(index=i, label=model.labels[i], score=float(overall[i]),
                                      pixel_fraction=float(fraction[i]), mean_probability=float(inside[i]),
                                      mask=mask))
    labelmap = None
    if "labelmap" in opts.outputs:
        labels = F.interpolate(logits.argmax(0)[None, None].float(), size=(height, width), mode="nearest")[0, 0]
        labelmap = _png(labels.numpy().astype(np.uint8))
    return PredictResponse(model=model.name, task=model.task, image=ImageInfo(width=width, height=height),
                           predictions=predictions, labelmap=labelmap)
