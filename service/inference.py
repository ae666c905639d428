"""Model work, batched, run on a model's worker thread. No HTTP, no image decoding here.

Each kind of work (``PredictWork``, ``ExplainWork``: what one request asks of the model) is a frozen dataclass whose
``batch_key`` says which items may share a pass; ``run_work`` executes a list of same-key items on one
``LoadedModel`` and returns one result per item. Results are moved to the CPU once, at the end of the batch.
(Not to be confused with :class:`service.batching.QueuedWork`, the queue's envelope around an item, or
:class:`service.jobs.Job`, an asynchronous job a client polls at ``/jobs/{id}``.)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .batching import Abandoned, batch_abandoned
from .engine.base import Explained, logits_of
from .engine.detection import Detection
from .engine.mil import Bag, mil_outputs
from .engine.passes import Steps
from .engine.targets import (
    ClassLogit,
    ClassRegion,
    Region,
    Target,
    TargetRequest,
    class_probabilities,
    segmentation_probabilities,
)
from .registry import LoadedModel


@dataclass(frozen=True)
class PredictWork:
    """Class probabilities for one preprocessed image ``[C, H, W]`` (a mil model's: a :class:`Bag` of patches)."""

    inputs: Any

    batch_key: Hashable = ("predict",)


def predict_key(inputs: Any) -> Hashable:
    """Images share a prediction pass; bags only with bags of the same tiling (same patch count: they stack)."""
    return ("predict", inputs.tiling) if isinstance(inputs, Bag) else ("predict",)


def stacked(inputs: Sequence[Any]) -> torch.Tensor:
    """The model input of a batch: images ``[B, C, H, W]``, or bags ``[B, N, C, p, p]``."""
    return torch.stack([x.patches if isinstance(x, Bag) else x for x in inputs])


@dataclass
class PredictResult:
    probabilities: torch.Tensor  # [num_classes] (segmentation: [C, H, W] per pixel; detection: [N, 6]), CPU float32
    logits: torch.Tensor  # [num_classes] (segmentation: [C, H, W]), CPU float32


def scores_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Softmax for single-label models, an independent sigmoid per class for multi-label ones."""
    return class_probabilities(logits, task)


def run_predict(model: LoadedModel, items: Sequence[PredictWork]) -> list[PredictResult]:
    inputs = stacked([work.inputs for work in items]).to(model.device, non_blocking=True)
    with torch.inference_mode():
        output = model.module(inputs)
        if model.task == "mil":
            logits = mil_outputs(output, len(items), inputs.shape[1]).logits.float()
        else:
            logits = logits_of(output, len(items)).float()
        if model.task == "detection":
            probs = logits   # [B, N, 6] detections: their scores are column 4
        elif model.task == "segmentation":
            probs = segmentation_probabilities(logits, model.spec.activation)
        else:
            probs = scores_from_logits(logits, model.task)
    logits, probs = logits.cpu(), probs.cpu()
    return [PredictResult(probs[i], logits[i]) for i in range(len(items))]


@dataclass(frozen=True)
class ExplainWork:
    """Heatmaps for one preprocessed image: explicit ``targets`` or, when empty, its ``top_k`` classes."""

    inputs: Any   # [C, H, W] (a mil model's: a Bag)
    method: str
    params: tuple[tuple[str, Any], ...]  # validated, sorted: part of the batch key
    layer: str | None
    targets: tuple[int, ...] = ()
    top_k: int = 1
    min_probability: float | None = None  # without targets: the top_k classes at least this probable
    region: Region | None = None  # segmentation: where each class is explained
    activation: str = "softmax"   # segmentation: the model's per-pixel activation
    detection: Detection | None = None  # detection: the one detection explained (else the top_k detections)

    @property
    def batch_key(self) -> Hashable:
        # Only items with the same method, parameters and layer may share a pass (bags: and the same tiling).
        tiling = self.inputs.tiling if isinstance(self.inputs, Bag) else None
        return ("explain", self.method, self.params, self.layer, tiling)

    @property
    def rows(self) -> int:
        return 1 if self.detection is not None else len(self.targets) or self.top_k


@dataclass(frozen=True)
class DetectionRef:
    """Which detection a row explains: its id (rank in the image's detections) and box in model-input pixels."""

    id: int
    box: tuple[float, float, float, float]


@dataclass
class TargetMap:
    index: int
    score: float
    heatmap: np.ndarray  # [h, w] float32, native resolution, raw
    #: Segmentation rows: the clean forward's probability of the class (float32) and where the model predicts it
    #: (bool), ``[H, W]`` on the output grid — what ``/localize`` boxes beside the explanation, from the same pass.
    probability: np.ndarray | None = None
    predicted: np.ndarray | None = None
    detection: DetectionRef | None = None  # detection models: the detection this row explains


def _segmentation_planes(target: Target) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not isinstance(target, ClassRegion) or target.probability is None or target.predicted is None:
        return None, None
    return (target.probability.detach().float().cpu().numpy(), target.predicted.detach().cpu().numpy().astype(bool))


def _target(item: ExplainWork, index: int) -> Target:
    if item.region is None:
        return ClassLogit(index)
    return ClassRegion(index, item.region, item.activation)


def explain_requests(items: Sequence[ExplainWork]) -> list[TargetRequest]:
    """Each item's targets for the engine: its explicit classes (over its region for a segmentation), else its top-k
    (with the probability floor)."""
    return [TargetRequest((item.detection,) if item.detection is not None
                          else tuple(_target(item, t) for t in item.targets), item.top_k, item.min_probability,
                          item.region, item.activation) for item in items]


def explain_steps(model: LoadedModel, items: Sequence[ExplainWork], *, chunk: int | None = None) -> Steps[Explained]:
    """The engine's steps for a same-key batch: one pass, the method's own forward scoring the images. ``chunk``
    caps the images per forward of chunked methods (jobs ask for short steps)."""
    from .engine import get_method

    first = items[0]
    method = get_method(first.method)
    x = stacked([item.inputs for item in items]).to(model.device, non_blocking=True)
    layer = (first.layer or model.target_layer) if method.uses_layer else None
    context: dict[str, Any] = {"input_range": model.input_range}
    if isinstance(first.inputs, Bag):
        context["tiling"] = first.inputs.tiling
    if chunk is not None:
        context["chunk"] = chunk
    return method.steps(model.module, x, explain_requests(items), layer=layer, task=model.task, **context,
                        **dict(first.params))


def split_results(explained: Explained, count: int) -> list[list[TargetMap]]:
    """Per item, its rows as CPU ``TargetMap``s (moved off the device once, for the whole batch)."""
    maps = explained.maps.detach().float().cpu().numpy()
    scores = explained.scores.detach().float().cpu().tolist()
    rows = explained.rows
    return [[TargetMap(rows.targets[r].index, scores[r], maps[r],  # type: ignore[attr-defined]
                       *_segmentation_planes(rows.targets[r]), detection=_detection_ref(rows.targets[r]))
             for r in rows.per_image[i]] for i in range(count)]


def _detection_ref(target: Target) -> DetectionRef | None:
    if isinstance(target, Detection) and target.id is not None and target.box is not None:
        return DetectionRef(target.id, target.box)
    return None


def run_explain(model: LoadedModel, items: Sequence[ExplainWork]) -> list[list[TargetMap]]:
    """One pass over the batch: the method's own first forward yields the scores and top-k targets (no separate
    scoring forward), then one map per (image, target) row. Between two chunks of a slow method, a batch whose
    requesters have all given up stops (:class:`~service.batching.Abandoned`)."""
    steps = explain_steps(model, items)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return split_results(done.value, len(items))
        if batch_abandoned():
            steps.close()
            raise Abandoned()


def run_work(model: LoadedModel, key: Hashable, items: Sequence[object]) -> list[object]:
    """Dispatch a same-key batch to its runner (the batcher's ``run_batch`` for one model)."""
    kind = key[0] if isinstance(key, tuple) else key
    if kind == "predict":
        return run_predict(model, items)  # type: ignore[arg-type]
    if kind == "explain":
        return run_explain(model, items)  # type: ignore[arg-type]
    raise ValueError(f"unknown work kind {kind!r}")
