"""What an explanation explains: targets, and which (image, target) rows one pass computes.

A :class:`Target` turns the model's output for one image into the scalar whose evidence a method maps — a class logit
today; a class summed over a region, a detection's score or a bag logit are further kinds of the same object. Methods
never look inside a target: they ask :func:`target_scores` for the differentiable score of every row and
:func:`reported_scores` for the number a client sees (a probability).

A request names its targets per image (:class:`TargetRequest`): explicit ones, or "the ``top_k`` most probable
classes (at least ``min_probability``)". The latter can only be resolved from the model's output, so methods run
their first forward, then call :func:`plan_rows` on it — that is what makes an explanation one pass: the scores and
the top-k come from the same forward that the method needs anyway.

Example::

    requests = [TargetRequest(top_k=2), TargetRequest((ClassLogit(3),))]
    logits = model(x)                                   # [2, K]: the method's own forward
    rows = plan_rows(logits, requests, task="multiclass")
    rows.image          # LongTensor [3]: image of each row (0, 0, 1)
    rows.slot           # LongTensor [3]: how many earlier rows share the image (0, 1, 0) -> one backward per slot
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import FieldError, InvalidOption

__all__ = [
    "ClassLogit",
    "Rows",
    "Target",
    "TargetRequest",
    "class_probabilities",
    "plan_rows",
    "reported_scores",
    "target_scores",
]


class Target(ABC):
    """One explained quantity. Subclasses are frozen dataclasses (hashable: part of cache keys and batch keys)."""

    @classmethod
    @abstractmethod
    def scores(cls, output: Tensor, image: Tensor, targets: Sequence[Target], task: str) -> Tensor:
        """``[R]`` differentiable scores of rows whose targets are all of this class; ``image[r]`` indexes
        ``output``'s batch."""

    @classmethod
    @abstractmethod
    def reported(cls, output: Tensor, image: Tensor, targets: Sequence[Target], task: str) -> Tensor:
        """``[R]`` the score a client is shown (e.g. the class probability), without gradients."""

    def check(self, output: Tensor) -> None:  # noqa: B027 - a no-op default, not abstract
        """Refuse (``InvalidOption``) a target this output cannot have, e.g. a class index beyond the logits."""


def class_probabilities(logits: Tensor, task: str) -> Tensor:
    """Softmax for single-label models, an independent sigmoid per class for multi-label ones."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class ClassLogit(Target):
    """A class of a classifier: the explained score is its pre-softmax logit (multi-class) or its own logit
    (multi-label, i.e. the sigmoid's argument); the reported score is its probability."""

    index: int

    @classmethod
    def scores(cls, output: Tensor, image: Tensor, targets: Sequence[Target], task: str) -> Tensor:
        classes = torch.tensor([t.index for t in targets], device=output.device)  # type: ignore[attr-defined]
        return output[image, classes]

    @classmethod
    def reported(cls, output: Tensor, image: Tensor, targets: Sequence[Target], task: str) -> Tensor:
        classes = torch.tensor([t.index for t in targets], device=output.device)  # type: ignore[attr-defined]
        return class_probabilities(output.detach()[image], task)[torch.arange(len(targets)), classes]

    def check(self, output: Tensor) -> None:
        k = output.shape[1]
        if not 0 <= self.index < k:
            raise InvalidOption(f"target class {self.index} is out of range for a model with {k} classes (0..{k - 1})",
                                errors=[FieldError("target", "class index out of range")])


@dataclass(frozen=True)
class TargetRequest:
    """The targets of one image: ``targets`` when given, else its ``top_k`` most probable classes, keeping only those
    at least ``min_probability`` probable when that is set (a multi-label image may then have none)."""

    targets: tuple[Target, ...] = ()
    top_k: int = 1
    min_probability: float | None = None

    def resolve(self, probabilities: Tensor) -> tuple[Target, ...]:
        """The targets for an image whose class probabilities are ``probabilities`` ``[K]``."""
        if self.targets:
            return self.targets
        top = probabilities.topk(min(self.top_k, probabilities.shape[0]))
        keep = top.indices if self.min_probability is None else top.indices[top.values >= self.min_probability]
        return tuple(ClassLogit(int(i)) for i in keep.tolist())


@dataclass
class Rows:
    """The (image, target) rows of one pass, in request order: image by image, each image's targets in order."""

    image: Tensor                 # LongTensor [R]: index into the batch of images
    slot: Tensor                  # LongTensor [R]: position of the row among its image's rows
    targets: list[Target]
    per_image: list[list[int]] = field(default_factory=list)  # row indices of each image

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def slots(self) -> int:
        """Most targets any image has: gradients need one backward per slot (an image appears once per slot)."""
        return int(self.slot.max()) + 1 if len(self) else 0


def plan_rows(output: Tensor, requests: Sequence[TargetRequest], task: str) -> Rows:
    """Resolve every image's targets from the first forward's ``output`` and lay out the rows."""
    if len(requests) != output.shape[0]:
        raise ValueError(f"{len(requests)} target requests for a batch of {output.shape[0]} images")
    needs_probabilities = any(not r.targets for r in requests)
    probabilities = class_probabilities(output.detach(), task) if needs_probabilities else None
    image: list[int] = []
    slot: list[int] = []
    targets: list[Target] = []
    per_image: list[list[int]] = []
    for i, request in enumerate(requests):
        chosen = request.resolve(probabilities[i]) if probabilities is not None and not request.targets \
            else request.targets
        mine = []
        for j, target in enumerate(chosen):
            target.check(output)
            mine.append(len(targets))
            image.append(i)
            slot.append(j)
            targets.append(target)
        per_image.append(mine)
    device = output.device
    return Rows(torch.tensor(image, dtype=torch.long, device=device),
                torch.tensor(slot, dtype=torch.long, device=device), targets, per_image)


def _grouped(output: Tensor, rows: Rows, task: str, method: str) -> Tensor:
    """Apply ``Target.<method>`` to the rows, one call per target class (rows of one kind are scored together)."""
    if not len(rows):
        return output.new_zeros(0)
    kinds: dict[type, list[int]] = {}
    for r, target in enumerate(rows.targets):
        kinds.setdefault(type(target), []).append(r)
    if len(kinds) == 1:
        kind = next(iter(kinds))
        return getattr(kind, method)(output, rows.image, rows.targets, task)
    out = [torch.empty(())] * len(rows)
    for kind, idx in kinds.items():
        values = getattr(kind, method)(output, rows.image[idx], [rows.targets[r] for r in idx], task)
        for r, v in zip(idx, values):
            out[r] = v
    return torch.stack(out)


def target_scores(output: Tensor, rows: Rows, task: str) -> Tensor:
    """``[R]`` differentiable score of each row's target. Rows of *different* images never interact (eval mode), so
    the gradient of the sum over one slot is every row's own gradient."""
    return _grouped(output, rows, task, "scores")


def reported_scores(output: Tensor, rows: Rows, task: str) -> Tensor:
    """``[R]`` float32 score shown to clients (probabilities for classes), detached."""
    with torch.no_grad():
        return _grouped(output.detach(), rows, task, "reported").float()
