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
    "ClassRegion",
    "Region",
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

    def bind(self, output: Tensor, image: int) -> Target:
        """The target as image ``image`` of the clean forward ``output`` fixes it: checked, and with anything that
        depends on the clean output (a segmentation's predicted region) frozen, so that perturbed or noisy forwards
        of the same image score the same quantity."""
        self.check(output)
        return self


def class_probabilities(logits: Tensor, task: str) -> Tensor:
    """Softmax for single-label models, an independent sigmoid per class for multi-label ones; per pixel for
    segmentation logits ``[B, C, H, W]`` (used to rank classes for top-k; a target carries its own activation)."""
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
        if output.dim() != 2:
            raise InvalidOption("a class target needs a classifier's [B, K] logits; this model returns "
                                f"{output.dim()}-D outputs (a segmentation model needs a class and a region)",
                                errors=[FieldError("target", "not a classifier output")])
        k = output.shape[1]
        if not 0 <= self.index < k:
            raise InvalidOption(f"target class {self.index} is out of range for a model with {k} classes (0..{k - 1})",
                                errors=[FieldError("target", "class index out of range")])


REGION_KINDS = ("predicted", "all", "box", "mask")


@dataclass(frozen=True)
class Region:
    """Where a segmentation class is explained, independent of any resolution.

    * ``predicted``: the pixels the model assigns to the class (argmax for softmax models, probability > 0.5 for
      sigmoid ones), fixed from the clean forward;
    * ``all``: every pixel;
    * ``box``: ``(x0, y0, x1, y1)`` as fractions of the image's width and height (half-open);
    * ``mask``: a boolean mask of any size (``mask_shape``, bits packed row-major in ``mask_bits``), resized to the
      output's grid by nearest neighbour.
    """

    kind: str = "predicted"
    box: tuple[float, float, float, float] | None = None
    mask_bits: bytes | None = None
    mask_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in REGION_KINDS:
            raise InvalidOption(f"region must be one of {', '.join(REGION_KINDS)}, got {self.kind!r}",
                                errors=[FieldError("region", "unknown region kind")])
        if self.kind == "box":
            if self.box is None or len(self.box) != 4:
                raise InvalidOption("a box region needs [x0, y0, x1, y1]", errors=[FieldError("region", "bad box")])
            x0, y0, x1, y1 = self.box
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise InvalidOption("the region box must satisfy 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height",
                                    errors=[FieldError("region", "box outside the image or empty")])
        if self.kind == "mask" and (self.mask_bits is None or self.mask_shape is None):
            raise InvalidOption("a mask region needs a mask", errors=[FieldError("region", "missing mask")])

    @classmethod
    def from_mask(cls, mask: Tensor) -> Region:
        """A ``mask`` region from a 2-D boolean (or 0/1) tensor."""
        if mask.dim() != 2 or not bool(mask.bool().any()):
            raise InvalidOption("the region mask must be a non-empty 2-D mask",
                                errors=[FieldError("region", "empty or not 2-D")])
        flat = mask.detach().bool().flatten().cpu().to(torch.uint8)
        pad = (-flat.numel()) % 8
        flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8)
        weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
        packed = (flat * weights).sum(1).to(torch.uint8)
        return cls("mask", mask_bits=bytes(packed.tolist()), mask_shape=(int(mask.shape[0]), int(mask.shape[1])))

    def grid(self, size: tuple[int, int], device: torch.device) -> Tensor:
        """The region on an ``size`` (H, W) grid as a float 0/1 tensor (not defined for ``predicted``)."""
        h, w = size
        if self.kind == "all":
            return torch.ones((h, w), device=device)
        if self.kind == "box":
            x0, y0, x1, y1 = self.box  # type: ignore[misc]
            # A pixel belongs to the box when its centre does; at least one pixel so a thin box is never empty.
            ys = (torch.arange(h, device=device) + 0.5) / h
            xs = (torch.arange(w, device=device) + 0.5) / w
            inside_y = (ys >= y0) & (ys < y1)
            inside_x = (xs >= x0) & (xs < x1)
            if not bool(inside_y.any()):
                inside_y[min(h - 1, int(y0 * h))] = True
            if not bool(inside_x.any()):
                inside_x[min(w - 1, int(x0 * w))] = True
            return (inside_y[:, None] & inside_x[None, :]).float()
        if self.kind == "mask":
            mh, mw = self.mask_shape  # type: ignore[misc]
            packed = torch.tensor(list(self.mask_bits), dtype=torch.uint8)  # type: ignore[arg-type]
            bits = ((packed[:, None] >> torch.arange(7, -1, -1, dtype=torch.uint8)) & 1).flatten()[: mh * mw]
            mask = bits.view(1, 1, mh, mw).float()
            return torch.nn.functional.interpolate(mask, size=(h, w), mode="nearest")[0, 0].to(device)
        raise ValueError("a predicted region has no grid before it is bound to an output")


SEGMENTATION_ACTIVATIONS = ("softmax", "sigmoid")


def segmentation_probabilities(logits: Tensor, activation: str) -> Tensor:
    """Per-pixel class probabilities of ``[..., C, H, W]`` logits (softmax over classes, or a sigmoid per class)."""
    logits = logits.float()
    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=-3)


def predicted_masks(logits: Tensor, activation: str) -> Tensor:
    """``[B, C, H, W]`` boolean: where the model assigns each class (argmax; or probability > 0.5 for sigmoid)."""
    if activation == "sigmoid":
        return logits > 0
    return torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).permute(0, 3, 1, 2).bool()


@dataclass(frozen=True)
class ClassRegion(Target):
    r"""A segmentation class over a region (Seg-Grad-CAM, Vinogradova et al., AAAI 2020): the explained score is the
    sum of the class's pre-activation logits over the region's pixels,

        y^c = \sum_{(i,j) \in M} Y^c_{ij}

    (pytorch-grad-cam's ``SemanticSegmentationTarget``: ``(output[c] * mask).sum()``); the reported score is the
    class's mean probability over the region. A ``predicted`` region is frozen when bound to the clean forward."""

    index: int
    region: Region = field(default_factory=Region)
    activation: str = "softmax"
    #: The region on the output grid once bound (engine-internal; equality and hashing use the request fields).
    grid: Tensor | None = field(default=None, compare=False, repr=False)
    #: Once bound, the clean forward's per-pixel probability of the class and where the model predicts it (``[H, W]``
    #: on the output grid): ``/localize`` boxes the predicted mask beside the explanation from the same pass.
    probability: Tensor | None = field(default=None, compare=False, repr=False)
    predicted: Tensor | None = field(default=None, compare=False, repr=False)

    def check(self, output: Tensor) -> None:
        if output.dim() != 4:
            raise InvalidOption("a class-and-region target needs a segmentation model's [B, C, H, W] logits, got "
                                f"{tuple(output.shape)}", errors=[FieldError("region", "not a segmentation output")])
        k = output.shape[1]
        if not 0 <= self.index < k:
            raise InvalidOption(f"target class {self.index} is out of range for a model with {k} classes (0..{k - 1})",
                                errors=[FieldError("target", "class index out of range")])
        if self.activation not in SEGMENTATION_ACTIVATIONS:
            raise InvalidOption(f"activation must be softmax or sigmoid, got {self.activation!r}")

    def bind(self, output: Tensor, image: int) -> ClassRegion:
        self.check(output)
        size = (int(output.shape[2]), int(output.shape[3]))
        clean = output.detach()[image:image + 1]
        predicted = predicted_masks(clean, self.activation)[0, self.index]
        grid = predicted.float() if self.region.kind == "predicted" else self.region.grid(size, output.device)
        probability = segmentation_probabilities(clean, self.activation)[0, self.index]
        return ClassRegion(self.index, self.region, self.activation, grid, probability, predicted)

    def _grid(self, output: Tensor) -> Tensor:
        if self.grid is None:
            raise ValueError("ClassRegion scored before it was bound (plan_rows binds every target)")
        return self.grid.to(device=output.device, dtype=output.dtype)

    @classmethod
    def scores(cls, output: Tensor, image: Tensor, targets: Sequence[Target], task: str) -> Tensor:
        classes = torch.tensor([t.index for t in targets], device=output.device)  # type: ignore[attr-defined]
        grids = torch.stack([t._grid(output) for t in targets])  # type: ignore[attr-defined]
        return (output[image, classes] * grids).sum((1, 2))

    @classmethod
    def reported(cls, output: Tensor, image: Tensor, targets: Sequence[Target], task: str) -> Tensor:
        out = []
        for r, t in enumerate(targets):
            probs = segmentation_probabilities(output.detach()[image[r]], t.activation)[t.index]  # type: ignore
            grid = t._grid(probs)  # type: ignore[attr-defined]
            out.append((probs * grid).sum() / grid.sum().clamp_min(1.0))
        return torch.stack(out) if out else output.new_zeros(0)


@dataclass(frozen=True)
class TargetRequest:
    """The targets of one image: ``targets`` when given, else its ``top_k`` most probable classes, keeping only those
    at least ``min_probability`` probable when that is set (a multi-label image may then have none)."""

    targets: tuple[Target, ...] = ()
    top_k: int = 1
    min_probability: float | None = None
    #: Segmentation: the region and activation of the top-k classes' targets (explicit targets carry their own).
    region: Region | None = None
    activation: str = "softmax"

    def resolve(self, probabilities: Tensor, task: str = "multiclass") -> tuple[Target, ...]:
        """The targets for an image whose class probabilities are ``probabilities`` ``[K]`` (or ``[C, H, W]`` for a
        segmentation, whose classes rank by mean probability — under this request's activation — and are explained
        over its region, by default their predicted ones; or a detector's ``[N, 6]`` detections, explained in their
        order of score, those at least ``min_probability``)."""
        if self.targets:
            return self.targets
        if task == "detection":
            from .detection import Detection, detection_count

            scores = probabilities[: detection_count(probabilities), 4][: self.top_k]
            keep = scores if self.min_probability is None else scores[scores >= self.min_probability]
            return tuple(Detection(i) for i in range(keep.shape[0]))
        if probabilities.dim() == 3:
            mean = probabilities.mean((1, 2))
            top = mean.topk(min(self.top_k, mean.shape[0]))
            keep = top.indices if self.min_probability is None else top.indices[top.values >= self.min_probability]
            region = self.region or Region()
            return tuple(ClassRegion(int(i), region, self.activation) for i in keep.tolist())
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
    needs_probabilities = any(not r.targets for r in requests) and output.dim() != 4
    probabilities = None
    if needs_probabilities:
        # A detector's detections are their own ranking (sorted by score); classes rank by probability.
        probabilities = output.detach() if task == "detection" else class_probabilities(output.detach(), task)
    image: list[int] = []
    slot: list[int] = []
    targets: list[Target] = []
    per_image: list[list[int]] = []
    for i, request in enumerate(requests):
        if request.targets:
            chosen = request.targets
        elif output.dim() == 4:
            # Segmentation classes rank under the model's own activation (a sigmoid model's softmax would not
            # be its probabilities).
            chosen = request.resolve(segmentation_probabilities(output.detach()[i], request.activation))
        else:
            chosen = request.resolve(probabilities[i], task)  # type: ignore[index]
        mine = []
        for j, target in enumerate(chosen):
            target = target.bind(output, i)
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
