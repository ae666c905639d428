"""Detections of a request (``detection`` of ``/explain/{method}``): parsed before decoding, bound after.

A client names the detection to explain as ``/predict`` numbered it (an id), by a box ``x0,y0,x1,y1`` in the
original image's pixels together with one ``target`` (its label; matched by IoU ≥ 0.5), or by ``target`` alone (that
class's most confident detection); without either, the ``top_k`` most confident detections at least the entry's
``score_threshold`` are explained. Boxes travel between original pixels (the client's) and the model input's (the
detector's) by the stretch resize the input pipeline applies (:mod:`service.imaging.tensor`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..engine.detection import Detection
from ..errors import FieldError, InvalidOption
from .regions import parse_box

__all__ = ["DetectionRequest", "box_to_original", "parse_detection"]

_ID = re.compile(r"[0-9]{1,4}", re.ASCII)


def _invalid(message: str, field: str = "detection") -> InvalidOption:
    return InvalidOption(f"{field}: {message}", errors=[FieldError(field, message)])


@dataclass(frozen=True)
class DetectionRequest:
    """A validated ``detection`` option: an id, or a label with an optional box in original pixels."""

    id: int | None = None
    label: int | None = None
    box: tuple[float, float, float, float] | None = None
    box_regression: bool = False

    def key(self) -> str:
        """Canonical text for cache keys."""
        box = ",".join(repr(float(v)) for v in self.box) if self.box is not None else ""
        return f"id={self.id};label={self.label};box={box};iou={int(self.box_regression)}"

    def bind(self, width: int, height: int, input_size: tuple[int, int]) -> Detection:
        """The engine target for an image of ``width`` x ``height`` pixels fed at ``input_size`` (h, w)."""
        if self.box is None:
            return Detection(self.id, self.label, None, self.box_regression)
        x0, y0, x1, y1 = self.box
        if x1 > width or y1 > height:
            raise _invalid(f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] exceeds the image ({width}x{height})")
        sy, sx = input_size[0] / height, input_size[1] / width
        return Detection(None, self.label, (x0 * sx, y0 * sy, x1 * sx, y1 * sy), self.box_regression)


def parse_detection(value: str | int | None, task: str, targets: list[int], *, box_regression: bool = False
                    ) -> DetectionRequest | None:
    """``None`` for other tasks (which refuse the option) and for "the top-k detections"; else the request."""
    if task != "detection":
        if value is not None:
            raise _invalid(f"only detection models take a detection (this model's task is {task})")
        if box_regression:
            raise _invalid("only detection models take box_regression", "box_regression")
        return None
    if len(targets) > 1:
        raise _invalid("a detection request explains one detection: give one target (its label) at most", "target")
    label = targets[0] if targets else None
    if value is None:
        return DetectionRequest(label=label, box_regression=box_regression) if label is not None else None
    text = str(value).strip()
    if _ID.fullmatch(text):
        if label is not None:
            raise _invalid("give a detection id or a target (with a box), not both")
        return DetectionRequest(id=int(text), box_regression=box_regression)
    box = parse_box(text, _invalid)
    if box is None:
        raise _invalid(f"expected a detection id (from /predict) or a box x0,y0,x1,y1 in original pixels, got "
                       f"{text[:40]!r}")
    if label is None:
        raise _invalid("a box names a detection together with its class: add target=<label>", "target")
    return DetectionRequest(label=label, box=box, box_regression=box_regression)


def box_to_original(box: tuple[float, float, float, float] | list[float], width: int, height: int,
                    input_size: tuple[int, int]) -> list[float]:
    """A box in model-input pixels as original-image pixels, clipped to the image."""
    sx, sy = width / input_size[1], height / input_size[0]
    x0, y0, x1, y1 = (float(v) for v in box)
    return [min(max(x0 * sx, 0.0), width), min(max(y0 * sy, 0.0), height),
            min(max(x1 * sx, 0.0), width), min(max(y1 * sy, 0.0), height)]
