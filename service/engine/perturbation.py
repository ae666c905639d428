"""Perturbation methods: change the input, watch the score. No gradients; every masked or occluded copy is run in
no-grad forward passes of at most ``FORWARD_CHUNK`` images, so memory stays bounded whatever the batch size.

Example::

    maps = METHODS["occlusion"].explain(model, x, targets, layer=None, task="multiclass", window=32, stride=16)
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .base import (
    Explainer,
    ParamSpec,
    check_targets,
    chunks,
    class_probability,
    logits_of,
    prepare_batch,
    target_scores,
)
from .baselines import BASELINES, make_baseline

__all__ = ["MAX_OCCLUSION_WINDOWS", "RISE", "Occlusion", "occlusion_starts", "rise_masks", "rise_upsample"]

#: Upper bound on occluded copies per row; a request beyond it is refused rather than left to run for minutes.
MAX_OCCLUSION_WINDOWS = 4096


def occlusion_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: ``0, stride, 2*stride, ...`` plus one window flush with the far edge when the
    stride does not land there, so that every pixel is covered at least once."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def _score(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    logits = logits_of(model(images), images.shape[0])
    check_targets(logits, targets)
    return target_scores(logits, targets).float()


class Occlusion(Explainer):
    r"""Occlusion sensitivity (Zeiler & Fergus, ECCV 2014): slide a ``window x window`` patch filled with the
    baseline over the input with step ``stride`` and record the drop of the target logit,

        d_w = y^c(x) - y^c(x \text{ with window } w \text{ replaced by the baseline}),
        M_{ij} = \frac{1}{|W_{ij}|} \sum_{w \in W_{ij}} d_w,   W_{ij} = \text{windows covering pixel } (i, j).

    Signed: occluding a patch can raise the score. A last window flush with the border covers any remainder
    (:func:`occlusion_starts`), so every pixel gets a value. Cost: ``n_windows + 1`` forwards per row
    (169 + 1 for window 32, stride 16 at 224 px).

    Example::

        Occlusion().explain(model, x, targets, layer=None, task="multiclass", window=16, stride=8)
    """

    name = "occlusion"
    family = "perturbation"
    signed = True
    description = ("Occlusion: drop of the class score when a sliding patch is replaced by the baseline, averaged "
                   "over the patches covering each pixel.")
    params = (
        ParamSpec("window", int, 32, 1, 4096, description="side of the square patch, in model-input pixels"),
        ParamSpec("stride", int, 16, 1, 4096, description="step between patches, in model-input pixels"),
        ParamSpec("baseline", str, "zero", choices=BASELINES,
                  description="patch content: zero (model-space zeros = mean colour when normalised), black, mean, "
                              "blur"),
        ParamSpec("blur_sigma", float, 0.05, 0.001, 1.0,
                  description="Gaussian sigma of the blur baseline as a fraction of the shorter input side"),
    )

    def forwards_per_row(self, params: Mapping[str, Any], input_shape: Sequence[int]) -> int:
        h, w = input_shape[-2:]
        win, stride = int(params.get("window", 32)), int(params.get("stride", 16))
        if win > min(h, w):
            return 1
        return len(occlusion_starts(h, win, stride)) * len(occlusion_starts(w, win, stride)) + 1

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        p, ctx = self._bind(params)
        x, t = prepare_batch(model, inputs, targets, task)
        b, _, h, w = x.shape
        win, stride = p["window"], p["stride"]
        if win > min(h, w):
            raise InvalidOption(f"window {win} exceeds the model input size {h}x{w}",
                                errors=[FieldError("window", f"must be <= {min(h, w)}")])
        ys, xs = occlusion_starts(h, win, stride), occlusion_starts(w, win, stride)
        n = len(ys) * len(xs)
        if n > MAX_OCCLUSION_WINDOWS:
            raise InvalidOption(
                f"window {win} and stride {stride} give {n} occluded copies per image on a {h}x{w} input "
                f"(limit {MAX_OCCLUSION_WINDOWS}); increase stride or window",
                errors=[FieldError("stride", "too many windows")])
        base = make_baseline(x, p["baseline"], blur_sigma=p["blur_sigma"], input_range=ctx.get("input_range"))
        chunk = self._forward_chunk()
        drops = torch.empty(b * n, device=x.device, dtype=torch.float32)
        with torch.no_grad():
            reference = torch.cat([_score(model, x[s:e], t[s:e]) for s, e in chunks(b, chunk)])
            for start, stop in chunks(b * n, chunk):
                rows = torch.arange(start, stop, device=x.device) // n
                images = x[rows]
                for i in range(start, stop):
                    r, k = divmod(i, n)
                    y0, x0 = ys[k // len(xs)], xs[k % len(xs)]
                    images[i - start, :, y0:y0 + win, x0:x0 + win] = base[r, :, y0:y0 + win, x0:x0 + win]
                drops[start:stop] = reference[rows] - _score(model, images, t[rows])
        # Windows form a product grid, so coverage factorises: sum_w d_w 1[w covers (i,j)] = R_y^T D R_x.
        ry = _coverage(ys, win, h, x.device)
        rx = _coverage(xs, win, w, x.device)
        total = torch.einsum("yh,byx,xw->bhw", ry, drops.view(b, len(ys), len(xs)), rx)
        return total / (ry.sum(0)[:, None] * rx.sum(0)[None, :])


def _coverage(starts: list[int], window: int, size: int, device: torch.device) -> Tensor:
    pos = torch.arange(size, device=device)
    s = torch.tensor(starts, device=device)[:, None]
    return ((pos >= s) & (pos < s + window)).float()


def rise_masks(seed: int, count: int, cells: int, keep: float, size: Sequence[int], *, device: torch.device | str,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, list[tuple[int, int]]]:
    """The low-resolution binary grids ``[count, 1, cells, cells]`` (on ``device``) and the random crop offsets
    ``(dy, dx)`` of RISE, drawn from ``seed`` alone so that every row sees the same masks."""
    h, w = size
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    grids = (torch.rand((count, 1, cells, cells), generator=gen, device=device) < keep).to(dtype)
    cell_h, cell_w = math.ceil(h / cells), math.ceil(w / cells)
    # Offsets are needed as Python slice bounds; drawing them host-side avoids a device sync per chunk.
    rng = random.Random(int(seed))
    shifts = [(rng.randrange(cell_h), rng.randrange(cell_w)) for _ in range(count)]
    return grids, shifts


def rise_upsample(grids: Tensor, shifts: Sequence[tuple[int, int]], size: Sequence[int]) -> Tensor:
    """Masks ``[m, 1, H, W]`` from grids: bilinear upsampling to ``(cells+1)`` cells, then a shifted crop."""
    h, w = size
    cells = grids.shape[-1]
    cell_h, cell_w = math.ceil(h / cells), math.ceil(w / cells)
    up = F.interpolate(grids, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear",
                       align_corners=False)
    return torch.stack([up[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts)])


class RISE(Explainer):
    r"""RISE (Petsiuk et al., BMVC 2018): randomized input sampling. ``N`` masks are made by drawing a
    ``cells x cells`` binary grid (each cell kept with probability ``p``), upsampling it bilinearly to
    ``(cells+1)`` cell sizes and cropping ``H x W`` at a random shift; then

        M = \frac{1}{N p} \sum_{i=1}^{N} P_c(x \odot m_i) \, m_i

    with ``P_c`` the softmax probability of class ``c`` (multiclass) or its sigmoid (multilabel). Masks depend on
    ``seed`` only. Non-negative. Cost: ``masks`` forwards per row (the paper uses 4000-8000).

    Example::

        RISE().explain(model, x, targets, layer=None, task="multiclass", masks=2000)
    """

    name = "rise"
    family = "perturbation"
    description = "RISE: average of random smooth masks weighted by the class probability of the masked input."
    params = (
        ParamSpec("masks", int, 500, 1, 20000, description="number of random masks"),
        ParamSpec("cells", int, 8, 2, 64, description="mask grid resolution (cells per side)"),
        ParamSpec("p", float, 0.5, 0.01, 0.99, description="probability that a grid cell is kept"),
        ParamSpec("seed", int, 0, 0, 2**31 - 1, description="seed of the masks"),
    )

    def forwards_per_row(self, params: Mapping[str, Any], input_shape: Sequence[int]) -> int:
        return int(params.get("masks", 500))

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        p, _ = self._bind(params)
        x, t = prepare_batch(model, inputs, targets, task)
        b, c, h, w = x.shape
        n = p["masks"]
        grids, shifts = rise_masks(p["seed"], n, p["cells"], p["p"], (h, w), device=x.device)
        chunk = self._forward_chunk()
        total = torch.zeros((b, h, w), device=x.device, dtype=torch.float32)
        rows_per = min(b, chunk)
        masks_per = max(1, chunk // rows_per)
        with torch.no_grad():
            for m0, m1 in chunks(n, masks_per):
                masks = rise_upsample(grids[m0:m1], shifts[m0:m1], (h, w))  # [m, 1, H, W]
                for r0, r1 in chunks(b, rows_per):
                    images = (x[r0:r1, None] * masks[None].to(x.dtype)).reshape(-1, c, h, w)
                    rows = torch.arange(r0, r1, device=x.device).repeat_interleave(m1 - m0)
                    logits = logits_of(model(images), images.shape[0])
                    check_targets(logits, t[rows])
                    probs = class_probability(logits, t[rows], task).float().view(r1 - r0, m1 - m0)
                    total[r0:r1] += torch.einsum("bm,mhw->bhw", probs, masks[:, 0])
        return total / (n * p["p"])
