"""Heatmap → bounding boxes, the Grad-CAM paper's recipe (Selvaraju et al., 2017, weakly-supervised localization).

Given a non-negative map :math:`M` upsampled (bilinearly) to the original image, keep the pixels with
:math:`M(x, y) \\ge t \\cdot \\max M` (the paper uses :math:`t = 0.15`), label the connected components of that mask
(8-connectivity) and box the largest one. ``all_components`` boxes every component of at least ``min_area`` pixels
instead. Boxes are ``[x0, y0, x1, y1]`` in original-image pixels with ``x1``/``y1`` exclusive.

For segmentation models :func:`mask_boxes` boxes every component of the model's own predicted mask (resized to the
image as ``/predict``'s mask PNG is) with the class's mean probability inside, through the same labelling.

:func:`component_boxes` is the one box routine: ``/localize`` (:func:`boxes_from_map`), ``xaas calibrate`` and
``bench/quality.py`` (:func:`service.quality.box_sweep`) all call it, so a calibrated threshold is tuned for exactly
the boxes ``/localize`` returns. This is CPU/NumPy post-processing that runs in the I/O thread pool, not on the
model worker.

Example::

    boxes = boxes_from_map(raw_map, (width, height), threshold=0.15)     # [Box(x0, y0, x1, y1, area)]
    xyxy, areas = component_boxes(unit_map, 0.15)                        # every component, largest first
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..rendering import normalised_map

__all__ = ["Box", "DEFAULT_THRESHOLD", "MaskBox", "boxes_from_map", "boxes_from_mask", "component_boxes",
           "mask_boxes"]

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


def component_boxes(unit: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[K, 4]`` (int64, exclusive ends) and pixel areas ``[K]`` of the 8-connected components of
    ``unit >= threshold``, largest first; equal areas keep label order (raster order of each component's first pixel).

    ``unit`` is a map in [0, 1] (:func:`service.rendering.normalised_map`'s float32). The comparison is made in
    float32 whatever the threshold's type: a Python float and an ``np.float64`` would otherwise disagree on a
    plateau at exactly ``float32(t)`` for thresholds that float32 rounds down (0.7, 0.95).
    """
    _check_threshold(threshold)
    return _components(np.asarray(unit, dtype=np.float32) >= np.float32(threshold))


def boxes_from_mask(mask: np.ndarray, *, all_components: bool = False, min_area: int = 0) -> list[Box]:
    """Boxes of the connected components of a boolean mask: the largest one, or all of at least ``min_area`` pixels
    (largest first)."""
    return _as_boxes(*_components(mask), all_components=all_components, min_area=min_area)


@dataclass(frozen=True)
class MaskBox:
    """A connected component of a segmentation model's predicted mask: its box and the class's mean probability over
    the component's own pixels."""

    box: Box
    mean_probability: float


def mask_boxes(predicted: np.ndarray, probability: np.ndarray, size: tuple[int, int], *,
               min_area: int = 0) -> list[MaskBox]:
    """Every 8-connected component of at least ``min_area`` pixels (largest first) of a predicted mask ``[H, W]``
    (the model's output grid), resized to ``size`` = (width, height) by nearest neighbour — the pixels of
    ``/predict``'s mask PNG — each with the mean of ``probability`` (same grid, resized the same way) inside it."""
    width, height = size
    mask = _nearest(predicted.astype(np.float32), width, height) > 0.5
    values = _nearest(probability.astype(np.float32), width, height)
    labels, boxes, areas, order = _labelled(mask)
    if not len(order):
        return []
    means = np.asarray(ndimage.mean(values, labels, index=order + 1), dtype=np.float64).reshape(-1)
    return [MaskBox(Box(*b, a), float(m)) for b, a, m in zip(boxes.tolist(), areas.tolist(), means.tolist())
            if a >= min_area]


def _nearest(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize by torch's rule, the one ``/predict`` draws its mask PNGs with (so a mask box is
    the box of the served mask's component)."""
    import torch
    import torch.nn.functional as F

    if plane.shape == (height, width):
        return plane
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(plane))[None, None], size=(height, width),
                            mode="nearest")
    return resized[0, 0].numpy()


def boxes_from_map(heatmap: np.ndarray, size: tuple[int, int], *, threshold: float = DEFAULT_THRESHOLD,
                   all_components: bool = False, min_area: int = 0) -> list[Box]:
    """Boxes for one raw map (``[h, w]``, any scale) on an image of ``size`` = (width, height).

    Negative and non-finite values count as zero importance; a map with no positive value yields no box.
    """
    _check_threshold(threshold)
    unit, stats = normalised_map(heatmap, size)
    if stats.empty:
        return []
    return _as_boxes(*component_boxes(unit, threshold), all_components=all_components, min_area=min_area)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and areas of the components of a mask, largest first (see :func:`_labelled`)."""
    _, boxes, areas, _ = _labelled(mask)
    return boxes, areas


def _labelled(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Label, box and order the components of a mask: the label image, boxes ``[K, 4]`` and areas ``[K]`` largest
    first, and ``order`` (label - 1 of each, in that order). ``ndimage.find_objects`` gives each label's bounding
    slices in one pass (C), so the cost is one label plus two scans of the image, not a Python loop over pixels."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return labels, np.zeros((0, 4), dtype=np.int64), empty, empty
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    boxes = np.array([(xs.start, ys.start, xs.stop, ys.stop) for ys, xs in ndimage.find_objects(labels)],
                     dtype=np.int64)
    order = np.argsort(-areas, kind="stable")
    return labels, boxes[order], areas[order].astype(np.int64, copy=False), order


def _as_boxes(boxes: np.ndarray, areas: np.ndarray, *, all_components: bool, min_area: int) -> list[Box]:
    """The largest component (``min_area`` ignored, as the API documents) or all of at least ``min_area`` pixels."""
    keep = slice(0, 1) if not all_components else areas >= min_area
    return [Box(*b, a) for b, a in zip(boxes[keep].tolist(), areas[keep].tolist())]


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
