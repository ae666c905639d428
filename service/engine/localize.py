"""Heatmap → bounding boxes, the Grad-CAM paper's recipe (Selvaraju et al., 2017, weakly-supervised localization).

Given a non-negative map :math:`M` upsampled (bilinearly) to the original image, keep the pixels with
:math:`M(x, y) \\ge t \\cdot \\max M` (the paper uses :math:`t = 0.15`), label the connected components of that mask
(8-connectivity) and box the largest one. ``all_components`` boxes every component of at least ``min_area`` pixels
instead. Boxes are ``[x0, y0, x1, y1]`` in original-image pixels with ``x1``/``y1`` exclusive.

This is CPU/NumPy post-processing that runs in the I/O thread pool, not on the model worker.

Example::

    boxes = boxes_from_map(raw_map, (width, height), threshold=0.15)     # [Box(x0, y0, x1, y1, area)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..rendering import normalised_map

__all__ = ["Box", "DEFAULT_THRESHOLD", "boxes_from_map", "boxes_from_mask"]

DEFAULT_THRESHOLD = 0.15
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int
    area: int  # pixels of the component (not of the box)

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def boxes_from_mask(mask: np.ndarray, *, all_components: bool = False, min_area: int = 0) -> list[Box]:
    """Boxes of the connected components of a boolean mask: the largest one, or all of at least ``min_area`` pixels
    (largest first)."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    slices = ndimage.find_objects(labels)
    order = np.argsort(-areas, kind="stable")
    if not all_components:
        order = order[:1]
    boxes = []
    for k in order:
        if all_components and areas[k] < min_area:
            continue
        ys, xs = slices[k]
        boxes.append(Box(int(xs.start), int(ys.start), int(xs.stop), int(ys.stop), int(areas[k])))
    return boxes


def boxes_from_map(heatmap: np.ndarray, size: tuple[int, int], *, threshold: float = DEFAULT_THRESHOLD,
                   all_components: bool = False, min_area: int = 0) -> list[Box]:
    """Boxes for one raw map (``[h, w]``, any scale) on an image of ``size`` = (width, height).

    Negative and non-finite values count as zero importance; a map with no positive value yields no box.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    unit, stats = normalised_map(heatmap, size)
    if stats.empty:
        return []
    return boxes_from_mask(unit >= threshold, all_components=all_components, min_area=min_area)
