"""Reference inputs ("baselines") for Integrated Gradients and occlusion, in the model's input space.

* ``zero``: all zeros. For a mean/std-normalised model this is the dataset-mean colour (Zeiler & Fergus' grey
  square); for an un-normalised model it is black.
* ``black``: the black point of each channel. The engine sees normalised tensors only, so the HTTP layer should pass
  ``input_range=(lo, hi)`` (per-channel values of pixel 0 and pixel 1, i.e. ``-mean/std`` and ``(1-mean)/std``) to
  ``explain``; without it, each channel's minimum over the image stands in for black.
* ``mean``: each channel's mean over the image (a flat image of the average colour).
* ``blur``: the image under a Gaussian blur of ``sigma = blur_sigma * min(H, W)`` (replicate padding).

Example::

    base = make_baseline(x, "blur", blur_sigma=0.05)   # same shape as x
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import FieldError, InvalidOption

__all__ = ["BASELINES", "gaussian_blur", "make_baseline"]

BASELINES = ("zero", "black", "mean", "blur")


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` (or a volume ``[B, C, D, H, W]``) with standard deviation
    ``sigma`` pixels along every spatial axis."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, math.ceil(3 * sigma))
    coords = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    c, dims = x.shape[1], x.dim() - 2
    conv = F.conv2d if dims == 2 else F.conv3d
    out = F.pad(x, (radius, radius) * dims, mode="replicate")
    for axis in range(dims):
        shape = [1] * dims
        shape[axis] = -1
        out = conv(out, kernel.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return out


def make_baseline(x: Tensor, kind: str, *, blur_sigma: float = 0.05,
                  input_range: Any = None) -> Tensor:
    """A baseline tensor shaped like ``x`` (each row's own baseline; rows never mix)."""
    if kind == "zero":
        return torch.zeros_like(x)
    spatial = tuple(range(2, x.dim()))
    if kind == "mean":
        return x.mean(spatial, keepdim=True).expand_as(x).clone()
    if kind == "black":
        if input_range is not None:
            lo = _channel_values(input_range[0], x)
            return lo.view(1, -1, *[1] * len(spatial)).expand_as(x).clone()
        return x.amin(spatial, keepdim=True).expand_as(x).clone()
    if kind == "blur":
        return gaussian_blur(x, blur_sigma * min(x.shape[-2:]))
    raise InvalidOption(f"baseline must be one of {', '.join(BASELINES)}, got {kind!r}",
                        errors=[FieldError("baseline", "unknown")])


def _channel_values(values: Any, x: Tensor) -> Tensor:
    t = torch.as_tensor(values, dtype=x.dtype, device=x.device).flatten()
    if t.numel() == 1:
        t = t.expand(x.shape[1])
    if t.numel() != x.shape[1]:
        raise InvalidOption(f"input_range has {t.numel()} values per bound for {x.shape[1]} input channels")
    return t

