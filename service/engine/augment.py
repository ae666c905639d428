r"""Test-time augmentation of a map (``augment``): explain a horizontal flip and four small shifts of each image as
well as the image itself, map every copy's map back onto the original frame and average (the idea of
pytorch-grad-cam's ``aug_smooth``; the review document's "averaging N heatmaps").

For an image ``x`` and transforms ``T_t`` (``T_0`` the identity), with ``M(.)`` the method's map and ``T_t^{-1}`` the
map-frame inverse of ``T_t``:

    \bar M(x) = \frac{\sum_t T_t^{-1}( M(T_t x) )}{\sum_t V_t}

``T_t^{-1}`` fills with 0 what lies outside the copy's frame and ``V_t`` is 1 where the mapped-back map has a value
(0 in the strip a shift moved out of the frame, the in-frame share when resampled), so every cell is the mean of
the copies that saw it. A shift by ``(dy, dx)`` input pixels copies ``x[y - dy, x - dx]`` with the
border replicated (the image stays an image; zeros would paint a flat band the model may respond to); on a map of
size ``h x w`` it is undone by ``(dy h / H, dx w / W)`` cells: exactly by slicing when that is a whole number of
cells, by bilinear resampling otherwise (CAM maps are coarser than one pixel). The flip is undone by flipping the
map.

The targets are fixed by the *clean* image: with explicit targets all copies run as one batch through the method;
with top-k targets the clean images run first (their forward resolves the classes and gives the reported scores)
and the augmented copies follow as one batch explaining those same classes, so the total work is the same and a
flipped copy never explains a different class. Reported scores are the clean image's. Classifiers only: a
segmentation region or a detection would need transforming too.

Example::

    maps = METHODS["gradcam"].explain(model, x, targets, layer=None, task="multiclass", augment=True)   # [B, h, w]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .base import Explained, ParamSpec
from .targets import Rows, TargetRequest

if TYPE_CHECKING:
    from .base import Explainer
    from .passes import Steps

__all__ = ["AUGMENT_PARAMS", "AUGMENT_TASKS", "Transform", "augmented_run", "map_back", "transforms"]

AUGMENT_PARAMS = (
    ParamSpec("augment", bool, False,
              description="average the map over the image, its horizontal flip and four small shifts, each mapped "
                          "back to the original frame (test-time augmentation, 6x the work)"),
    ParamSpec("augment_shift", float, 0.0625, 0.0, 0.25,
              description="shift of the augmented copies as a fraction of the shorter input side (0: flip only)"),
)

AUGMENT_TASKS = ("multiclass", "multilabel")


@dataclass(frozen=True)
class Transform:
    """Flip horizontally (first), then shift by ``(dy, dx)`` input pixels: ``copy[y, x] = flipped[y - dy, x - dx]``."""

    flip: bool = False
    dy: int = 0
    dx: int = 0

    def apply(self, x: Tensor) -> Tensor:
        """The transformed ``[N, C, H, W]`` batch, borders replicated."""
        out = torch.flip(x, dims=(-1,)) if self.flip else x
        if self.dy or self.dx:
            h, w = out.shape[-2:]
            pad = (max(self.dx, 0), max(-self.dx, 0), max(self.dy, 0), max(-self.dy, 0))
            padded = F.pad(out, pad, mode="replicate")
            top, left = max(-self.dy, 0), max(-self.dx, 0)
            out = padded[..., top:top + h, left:left + w]
        return out


def transforms(shift: int) -> tuple[Transform, ...]:
    """The identity, the flip and the four shifts by ``shift`` pixels (up, down, left, right); flip only at 0."""
    if shift <= 0:
        return (Transform(), Transform(flip=True))
    s = int(shift)
    return (Transform(), Transform(flip=True), Transform(dy=s), Transform(dy=-s), Transform(dx=s), Transform(dx=-s))


def _translate(maps: Tensor, oy: float, ox: float) -> tuple[Tensor, Tensor]:
    """``(moved, valid)`` with ``moved[y, x] = maps[y + oy, x + ox]`` (0 outside the frame) and ``valid`` the share of
    the sample that fell inside it, for ``maps`` ``[R, h, w]``."""
    r, h, w = maps.shape
    if float(oy).is_integer() and float(ox).is_integer():
        iy, ix = int(oy), int(ox)
        moved = torch.zeros_like(maps)
        valid = torch.zeros_like(maps)
        ys, yd = slice(max(iy, 0), h + min(iy, 0)), slice(max(-iy, 0), h + min(-iy, 0))
        xs, xd = slice(max(ix, 0), w + min(ix, 0)), slice(max(-ix, 0), w + min(-ix, 0))
        moved[:, yd, xd] = maps[:, ys, xs]
        valid[:, yd, xd] = 1.0
        return moved, valid
    # Bilinear at the shifted cell centres (align_corners=False: cell y's centre is at normalised (2y + 1) / h - 1);
    # sampling a field of ones the same way gives the in-frame share.
    gy = (2 * (torch.arange(h, device=maps.device, dtype=torch.float32) + oy) + 1) / h - 1
    gx = (2 * (torch.arange(w, device=maps.device, dtype=torch.float32) + ox) + 1) / w - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None].expand(r, h, w, 2)
    both = torch.stack([maps.float(), torch.ones_like(maps, dtype=torch.float32)], dim=1)
    sampled = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled[:, 0].to(maps.dtype), sampled[:, 1].to(maps.dtype)


def map_back(maps: Tensor, transform: Transform, input_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(mapped, valid)``: the maps ``[R, h, w]`` of ``transform``'s copies in the original image's frame."""
    h, w = maps.shape[-2:]
    big_h, big_w = int(input_size[0]), int(input_size[1])
    moved, valid = _translate(maps, transform.dy * h / big_h, transform.dx * w / big_w)
    if transform.flip:
        moved, valid = torch.flip(moved, dims=(-1,)), torch.flip(valid, dims=(-1,))
    return moved, valid


def augmented_run(method: Explainer, model: nn.Module, x: Tensor, requests: Sequence[TargetRequest], *,
                  layer: str | None, task: str, **params: Any) -> Steps[Explained]:
    """``method.run`` with ``augment``: the module docstring's average, the copies batched (no loop of forwards)."""
    p, _ = method._bind(params)
    if task not in AUGMENT_TASKS:
        raise InvalidOption(f"augment works on classifiers ({', '.join(AUGMENT_TASKS)}); a {task} model's regions "
                            "and detections would have to be transformed with the image",
                            errors=[FieldError("augment", f"not available for task {task!r}")])
    inner = {**params, "augment": False}
    n = x.shape[0]
    size = x.shape[-2:]
    ts = transforms(round(p["augment_shift"] * min(int(size[0]), int(size[1]))))
    if all(r.targets for r in requests):
        batch = torch.cat([t.apply(x) for t in ts])
        done = yield from method.run(model, batch, list(requests) * len(ts), layer=layer, task=task, **inner)
        runs = [(done, t * n) for t in range(len(ts))]
        r0 = sum(len(done.rows.per_image[i]) for i in range(n))
        rows = Rows(done.rows.image[:r0], done.rows.slot[:r0], done.rows.targets[:r0], done.rows.per_image[:n])
        scores = done.scores[:r0]
    else:
        clean = yield from method.run(model, x, list(requests), layer=layer, task=task, **inner)
        rows, scores = clean.rows, clean.scores
        # The classes the clean forward chose, explicitly (top_k 0 for an image with none, e.g. multi-label).
        fixed = [TargetRequest(tuple(rows.targets[r] for r in rows.per_image[i]), top_k=0) for i in range(n)]
        batch = torch.cat([t.apply(x) for t in ts[1:]])
        copies = yield from method.run(model, batch, fixed * (len(ts) - 1), layer=layer, task=task, **inner)
        runs = [(clean, 0)] + [(copies, (t - 1) * n) for t in range(1, len(ts))]
    if not len(rows):
        return Explained(rows, runs[0][0].maps[:0], scores)
    total = valid_total = None
    for t, (done, offset) in zip(ts, runs):
        picked = [done.rows.per_image[offset + int(i)][int(j)] for i, j in zip(rows.image.tolist(), rows.slot.tolist())]
        maps = done.maps[torch.tensor(picked, dtype=torch.long, device=done.maps.device)].float()
        mapped, valid = map_back(maps, t, size)
        # ``mapped`` is already 0 (or partly weighted, when resampled) where the copy did not see the cell.
        total = mapped if total is None else total + mapped
        valid_total = valid if valid_total is None else valid_total + valid
    assert total is not None and valid_total is not None
    return Explained(rows, total / valid_total.clamp_min(1e-12), scores)
