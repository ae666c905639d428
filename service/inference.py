"""Tensor work for batched jobs, run on a model's worker thread. No HTTP, no image decoding here.

Each job kind is a frozen dataclass whose ``batch_key`` says which jobs may share a pass; ``run_jobs`` executes a
list of same-key jobs on one ``LoadedModel`` and returns one result per job. Results are moved to the CPU once,
at the end of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np

import torch

from .registry import LoadedModel


@dataclass(frozen=True)
class PredictJob:
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


def run_predict(model: LoadedModel, jobs: Sequence[PredictJob]) -> list[PredictResult]:
    inputs = torch.stack([job.inputs for job in jobs]).to(model.device, non_blocking=True)
    with torch.inference_mode():
        logits = model.module(inputs).float()
        probs = scores_from_logits(logits, model.task)
    logits, probs = logits.cpu(), probs.cpu()
    return [PredictResult(probs[i], logits[i]) for i in range(len(jobs))]


@dataclass(frozen=True)
class ExplainJob:
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
        # Only jobs with the same method, parameters and layer may share a pass.
        return ("explain", self.method, self.params, self.layer)

    @property
    def rows(self) -> int:
        return len(self.targets) or self.top_k


@dataclass
class TargetMap:
    index: int
    score: float
    heatmap: np.ndarray  # [h, w] float32, native resolution, raw


def run_explain(model: LoadedModel, jobs: Sequence[ExplainJob]) -> list[list[TargetMap]]:
    """One forward for scores (and top-k targets), then one batched explanation over every (image, target) row."""
    from .engine import get_method

    first = jobs[0]
    method = get_method(first.method)
    x = torch.stack([job.inputs for job in jobs]).to(model.device, non_blocking=True)
    with torch.inference_mode():
        probs = scores_from_logits(model.module(x).float(), model.task)
    row_image: list[int] = []
    row_target: list[int] = []
    for i, job in enumerate(jobs):
        targets = list(job.targets)
        if not targets:
            top = probs[i].topk(min(job.top_k, probs.shape[1]))
            keep = top.values >= job.min_probability if job.min_probability is not None else torch.ones_like(top.values, dtype=torch.bool)
            targets = top.indices[keep].tolist()
        row_image += [i] * len(targets)
        row_target += targets
    if not row_image:  # e.g. a multi-label localization where no class reached the probability floor
        return [[] for _ in jobs]
    rows_x = x[torch.tensor(row_image, device=x.device)]
    rows_t = torch.tensor(row_target, device=x.device)
    layer = (first.layer or model.target_layer) if method.uses_layer else None
    maps = method.explain(model.module, rows_x, rows_t, layer=layer, task=model.task,
                          input_range=model.input_range, **dict(first.params))
    maps = maps.detach().float().cpu().numpy()
    row_scores = probs[torch.tensor(row_image, device=x.device), rows_t].float().cpu().tolist()
    results: list[list[TargetMap]] = [[] for _ in jobs]
    for r, (i, t) in enumerate(zip(row_image, row_target)):
        results[i].append(TargetMap(t, row_scores[r], maps[r]))
    return results


def run_jobs(model: LoadedModel, key: Hashable, jobs: Sequence[object]) -> list[object]:
    """Dispatch a same-key batch to its runner (the batcher's ``run_batch`` for one model)."""
    kind = key[0] if isinstance(key, tuple) else key
    if kind == "predict":
        return run_predict(model, jobs)  # type: ignore[arg-type]
    if kind == "explain":
        return run_explain(model, jobs)  # type: ignore[arg-type]
    raise ValueError(f"unknown job kind {kind!r}")
