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

from .registry import LoadedModel


@dataclass(frozen=True)
class PredictWork:
    """Class probabilities for one preprocessed image ``[C, H, W]``."""

    inputs: torch.Tensor

    batch_key: Hashable = ("predict",)


@dataclass
class PredictResult:
    probabilities: torch.Tensor  # [num_classes], CPU float32
    logits: torch.Tensor  # [num_classes], CPU float32


def scores_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Softmax for single-label models, an independent sigmoid per class for multi-label ones."""
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


def run_predict(model: LoadedModel, items: Sequence[PredictWork]) -> list[PredictResult]:
    inputs = torch.stack([work.inputs for work in items]).to(model.device, non_blocking=True)
    with torch.inference_mode():
        logits = model.module(inputs).float()
        probs = scores_from_logits(logits, model.task)
    logits, probs = logits.cpu(), probs.cpu()
    return [PredictResult(probs[i], logits[i]) for i in range(len(items))]


@dataclass(frozen=True)
class ExplainWork:
    """Heatmaps for one preprocessed image: explicit ``targets`` or, when empty, its ``top_k`` classes."""

    inputs: torch.Tensor
    method: str
    params: tuple[tuple[str, Any], ...]  # validated, sorted: part of the batch key
    layer: str | None
    targets: tuple[int, ...] = ()
    top_k: int = 1
    min_probability: float | None = None  # without targets: the top_k classes at least this probable

    @property
    def batch_key(self) -> Hashable:
        # Only items with the same method, parameters and layer may share a pass.
        return ("explain", self.method, self.params, self.layer)

    @property
    def rows(self) -> int:
        return len(self.targets) or self.top_k


@dataclass
class TargetMap:
    index: int
    score: float
    heatmap: np.ndarray  # [h, w] float32, native resolution, raw


def run_explain(model: LoadedModel, items: Sequence[ExplainWork]) -> list[list[TargetMap]]:
    """One forward for scores (and top-k targets), then one batched explanation over every (image, target) row."""
    from .engine import get_method

    first = items[0]
    method = get_method(first.method)
    x = torch.stack([work.inputs for work in items]).to(model.device, non_blocking=True)
    with torch.inference_mode():
        probs = scores_from_logits(model.module(x).float(), model.task)
    row_image: list[int] = []
    row_target: list[int] = []
    for i, work in enumerate(items):
        targets = list(work.targets)
        if not targets:
            top = probs[i].topk(min(work.top_k, probs.shape[1]))
            keep = (top.values >= work.min_probability if work.min_probability is not None
                    else torch.ones_like(top.values, dtype=torch.bool))
            targets = top.indices[keep].tolist()
        row_image += [i] * len(targets)
        row_target += targets
    if not row_image:  # e.g. a multi-label localization where no class reached the probability floor
        return [[] for _ in items]
    rows_x = x[torch.tensor(row_image, device=x.device)]
    rows_t = torch.tensor(row_target, device=x.device)
    layer = (first.layer or model.target_layer) if method.uses_layer else None
    maps = method.explain(model.module, rows_x, rows_t, layer=layer, task=model.task,
                          input_range=model.input_range, **dict(first.params))
    maps = maps.detach().float().cpu().numpy()
    row_scores = probs[torch.tensor(row_image, device=x.device), rows_t].float().cpu().tolist()
    results: list[list[TargetMap]] = [[] for _ in items]
    for r, (i, t) in enumerate(zip(row_image, row_target)):
        results[i].append(TargetMap(t, row_scores[r], maps[r]))
    return results


def run_work(model: LoadedModel, key: Hashable, items: Sequence[object]) -> list[object]:
    """Dispatch a same-key batch to its runner (the batcher's ``run_batch`` for one model)."""
    kind = key[0] if isinstance(key, tuple) else key
    if kind == "predict":
        return run_predict(model, items)  # type: ignore[arg-type]
    if kind == "explain":
        return run_explain(model, items)  # type: ignore[arg-type]
    raise ValueError(f"unknown work kind {kind!r}")
