"""Tensor work for batched jobs, run on a model's worker thread. No HTTP, no image decoding here.

Each job kind is a frozen dataclass whose ``batch_key`` says which jobs may share a pass; ``run_jobs`` executes a
list of same-key jobs on one ``LoadedModel`` and returns one result per job. Results are moved to the CPU once,
at the end of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

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


def run_jobs(model: LoadedModel, key: Hashable, jobs: Sequence[object]) -> list[object]:
    """Dispatch a same-key batch to its runner (the batcher's ``run_batch`` for one model)."""
    kind = key[0] if isinstance(key, tuple) else key
    if kind == "predict":
        return run_predict(model, jobs)  # type: ignore[arg-type]
    raise ValueError(f"unknown job kind {kind!r}")
