"""From a :class:`~service.imaging.common.DecodedImage` to what the model and the overlays need.

* :func:`to_model_input` converts to the model's channel count (grey → RGB replicates, RGB → grey is ITU-R BT.601
  luma), resizes the *whole* image and normalises; decoders never know the model.
* :func:`rgb8` is the uint8 RGB base that heatmaps are drawn over, at the decoded (displayed) size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .common import DecodedImage

if TYPE_CHECKING:
    from ..engine.mil import Bag

__all__ = ["rgb8", "to_bag", "to_model_input"]

# ITU-R BT.601 luma weights, used for RGB → grey; exactly these (documented) values, which is why torchvision's
# rgb_to_grayscale (0.2989 for red) is not used.
_LUMA_601: tuple[float, float, float] = (0.299, 0.587, 0.114)


def to_model_input(
    img: DecodedImage,
    *,
    input_size: tuple[int, int],
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Float32 ``[channels, h, w]`` tensor for the model.

    The *whole* image is resized to ``input_size`` = (h, w) — no centre crop, aspect ratio not kept — so that every
    map position corresponds to a known region of the original and maps upsample straight back onto it. Resizing is
    bilinear with antialiasing (``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
    align_corners=False)``), i.e. a triangle filter widened on downscaling, which avoids aliasing on large photos.
    Grey → RGB replicates the channel; RGB → grey uses ITU-R BT.601 luma. Then ``(x - mean) / std`` per channel.
    """
    height, width = (int(input_size[0]), int(input_size[1]))
    if height <= 0 or width <= 0:
        raise ValueError(f"input_size must be positive (h, w), got {input_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mean_t = _per_channel("mean", mean, channels)
    std_t = _per_channel("std", std, channels)
    if bool((std_t == 0).any()):
        raise ValueError("std must not contain zeros")

    pixels = img.pixels if img.pixels.flags.writeable else img.pixels.copy()
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)  # [C, H, W]
    if channels == 1 and x.shape[0] == 3:
        x = _luma(x)  # before resizing: a third of the interpolation work
    if tuple(x.shape[1:]) != (height, width):
        x = F.interpolate(x.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        x = x.squeeze(0)
    if channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return ((x - mean_t) / std_t).contiguous()


def to_bag(img: DecodedImage, *, patch: int, stride: int, channels: int, mean: Sequence[float],
           std: Sequence[float]) -> Bag:
    """A mil model's input: the image at its *native* resolution (no resize), converted and normalised as in
    :func:`to_model_input`, cut into ``patch``-pixel patches every ``stride`` pixels (:func:`service.engine.mil.tile`,
    zero-padded at the bottom and right)."""
    from ..engine.mil import Bag, Tiling, tile

    x = to_model_input(img, input_size=(img.height, img.width), channels=channels, mean=mean, std=std)
    tiling = Tiling.of(height=img.height, width=img.width, patch=patch, stride=stride)
    return Bag(tile(x, tiling), tiling)


def _per_channel(name: str, values: Sequence[float], channels: int) -> torch.Tensor:
    vals = [float(v) for v in values]
    if len(vals) not in (1, channels):
        raise ValueError(f"{name} must have 1 or {channels} values, got {len(vals)}")
    if len(vals) == 1:
        vals = vals * channels
    return torch.tensor(vals, dtype=torch.float32).view(channels, 1, 1)


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_LUMA_601, dtype=rgb.dtype).view(3, 1, 1)
    return (rgb * weights).sum(dim=0, keepdim=True)


def rgb8(img: DecodedImage) -> np.ndarray:
    """uint8 ``[H, W, 3]`` version of the image, the base for overlays (grey is replicated)."""
    scaled = img.pixels * np.float32(255.0)  # the only float temporary; the rest is in place (40 MP images)
    np.clip(scaled, np.float32(0.0), np.float32(255.0), out=scaled)
    np.rint(scaled, out=scaled)
    quantised = scaled.astype(np.uint8)
    if quantised.shape[2] == 3:
        return quantised
    return np.repeat(quantised, 3, axis=2)
