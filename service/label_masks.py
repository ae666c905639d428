"""Object masks in a labelled set: ``labels.json`` objects with ``"mask": "masks/00000_0.png"``.

A mask is an image file of exactly the image's size (any mode the service decodes; a pixel belongs to the object when
any of its channels is nonzero), at a path relative to the folder of ``labels.json`` (checked not to leave it by
:func:`service.demo.data.parse_labels`). It is decoded as uploads are (:func:`service.imaging.decode_image`, the
same allow-listed formats), bounded by the image's own pixel count: the header is compared with the image's size
first, then at most that many pixels are decoded.

Per (image, class) pair the class's objects locate it when each has a box or a mask (:func:`class_location`):
``located_by`` is ``"box"`` (boxes only), ``"mask"`` (masks only) or ``"mixed"``; the pair's :class:`Region` is the
union of the objects' masks and, for objects with only a box, their box rectangles (an object with both counts by its
mask). Box-based measures (calibrate, evaluate) use the object's box, or the tight box of its mask when it has none.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .errors import InvalidMask, XaasError
from .imaging import ImageLimits, decode_image

__all__ = ["Region", "class_location", "decode_mask", "read_mask"]


@dataclass(frozen=True)
class Region:
    """Where a class's objects lie in one image: a boolean mask cropped to its bounding box ``box`` =
    ``(x0, y0, x1, y1)`` (x1/y1 exclusive; cropped so that an audit of large images keeps only the objects' pixels)."""

    box: tuple[int, int, int, int]
    crop: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> Region:
        from .demo.data import mask_box

        x0, y0, x1, y1 = mask_box(mask)
        return cls((x0, y0, x1, y1), mask[y0:y1, x0:x1].copy())

    def full(self, height: int, width: int) -> np.ndarray:
        """The mask at the image's size, ``[height, width]``."""
        out = np.zeros((height, width), bool)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.crop
        return out


def _header_size(blob: bytes) -> tuple[int, int] | None:
    """The size a PIL-readable file declares (nothing decoded); None when PIL cannot tell (DICOM, broken bytes)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as im:
            return int(im.width), int(im.height)
    except Exception:  # noqa: BLE001 - decode_image below names the problem
        return None


def decode_mask(blob: bytes, size: tuple[int, int], *, where: str, path: str,
                limits: ImageLimits | None = None) -> np.ndarray:
    """The boolean mask ``[height, width]`` in ``blob`` for an image of ``size`` = (width, height); ``InvalidMask``
    when it is not a decodable image, not of the image's size, or holds no object pixel."""
    width, height = size
    header = _header_size(blob)
    wrong = f"is {{}}×{{}} pixels, not the image's {width}×{height}"
    if header is not None and sorted(header) != sorted(size):       # (EXIF orientation may swap the sides)
        raise InvalidMask(where, path, wrong.format(*header))
    base = limits or ImageLimits()
    try:
        decoded = decode_image(blob, replace(base, max_pixels=min(base.max_pixels, width * height)))
    except XaasError as exc:
        raise InvalidMask(where, path, f"not a usable image ({exc.detail})") from None
    if (decoded.width, decoded.height) != (width, height):
        raise InvalidMask(where, path, wrong.format(decoded.width, decoded.height))
    mask = decoded.pixels.max(axis=2) > 0
    if not mask.any():
        raise InvalidMask(where, path, "holds no object pixel (every pixel is zero)")
    return mask


def read_mask(read: Callable[[str], bytes], path: str, size: tuple[int, int], *, where: str,
              limits: ImageLimits | None = None) -> np.ndarray:
    """:func:`decode_mask` of the file ``read(path)`` returns (``read`` raises ``OSError`` or ``KeyError`` for a file
    that is not there)."""
    try:
        blob = read(path)
    except (OSError, KeyError):
        raise InvalidMask(where, path, "no such file in the set") from None
    return decode_mask(blob, size, where=where, path=path, limits=limits)


def class_location(objects: Sequence[tuple[Sequence[int] | None, np.ndarray | None]], size: tuple[int, int], *,
                   region: bool = True) -> tuple[str | None, Region | None]:
    """``(located_by, region)`` for one class's objects in one image, each ``(box or None, mask or None)``:
    ``(None, None)`` when an object has neither (the pair is not located), ``("box", None)`` when none has a mask
    (the boxes say it all), else ``"mask"``/``"mixed"`` and the union :class:`Region` (masks, and the box rectangles
    of the objects without one; None when not ``region``)."""
    if not objects or any(b is None and m is None for b, m in objects):
        return None, None
    masked = sum(m is not None for _, m in objects)
    if not masked:
        return "box", None
    located_by = "mask" if masked == len(objects) else "mixed"
    if not region:
        return located_by, None
    width, height = size
    union = np.zeros((height, width), bool)
    for box, mask in objects:
        if mask is not None:
            union |= mask
        else:
            x0, y0, x1, y1 = (int(v) for v in box)  # type: ignore[union-attr]
            union[max(0, y0):min(height, y1), max(0, x0):min(width, x1)] = True
    return located_by, Region.of(union)
