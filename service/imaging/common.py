"""What every decoder shares: the result type, the resource limits and the header checks made against them.

* **Limits before decoding.** Pixel count, side length and (DICOM) frame count are read from the header and checked
  against :class:`ImageLimits` by :func:`check_size` / :func:`check_frame_index` *before* pixel data is decoded, so a
  decompression bomb costs a header parse only. Each decoder calls them as soon as its header is parsed.
* **Grey stays grey** (C = 1), colour becomes RGB (C = 3): that is the :class:`DecodedImage` contract for every
  format; conversion to the model's channel count happens in :func:`service.imaging.tensor.to_model_input`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import InvalidImage, InvalidOption, PayloadTooLarge, TooManyPatches

__all__ = ["SUPPORTED_FORMATS", "DecodedImage", "ImageLimits", "TileLimit", "check_frame_index", "check_size",
           "min_max"]

#: Formats accepted by :func:`service.imaging.decode_image`, as named in error messages and in
#: ``DecodedImage.format``.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF", "DICOM")


@dataclass(frozen=True)
class ImageLimits:
    """Resource limits applied from the header, before pixel data is decoded.

    The request body size is enforced by the HTTP layer, not here.
    """

    #: Largest width × height of the decoded frame (decompression bombs).
    max_pixels: int = 40_000_000
    #: Largest number of frames a DICOM file may declare, and the highest frame index + 1 that may be requested.
    max_frames: int = 1000
    #: Largest width or height; a very long thin strip is almost always a forged header.
    max_side: int = 20_000
    #: Pixels that may be decoded in total to reach a requested frame: GIF, APNG and animated WebP decode every
    #: earlier frame first, so ``(frame + 1) × width × height`` is bounded too.
    max_seek_pixels: int = 200_000_000
    #: A mil model's tiling: the patch count an image makes is bounded too (checked from the header as well).
    tiles: TileLimit | None = None


@dataclass(frozen=True)
class TileLimit:
    """Patches of ``patch`` pixels every ``stride`` pixels, at most ``max_patches`` of them per image."""

    patch: int
    stride: int
    max_patches: int

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """``(rows, cols)``: enough patches to cover each side (one for a side shorter than a patch)."""
        def side(n: int) -> int:
            return 1 if n <= self.patch else -(-(n - self.patch) // self.stride) + 1

        return side(height), side(width)

    def check(self, width: int, height: int) -> None:
        rows, cols = self.grid(width, height)
        if rows * cols > self.max_patches:
            raise TooManyPatches(width, height, rows, cols, self.patch, self.stride, self.max_patches)


@dataclass(frozen=True)
class DecodedImage:
    """One decoded frame, ready for the model and for overlays.

    ``pixels`` is float32 ``[H, W, C]`` in [0, 1] with C = 1 (grey) or 3 (RGB); ``width``/``height`` are the size
    of the image *as displayed* (after EXIF orientation), which is the size heatmaps are rendered at.
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str
    frames: int = 1

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])


def check_size(width: int, height: int, limits: ImageLimits) -> None:
    """Reject empty and oversized images from their header dimensions."""
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has zero size ({width}×{height})")
    pixels = width * height
    if pixels > limits.max_pixels:
        raise PayloadTooLarge(
            f"image is {width}×{height} = {pixels:.3g} pixels, above the limit of {limits.max_pixels}"
        )
    if max(width, height) > limits.max_side:
        raise PayloadTooLarge(
            f"image is {width}×{height}, a side is longer than the limit of {limits.max_side} pixels"
        )
    if limits.tiles is not None:
        limits.tiles.check(width, height)


def check_frame_index(frame: int, frames: int, limits: ImageLimits) -> None:
    if frame >= frames:
        raise InvalidOption(
            f"frame {frame} is out of range: the image has {frames} frame{'s' if frames != 1 else ''} "
            f"(valid: 0..{frames - 1})"
        )
    if frame >= limits.max_frames:
        raise PayloadTooLarge(f"frame {frame} is beyond the limit of {limits.max_frames} frames")


def min_max(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the finite min–max; a constant (or all non-finite) image becomes 0.

    Only for data with no nominal range (floating-point pixels, DICOM frames without a VOI transform): integer
    images are scaled by their bit depth so that intensities keep their meaning.
    """
    values = values.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.float32)
    lo = float(values[finite].min())
    hi = float(values[finite].max())
    out = np.where(finite, values, np.float32(lo)).astype(np.float64)
    if hi > lo:
        out = (out - lo) / (hi - lo)
    else:
        out = np.zeros_like(out)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
