"""Rendering of volume maps: resampled onto the source's voxel grid, a montage PNG of the most relevant slices (or
one slice), a NIfTI file, and 3-D boxes. NumPy/SciPy in, bytes out; nothing here knows HTTP.

Example::

    grid = map_on_grid(raw, (depth, height, width))               # [D, H, W] float32, the source's voxels
    png, slices = montage_png(grid, axis="axial", count=9)       # the 9 slices with the most positive mass
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .rendering import encode_png

__all__ = ["AXES", "MONTAGE_SLICES", "boxes_3d", "map_on_grid", "montage_png", "slice_png"]

AXES = ("axial", "coronal", "sagittal")
#: Slices a montage shows by default (a 3 x 3 sheet).
MONTAGE_SLICES = 9
_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
_GAP = 2


def map_on_grid(values: np.ndarray, size: tuple[int, int, int],
                content: tuple[tuple[int, int, int], ...] | None = None) -> np.ndarray:
    """A raw volume map ``[d, h, w]`` resampled trilinearly (half-pixel centres) to ``size`` = (D, H, W). With
    ``content`` (where the voxels lay in a padded model input: (start, stop, input side) per axis) the map is
    first brought to the model input's grid, the padding cut off, and only the voxels' box resampled."""
    t = torch.from_numpy(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0))
    if content is not None:
        sides = tuple(int(total) for _, _, total in content)
        t = F.interpolate(t[None, None], size=sides, mode="trilinear", align_corners=False)[0, 0]
        t = t[tuple(slice(start, stop) for start, stop, _ in content)].contiguous()
    if tuple(t.shape) == tuple(size):
        return t.numpy().copy()
    up = F.interpolate(t[None, None], size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)
    return up[0, 0].numpy()


def _unit(grid: np.ndarray) -> np.ndarray:
    high = float(grid.max()) if grid.size else 0.0
    return np.clip(grid / high, 0.0, 1.0) if high > 0 else np.zeros_like(grid)


def _slices_along(grid: np.ndarray, axis: str) -> np.ndarray:
    """The volume as a stack of 2-D slices along ``axis`` (first index = slice)."""
    return np.moveaxis(grid, _AXIS[axis], 0)


def slice_png(grid: np.ndarray, axis: str, index: int) -> bytes:
    """8-bit grey PNG of slice ``index`` along ``axis``, 255 = the volume map's maximum."""
    stack = _slices_along(_unit(grid), axis)
    if not 0 <= index < stack.shape[0]:
        raise IndexError(index)
    return encode_png(np.rint(stack[index] * 255).astype(np.uint8))


def montage_png(grid: np.ndarray, axis: str = "axial", count: int = MONTAGE_SLICES) -> tuple[bytes, list[int]]:
    """The ``count`` slices along ``axis`` with the most positive map mass, in slice order, tiled row by row on a
    near-square sheet (2-pixel black gaps) as one 8-bit grey PNG; and their indices."""
    stack = _slices_along(_unit(grid), axis)
    mass = np.clip(_slices_along(grid, axis), 0, None).reshape(stack.shape[0], -1).sum(1)
    n = min(count, stack.shape[0])
    chosen = sorted(np.argsort(-mass, kind="stable")[:n].tolist())
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = stack.shape[1:]
    sheet = np.zeros((rows * h + (rows - 1) * _GAP, cols * w + (cols - 1) * _GAP), dtype=np.uint8)
    for t, k in enumerate(chosen):
        r, c = divmod(t, cols)
        sheet[r * (h + _GAP):r * (h + _GAP) + h, c * (w + _GAP):c * (w + _GAP) + w] = np.rint(stack[k] * 255)
    return encode_png(sheet), [int(k) for k in chosen]


def boxes_3d(grid: np.ndarray, threshold: float, *, all_components: bool = False, min_voxels: int = 0
             ) -> list[tuple[tuple[int, int, int, int, int, int], int]]:
    """Boxes ``(x0, y0, z0, x1, y1, z1)`` (voxels, exclusive ends) and voxel counts of the 26-connected components of
    the map above ``threshold`` × its maximum: the largest, or all of at least ``min_voxels`` (largest first) — the
    3-D form of :func:`service.engine.localize.boxes_from_map`."""
    high = float(grid.max()) if grid.size else 0.0
    if not high > 0:
        return []
    labels, count = ndimage.label(grid >= threshold * high, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")
    keep = [int(i) for i in order if sizes[i] >= min_voxels] if all_components else [int(order[0])]
    spans = ndimage.find_objects(labels)
    out = []
    for i in keep:
        z, y, x = spans[i]
        out.append(((x.start, y.start, z.start, x.stop, y.stop, z.stop), int(sizes[i])))
    return out
