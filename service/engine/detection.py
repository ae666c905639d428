"""Detection models as the engine sees them: one padded detections tensor, the box-score target, and D-RISE.

torchvision's detection API (``fasterrcnn_*``, ``retinanet_*``, ``fcos_*``, ``ssd*``) answers a list of
``{"boxes", "labels", "scores"}`` dicts whose lengths differ per image. :class:`DetectorOutputs` wraps such a model
into one that returns a ``[B, N, 6]`` tensor (``x0, y0, x1, y1, score, label`` per row, sorted by score, padded with
score 0 and label -1), so every method's forward, hook and batching code runs unchanged on detectors: scores and
boxes keep their autograd graph (torchvision computes them differentiably; only NMS picks indices). The wrapper
registers the detector's own children, so layer names and ``state_dict`` keys are the detector's
(``backbone.body.layer4``).

A detection is explained through :class:`Detection` (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``): the score of
the output detection of the same label that overlaps the reference box best (IoU ≥ 0.5), plus, with
``box_regression``, that IoU, so that the map also explains where the box is. Perturbed or noisy forwards score the
detection they still find there (0 when none matches), which is what occlusion and RISE need.

Example::

    model = DetectorOutputs(torchvision.models.detection.fasterrcnn_resnet50_fpn(weights="DEFAULT")).eval()
    out = model(x)                                    # [B, 100, 6]
    maps = METHODS["gradcam"].explain(model, x, torch.tensor([0]), layer="backbone.body.layer4", task="detection")
    # row b: Grad-CAM of image b's detection 0 (its most confident one)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from ..errors import FieldError, InvalidOption
from .targets import Target

__all__ = ["DETECTION_FIELDS", "Detection", "DetectorOutputs", "detection_count", "drise_similarity"]

#: Columns of a detections tensor: box (input pixels, x0 y0 x1 y1), score, label (-1 on padding rows).
DETECTION_FIELDS = 6
MATCH_IOU = 0.5


class DetectorOutputs(nn.Module):
    """A torchvision-style detector as a module returning ``[B, max_detections, 6]`` (see the module docstring).

    The detector itself is held outside the module tree (its children are registered here instead), so hooks,
    ``named_modules`` and ``state_dict`` see the detector's own names; ``train``/``eval`` reach it explicitly."""

    def __init__(self, detector: nn.Module, max_detections: int = 100):
        super().__init__()
        for name, child in detector.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "detector", detector)
        self.max_detections = int(max_detections)
        self.training = detector.training

    def train(self, mode: bool = True) -> DetectorOutputs:
        super().train(mode)
        self.detector.training = mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        found = self.detector(list(x))
        n = self.max_detections
        pad = x.new_tensor([0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
        if not isinstance(found, (list, tuple)) or len(found) != x.shape[0] or not all(
                isinstance(d, dict) and {"boxes", "labels", "scores"} <= d.keys() for d in found):
            raise TypeError("the detector must answer one {'boxes', 'labels', 'scores'} dict per image, got "
                            f"{type(found).__name__}")
        rows = []
        for det in found:
            order = torch.argsort(det["scores"].detach(), descending=True, stable=True)[:n]
            table = torch.cat([det["boxes"][order].to(x.dtype), det["scores"][order, None].to(x.dtype),
                               det["labels"][order, None].to(x.dtype)], dim=1)
            rows.append(torch.cat([table, pad.expand(n - table.shape[0], DETECTION_FIELDS)]))
        return torch.stack(rows)


def detection_count(detections: Tensor) -> int:
    """Real (non-padding) rows of one image's ``[N, 6]`` detections."""
    return int((detections[:, 5] >= 0).sum())


def _check(output: Tensor) -> None:
    if output.dim() != 3 or output.shape[-1] != DETECTION_FIELDS:
        raise InvalidOption("a detection target needs a detector's [B, N, 6] detections, got "
                            f"{tuple(output.shape)}", errors=[FieldError("detection", "not a detection model")])


@dataclass(frozen=True)
class Detection(Target):
    r"""One detection of an image: named by ``id`` (its rank in the clean forward's detections, as ``/predict``
    numbers them), by ``label`` and ``box`` (input pixels), matched to the clean forward's detection of that label
    with the largest IoU (≥ 0.5), or by ``label`` alone (its most confident detection). Once bound, all three are
    set: the id of the clean forward's matching detection, and as reference box the caller's box when one was given
    (so that ``box_regression`` explains the regression towards it), else that detection's own.

    Explained score (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``), for the output detection ``j`` of the same
    label with the largest IoU with the bound box, when that IoU is ≥ 0.5 (else 0):

        y = s_j  (+ \mathrm{IoU}(b, b_j)  with ``box_regression``)

    The reported score is ``s_j``. At the clean image the IoU of a detection with its own box is 1, a maximum, so
    the IoU term adds no gradient there: ``box_regression`` matters for a caller's box and for perturbed forwards."""

    id: int | None = None
    label: int | None = None
    box: tuple[float, float, float, float] | None = None
    box_regression: bool = False

    @property
    def index(self) -> int:
        """The detection's class (what rows report as their class index)."""
        return int(self.label) if self.label is not None else -1

    def check(self, output: Tensor) -> None:
        _check(output)

    def bind(self, output: Tensor, image: int) -> Detection:
        self.check(output)
        dets = output.detach()[image]
        count = detection_count(dets)
        if self.id is not None:
            if not 0 <= self.id < count:
                raise InvalidOption(f"detection {self.id} does not exist: the model found {count} detection(s) in "
                                    f"this image (ids 0..{count - 1})" if count else
                                    f"detection {self.id} does not exist: the model found no detection in this image",
                                    errors=[FieldError("detection", "unknown detection id")])
            row = dets[self.id]
            return Detection(self.id, int(row[5]), _box(row), self.box_regression)
        if self.label is None:
            raise InvalidOption("a detection is named by its id, or by a label (and a box)",
                                errors=[FieldError("detection", "missing id or label")])
        if self.box is None:   # the label's most confident detection
            same = (dets[:count, 5] == float(self.label)).nonzero()
            if not same.numel():
                raise InvalidOption(f"the model found no detection of class {self.label} in this image",
                                    errors=[FieldError("target", "no detection of this class")])
            j = int(same[0, 0])
            return Detection(j, self.label, _box(dets[j]), self.box_regression)
        j, iou = _best_match(dets[:count], torch.tensor(self.box, dtype=dets.dtype, device=dets.device), self.label)
        if j is None or iou < MATCH_IOU:
            best = f" (best IoU {iou:.2f})" if j is not None else ""
            raise InvalidOption(f"no detection of class {self.label} overlaps the box with IoU >= {MATCH_IOU}{best}",
                                errors=[FieldError("detection", "no matching detection")])
        return Detection(j, self.label, self.box, self.box_regression)   # the caller's box stays the reference

    def _reference(self, output: Tensor) -> Tensor:
        if self.box is None or self.label is None:
            raise ValueError("Detection scored before it was bound (plan_rows binds every target)")
        return torch.tensor(self.box, dtype=output.dtype, device=output.device)

    @classmethod
    def scores(cls, output: Tensor, image: Tensor, targets: Sequence[Target], task: str) -> Tensor:
        out = []
        for r, t in enumerate(targets):
            dets = output[image[r]]
            j, iou = _best_match(dets, t._reference(output), t.label, differentiable=True)  # type: ignore
            if j is None:
                out.append(dets[:, 4].sum() * 0.0)   # still in the graph: a zero gradient, not a missing one
                continue
            matched = (iou >= MATCH_IOU).to(dets.dtype)  # type: ignore[union-attr]
            score = dets[j, 4] + (iou if t.box_regression else 0.0)  # type: ignore[attr-defined]
            out.append(score * matched)
        return torch.stack(out) if out else output.new_zeros(0)

    @classmethod
    def reported(cls, output: Tensor, image: Tensor, targets: Sequence[Target], task: str) -> Tensor:
        out = []
        for r, t in enumerate(targets):
            dets = output.detach()[image[r]]
            j, iou = _best_match(dets, t._reference(output), t.label)  # type: ignore[attr-defined]
            out.append(dets[j, 4] if j is not None and iou >= MATCH_IOU else dets.new_zeros(()))
        return torch.stack(out) if out else output.new_zeros(0)


def _box(row: Tensor) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in row[:4].tolist())
    return (x0, y0, x1, y1)


def _iou(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of ``box`` with each of ``boxes``; 0 (not NaN) where both are empty (0/0), as zero-area boxes of an
    untrained detector are."""
    return torch.nan_to_num(box_iou(box[None], boxes)[0], nan=0.0)


def _best_match(dets: Tensor, box: Tensor, label: int | None, *, differentiable: bool = False
                ) -> tuple[int | None, Any]:
    """``(j, IoU)`` of the detection of ``label`` that overlaps ``box`` most (``(None, 0)`` when there is none).
    The IoU is a tensor in the graph when ``differentiable``, else a float."""
    same = (dets[:, 5] == float(label)) if label is not None else dets[:, 5] >= 0
    if not bool(same.any()):
        return None, 0.0
    ious = _iou(box, dets[:, :4])
    j = int(torch.where(same, ious.detach(), ious.new_tensor(-1.0)).argmax())
    return j, (ious[j] if differentiable else float(ious[j]))


def drise_similarity(output: Tensor, image: Tensor, targets: Sequence[Target]) -> Tensor:
    r"""``[R]`` D-RISE weight of each row's masked forward (Petsiuk et al., CVPR 2021, eq. 1): the best match over the
    masked image's detections ``d_j`` of the target detection ``d_t``,

        w = \max_j \; \mathrm{IoU}(L_t, L_j) \cdot \cos(P_t, P_j) \cdot O_j .

    torchvision's detectors report one class and one score per detection, not the class-probability vector ``P`` or
    a separate objectness ``O``: with ``P_t`` one-hot, ``cos(P_t, P_j) \cdot O_j`` becomes ``s_j`` for detections of
    the target's label and 0 for the others."""
    out = []
    with torch.no_grad():
        for r, t in enumerate(targets):
            dets = output[image[r]]
            if not isinstance(t, Detection) or t.box is None:
                raise ValueError("D-RISE scores bound Detection targets only")
            ious = _iou(torch.tensor(t.box, dtype=dets.dtype, device=dets.device), dets[:, :4])
            same = (dets[:, 5] == float(t.label)).to(dets.dtype)
            out.append((ious * dets[:, 4] * same).max().clamp_min(0.0) if dets.shape[0] else dets.new_zeros(()))
    return torch.stack(out).float() if out else output.new_zeros(0)
