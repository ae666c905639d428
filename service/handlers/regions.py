"""Segmentation regions of a request (``region`` of ``/explain/{method}``): parsed before decoding, bound after.

A client names a region in the original image's pixels: ``predicted`` (default: where the model assigns the class),
``all``, a box ``x0,y0,x1,y1`` (half-open, original pixels) or ``mask:<base64 PNG>`` (non-zero = inside, the image's
size). :func:`parse_region` checks the syntax without the image; :meth:`RegionRequest.bind` checks it against the
decoded image's size and returns the engine's resolution-free :class:`~service.engine.targets.Region`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..engine.targets import Region
from ..errors import FieldError, InvalidOption

__all__ = ["Box", "RegionRequest", "parse_box", "parse_region"]


def _invalid(message: str) -> InvalidOption:
    return InvalidOption(f"region: {message}", errors=[FieldError("region", message)])


@dataclass(frozen=True)
class RegionRequest:
    """A validated ``region`` option, in original pixels (not yet checked against the image size)."""

    kind: str
    box: tuple[float, float, float, float] | None = None
    mask_png: bytes | None = None

    def key(self) -> str:
        """Canonical text for cache keys (a mask by its digest)."""
        if self.kind == "box":
            return "box:" + ",".join(repr(float(v)) for v in self.box)  # type: ignore[union-attr]
        if self.kind == "mask":
            return "mask:" + hashlib.sha256(self.mask_png or b"").hexdigest()
        return self.kind

    def bind(self, width: int, height: int) -> Region:
        """The engine region for an image of ``width`` x ``height`` pixels."""
        if self.kind in ("predicted", "all"):
            return Region(self.kind)
        if self.kind == "box":
            x0, y0, x1, y1 = self.box  # type: ignore[misc]
            if x1 > width or y1 > height:
                raise _invalid(f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] exceeds the image ({width}x{height})")
            return Region("box", box=(x0 / width, y0 / height, x1 / width, y1 / height))
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(self.mask_png or b"")) as img:
                if img.size != (width, height):
                    raise _invalid(f"the mask is {img.size[0]}x{img.size[1]}, the image {width}x{height}")
                mask = np.asarray(img.convert("L")) > 0
        except (UnidentifiedImageError, OSError) as exc:
            raise _invalid(f"the mask is not a readable PNG ({exc})") from None
        if not mask.any():
            raise _invalid("the mask is empty")
        return Region.from_mask(torch.from_numpy(mask))


def parse_region(value: str | None, task: str) -> RegionRequest | None:
    """``None`` for classifiers (which refuse a region), else the request's region (default ``predicted``)."""
    if task != "segmentation":
        if value is not None:
            raise _invalid(f"only segmentation models take a region (this model's task is {task})")
        return None
    text = (value or "predicted").strip()
    if text.lower() in ("predicted", "all"):
        return RegionRequest(text.lower())
    if text.lower().startswith("mask:"):
        try:
            png = base64.b64decode(text[5:], validate=True)
        except (binascii.Error, ValueError):
            raise _invalid("a mask must be mask:<base64 PNG>") from None
        return RegionRequest("mask", mask_png=png)
    box = parse_box(text, _invalid)
    if box is None:
        raise _invalid("expected predicted, all, a box x0,y0,x1,y1 (original pixels) or mask:<base64 PNG>, "
                       f"got {text[:40]!r}")
    return RegionRequest("box", box=box)


Box = tuple[float, float, float, float]


def parse_box(text: str, invalid: Callable[[str], Exception]) -> Box | None:
    """``x0,y0,x1,y1`` (brackets allowed) in original pixels: ``None`` when the text is not four finite numbers;
    ``invalid(message)`` is raised for four numbers that make no box."""
    try:
        box = tuple(float(p) for p in text.strip("[]").split(","))
    except ValueError:
        return None
    if len(box) != 4 or not all(np.isfinite(box)):
        return None
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise invalid("a box needs 0 <= x0 < x1 and 0 <= y0 < y1")
    return (x0, y0, x1, y1)
