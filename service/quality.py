"""Explanation-quality metrics shared by ``xaas calibrate`` and ``bench/quality.py``.

Everything here is a small function of arrays: NumPy for the per-map metrics, library code where a library has it
(boxes: :func:`service.engine.localize.component_boxes`, the very routine ``/localize`` runs; box IoU:
``torchvision.ops.box_iou``; correlations: ``scipy.stats``), torch where a model has to be run (deletion/insertion
curves, the randomised model of the sanity check). No HTTP types, no registry.

Conventions
-----------
* Boxes are ``[x0, y0, x1, y1]`` in pixels with ``x1``/``y1`` **exclusive** (the demo-data and ``/localize``
  convention), so a box's area is ``(x1 - x0) * (y1 - y0)`` and the IoU needs no ``+1``.
* A *unit map* is what ``/localize`` thresholds: :func:`service.rendering.normalised_map` of the raw map, i.e.
  negatives and non-finite values → 0, divided by the maximum, bilinearly resized to the image, in ``[0, 1]`` with
  maximum exactly 1 (an all-zero map stays all zero). Thresholds are fractions of that maximum, exactly as
  ``/localize``'s ``threshold``, so a calibrated threshold can be written into the registry as is.
* An evaluation unit is an **(image, ground-truth class) pair**: the class's own map is compared with the boxes of
  that class only. When an image holds several objects of one class, a predicted box is correct when it matches
  *any* of them (max IoU over that class's boxes). Objects of other classes are never matches.

Localisation (Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right", CVPR 2020)
------------------------------------------------------------------------------------------------------
``BoxAcc(t, δ)`` is the fraction of pairs whose estimated box has IoU ≥ δ with a ground-truth box of the class, the
box being the tight box of the **largest** 8-connected component of ``{unit ≥ t}`` (the Grad-CAM recipe and what
``/localize`` returns by default, computed by the same function). ``MaxBoxAcc = max_t BoxAcc(t, 0.5)``: the paper's
original metric (its code's ``multi_contour_eval=False``, δ = 0.5). "Largest" is by pixel count (the paper's code
uses the contour's polygon area; the two agree except on ties between near-equal components; equal pixel counts go
to the component met first in raster order, as in ``/localize``). ``MaxBoxAccV2`` follows the paper's revised
definition: at each threshold the best match among the boxes of *all* components (``multi_contour_eval=True``),
averaged over δ ∈ {0.3, 0.5, 0.7}. Ties between thresholds are broken towards the lower threshold.

Other metrics: pointing game (Zhang et al., 2016), deletion / insertion (Petsiuk et al., RISE, BMVC 2018; ROAD's
imputed variant is :mod:`service.road`),
model-parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018), rank and linear
correlation of maps, fraction of a map's mass inside boxes. See each function.

Example::

    unit = unit_map(raw, (width, height))
    iou_largest, iou_any = box_sweep(unit, boxes_of_class, thresholds)     # one pair; stack over pairs
    acc = box_accuracy(np.stack(all_iou_largest), 0.5)
    best, t = max_box_acc(acc, thresholds)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn
from torchvision.ops import box_iou

from .engine.localize import component_boxes
from .rendering import normalised_map

__all__ = [
    "DEFAULT_THRESHOLDS",
    "IOU_THRESHOLD",
    "POINTING_TOLERANCE",
    "V2_IOU_THRESHOLDS",
    "auc",
    "box_accuracy",
    "box_sweep",
    "class_probability_fn",
    "component_boxes",
    "deletion_insertion",
    "iou",
    "iou_matrix",
    "localization_summary",
    "map_correlation",
    "mass_inside",
    "max_box_acc",
    "max_box_acc_v2",
    "parse_thresholds",
    "perturbation_ranks",
    "pointing_baselines",
    "pointing_in_mask",
    "pointing_hit",
    "randomized_model",
    "rank_correlation",
    "unit_map",
]

#: Thresholds swept by default: 0.05, 0.10, ..., 0.95 (includes the Grad-CAM paper's 0.15).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))
#: IoU needed for a correct box (Choe et al. 2020; PASCAL VOC).
IOU_THRESHOLD = 0.5
#: IoU thresholds averaged by MaxBoxAccV2.
V2_IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
#: Pointing-game tolerance in image pixels (Zhang et al. use 15 px on ~500 px PASCAL images, i.e. ~3 %; 2 px on a
#: 128 px image is ~1.5 %, a quarter of one 8-pixel cell of the demo model's 16x16 map).
POINTING_TOLERANCE = 2


# --------------------------------------------------------------------------------------------------- boxes


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[N, M]`` of boxes ``a [N, 4]`` and ``b [M, 4]`` (exclusive ends), by ``torchvision.ops.box_iou``.

    torchvision's area is ``(x1 - x0) * (y1 - y0)``, right for exclusive ends (no ``+1``). Two empty boxes have no
    union and torchvision gives 0/0 = nan; we call that 0.0 (no overlap). Empty or inverted boxes have IoU 0.
    """
    ta = torch.from_numpy(np.asarray(a, dtype=np.float64).reshape(-1, 4))
    tb = torch.from_numpy(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    return torch.nan_to_num(box_iou(ta, tb), nan=0.0).numpy()


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (exclusive ends); 0.0 when both are empty."""
    return float(iou_matrix(np.asarray(a), np.asarray(b))[0, 0])


def unit_map(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The map ``/localize`` thresholds: ``normalised_map(raw, size)`` (``size`` = (width, height)), ``[H, W]``."""
    return normalised_map(np.asarray(raw), size)[0]


def box_sweep(unit: np.ndarray, gt_boxes: Sequence[Sequence[int]], thresholds: Sequence[float]
              ) -> tuple[np.ndarray, np.ndarray]:
    """For one (image, class) pair: ``(iou_largest [T], iou_any [T])``.

    ``iou_largest[t]``: IoU of the largest component's box at threshold ``t`` with the best-matching ground-truth box
    of the class (0 when the mask is empty); ``iou_any[t]``: the best IoU between any component's box and any
    ground-truth box of the class (MaxBoxAccV2's matching).
    """
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    out_largest = np.zeros(len(thresholds))
    out_any = np.zeros(len(thresholds))
    if gt.shape[0] == 0 or not unit.max() > 0:
        return out_largest, out_any
    per_threshold = [component_boxes(unit, float(t))[0] for t in thresholds]
    counts = [len(b) for b in per_threshold]
    if not any(counts):
        return out_largest, out_any
    best = iou_matrix(np.concatenate(per_threshold), gt).max(axis=1)    # one IoU call per pair: each box's best GT
    start = 0
    for i, n in enumerate(counts):
        if n:
            out_largest[i] = best[start]                                  # boxes are largest first
            out_any[i] = best[start:start + n].max()
        start += n
    return out_largest, out_any


def box_accuracy(ious: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """BoxAcc per threshold: the fraction of pairs (rows of ``ious [N, T]``) with IoU ≥ ``iou_threshold``."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2:
        raise ValueError(f"ious must be [pairs, thresholds], got shape {ious.shape}")
    if ious.shape[0] == 0:
        return np.full(ious.shape[1], np.nan)
    return (ious >= iou_threshold - 1e-12).mean(axis=0)


def max_box_acc(accuracy: Sequence[float], thresholds: Sequence[float]) -> tuple[float, float]:
    """``(MaxBoxAcc, best threshold)``: the best accuracy over thresholds; ties go to the lowest threshold."""
    acc = np.asarray(accuracy, dtype=np.float64)
    if acc.size == 0 or len(thresholds) != acc.size:
        raise ValueError("accuracy and thresholds must be non-empty and of equal length")
    i = int(np.nanargmax(acc)) if not np.all(np.isnan(acc)) else 0
    return float(acc[i]), float(thresholds[i])


def max_box_acc_v2(ious_any: np.ndarray, iou_thresholds: Sequence[float] = V2_IOU_THRESHOLDS) -> float:
    """MaxBoxAccV2 (Choe et al. 2020, revised): mean over δ of ``max_t BoxAcc(t, δ)`` using all components' boxes."""
    return float(np.mean([np.max(box_accuracy(ious_any, d)) for d in iou_thresholds]))


def localization_summary(iou_largest: np.ndarray, iou_any: np.ndarray, thresholds: Sequence[float], *,
                         at: Sequence[float] = (0.15,)) -> dict[str, Any]:
    """Every localisation number of one method from its stacked sweeps ``[pairs, T]``.

    Keys: ``box_accuracy`` (per threshold, largest component, IoU ≥ 0.5), ``max_box_acc``, ``best_threshold``,
    ``mean_iou`` (mean IoU of the largest component's box at the best threshold), ``max_box_acc_v2``, and
    ``box_accuracy_at`` ``{t: acc}`` for each ``t`` of ``at`` that is one of ``thresholds``.
    """
    thresholds = [float(t) for t in thresholds]
    acc = box_accuracy(iou_largest)
    best, t_best = max_box_acc(acc, thresholds)
    i = thresholds.index(t_best)
    at_values = {}
    for t in at:
        j = next((k for k, v in enumerate(thresholds) if abs(v - t) < 1e-9), None)
        if j is not None:
            at_values[f"{t:g}"] = float(acc[j])
    return {
        "pairs": int(np.asarray(iou_largest).shape[0]),
        "thresholds": thresholds,
        "box_accuracy": [float(v) for v in acc],
        "max_box_acc": best,
        "best_threshold": t_best,
        "mean_iou": float(np.mean(np.asarray(iou_largest)[:, i])) if len(iou_largest) else float("nan"),
        "max_box_acc_v2": max_box_acc_v2(iou_any) if len(iou_any) else float("nan"),
        "box_accuracy_at": at_values,
    }


def parse_thresholds(spec: str | Sequence[float] | None) -> list[float]:
    """Thresholds from a string of comma-separated items, each a value or an inclusive ``start:stop:step`` range
    (``"0.05:0.95:0.05"``, ``"0.1,0.2"``, ``"0.01:0.09:0.01,0.1:0.9:0.05"``), or from a sequence; each in (0, 1].

    ``None`` gives :data:`DEFAULT_THRESHOLDS`. Values are rounded to 6 decimals, de-duplicated and sorted.
    """
    if spec is None:
        return list(DEFAULT_THRESHOLDS)
    values: list[float] = []
    if isinstance(spec, str):
        for item in (p.strip() for p in spec.split(",")):
            if not item:
                continue
            if ":" in item:
                parts = item.split(":")
                if len(parts) != 3:
                    raise ValueError(f"a threshold range must be start:stop:step, got {item!r}")
                start, stop, step = (float(p) for p in parts)
                if not step > 0 or stop < start:
                    raise ValueError(f"a threshold range needs step > 0 and stop >= start, got {item!r}")
                n = int(math.floor((stop - start) / step + 1e-9)) + 1
                values += [start + k * step for k in range(n)]
            else:
                values.append(float(item))
    else:
        values = [float(v) for v in spec]
    out = sorted({round(v, 6) for v in values})
    if not out:
        raise ValueError("no thresholds given")
    bad = [v for v in out if not 0.0 < v <= 1.0]
    if bad:
        raise ValueError(f"thresholds must be in (0, 1], got {bad}")
    return out


# --------------------------------------------------------------------------------------------------- pointing


def _dilated(box: Sequence[int], tolerance: int) -> tuple[int, int, int, int]:
    return box[0] - tolerance, box[1] - tolerance, box[2] + tolerance, box[3] + tolerance


def pointing_hit(unit: np.ndarray, gt_boxes: Sequence[Sequence[int]], tolerance: int = POINTING_TOLERANCE) -> bool:
    """Pointing game: the map's maximum (first in row-major order on ties) lies inside a ground-truth box of the class
    enlarged by ``tolerance`` pixels on every side. An all-zero map points nowhere (a miss)."""
    if not unit.size or not unit.max() > 0:
        return False
    y, x = np.unravel_index(int(np.argmax(unit)), unit.shape)
    return any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in (_dilated(b, tolerance) for b in gt_boxes))


def pointing_in_mask(unit: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """Pointing game against an exact mask (segmentation): the map's maximum (first in row-major order on ties)
    is a pixel of ``mask`` (same shape) dilated by ``tolerance`` pixels with a square structuring element — the
    Chebyshev neighbourhood, so a box's mask scores exactly as :func:`pointing_hit` scores the box. An all-zero map
    points nowhere (a miss)."""
    if unit.shape != mask.shape:
        raise ValueError(f"map {unit.shape} and mask {mask.shape} differ in shape")
    if not unit.size or not unit.max() > 0:
        return False
    y, x = np.unravel_index(int(np.argmax(unit)), unit.shape)
    t = max(0, int(tolerance))
    return bool(np.asarray(mask, bool)[max(0, y - t):y + t + 1, max(0, x - t):x + t + 1].any())


def pointing_baselines(gt_boxes: Sequence[Sequence[int]], size: tuple[int, int],
                       tolerance: int = POINTING_TOLERANCE) -> tuple[float, bool]:
    """``(random, centre)`` for one pair on an image of ``size`` = (width, height): the hit probability of a
    uniformly random pixel (the tolerance-enlarged boxes' area over the image's, exact rather than sampled) and
    whether the centre pixel ``(width // 2, height // 2)`` hits."""
    width, height = size
    cover = np.zeros((height, width), dtype=bool)
    for b in gt_boxes:
        x0, y0, x1, y1 = _dilated(b, tolerance)
        cover[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    return float(cover.mean()), bool(cover[height // 2, width // 2])


# --------------------------------------------------------------------------------------------------- map statistics


def mass_inside(heat: np.ndarray, gt_boxes: Sequence[Sequence[int]]) -> float:
    """Fraction of a non-negative map's total mass (negatives count as 0) inside the union of ``gt_boxes``
    (``heat`` at image resolution). ``nan`` for an all-zero map (no mass to place)."""
    h = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    total = h.sum()
    if not total > 0:
        return float("nan")
    inside = np.zeros(h.shape, dtype=bool)
    for x0, y0, x1, y1 in gt_boxes:
        inside[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    return float(h[inside].sum() / total)


def _flat_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"maps differ in shape: {np.shape(a)} vs {np.shape(b)}")
    return x, y


def _constant(v: np.ndarray) -> bool:
    """No variation, so no correlation: checked before scipy, which would return nan with a ConstantInputWarning."""
    return v.size < 2 or not v.max() > v.min()


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps of equal shape (``scipy.stats.pearsonr``); ``nan`` when either is constant
    (or holds a nan)."""
    x, y = _flat_pair(a, b)
    if _constant(x) or _constant(y):
        return float("nan")
    return float(stats.pearsonr(x, y).statistic)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (``scipy.stats.spearmanr``: Pearson of average ranks, ties sharing the
    mean rank); ``nan`` when either is constant (or holds a nan)."""
    x, y = _flat_pair(a, b)
    if _constant(x) or _constant(y):
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


# ------------------------------------------------------------------------------------------------- deletion / insertion


def auc(curve: Sequence[float]) -> float:
    """Area under a curve sampled at ``k / (n - 1)``, ``k = 0..n-1`` (trapezoid rule on [0, 1]). For probabilities
    the result is in [0, 1] (Petsiuk et al.'s normalised AUC)."""
    y = np.asarray(curve, dtype=np.float64)
    if y.ndim != 1 or y.size < 2:
        raise ValueError("a curve needs at least two points")
    return float((y.sum() - 0.5 * (y[0] + y[-1])) / (y.size - 1))


def perturbation_ranks(saliency: Tensor, seed: int = 0) -> Tensor:
    """Rank of every pixel, ``[P, H*W]`` long, 0 = most important. Ties (flat regions of a ReLU'd map) are broken
    at random (seeded), so a flat map behaves like a random map rather than like a raster scan."""
    p = saliency.shape[0]
    flat = saliency.reshape(p, -1).float()
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    shuffle = torch.rand(flat.shape, generator=gen).to(flat.device).argsort(dim=1)
    order_in_shuffle = torch.sort(-flat.gather(1, shuffle), dim=1, stable=True).indices
    order = shuffle.gather(1, order_in_shuffle)                       # pixel indices, most important first
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    return ranks


def class_probability_fn(model: nn.Module, task: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(images, targets) -> [b]``: sigmoid (multilabel) or softmax (multiclass) probability of each row's target,
    computed without gradients."""

    def prob(images: Tensor, targets: Tensor) -> Tensor:
        with torch.inference_mode():
            logits = model(images).float()
            if task == "multilabel":
                return torch.sigmoid(logits.gather(1, targets[:, None])[:, 0])
            return torch.softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]

    return prob


def deletion_insertion(prob_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, substrate: Tensor,
                       saliency: Tensor, targets: Tensor, *, steps: int = 16, batch_size: int = 128, seed: int = 0,
                       endpoints: tuple[Tensor, Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018), ``([P, steps+1], [P, steps+1])``.

    Pixels are ranked by ``saliency`` (``[P, H, W]`` at the input resolution, larger = more important, ties broken at
    random). At step ``k`` the ``round(k * H * W / steps)`` most important pixels are, for *deletion*, replaced by the
    ``substrate`` (e.g. a blurred copy of the image) and, for *insertion*, copied from the image onto the substrate;
    the curve is the target's probability ``prob_fn(images, targets)`` along the way. Step 0 of deletion is the image
    and its last step the substrate (the other way round for insertion): pass ``endpoints = (p_image, p_substrate)``
    (``[P]`` each) to reuse them across methods. All ``P * (steps - 1) * 2`` perturbed images run in batches of
    ``batch_size``. Summarise with :func:`auc`: deletion low and insertion high is good.
    """
    p, _, h, w = inputs.shape
    if saliency.shape != (p, h, w):
        raise ValueError(f"saliency must be [P, H, W] = {(p, h, w)}, got {tuple(saliency.shape)}")
    ranks = perturbation_ranks(saliency, seed).view(p, 1, h, w)
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    deletion = torch.empty((p, steps + 1), dtype=torch.float32)
    insertion = torch.empty((p, steps + 1), dtype=torch.float32)
    if endpoints is None:
        full = torch.cat([prob_fn(inputs[s:s + batch_size], targets[s:s + batch_size]).float().cpu()
                          for s in range(0, p, batch_size)])
        base = torch.cat([prob_fn(substrate[s:s + batch_size], targets[s:s + batch_size]).float().cpu()
                          for s in range(0, p, batch_size)])
    else:
        full, base = (e.float().cpu() for e in endpoints)
    deletion[:, 0], deletion[:, steps] = full, base
    insertion[:, 0], insertion[:, steps] = base, full
    jobs = [(row, k, mode) for row in range(p) for k in range(1, steps) for mode in (0, 1)]
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        rows = torch.tensor([j[0] for j in chunk], device=inputs.device)
        n_k = torch.tensor([counts[j[1]] for j in chunk], device=inputs.device).view(-1, 1, 1, 1)
        inserting = torch.tensor([j[2] == 1 for j in chunk], device=inputs.device).view(-1, 1, 1, 1)
        chosen = ranks[rows] < n_k                                    # the k most important pixels
        take_image = chosen == inserting                              # deletion: keep the rest; insertion: the chosen
        images = torch.where(take_image, inputs[rows], substrate[rows])
        probs = prob_fn(images, targets[rows]).float().cpu()
        for (row, k, mode), v in zip(chunk, probs.tolist()):
            (insertion if mode else deletion)[row, k] = v
    return deletion.numpy(), insertion.numpy()


# --------------------------------------------------------------------------------------------------- sanity check


def randomized_model(model: nn.Module, seed: int = 0, *, cascade: int | None = None) -> nn.Module:
    """A re-initialised deep copy of ``model`` for the model-parameter randomisation test (Adebayo et al., 2018).

    Every module with its own ``reset_parameters`` (conv, linear, batch-norm: weights *and* running statistics) is
    re-initialised with PyTorch's default initialiser under ``seed``. ``cascade=None`` re-initialises all of them
    ("full" randomisation); ``cascade=k`` only the last ``k`` in registration order (Adebayo's cascading
    randomisation from the logits down). The copy is in eval mode with frozen parameters; ``model`` is untouched.
    """
    clone = copy.deepcopy(model)
    layers = [m for m in clone.modules() if hasattr(m, "reset_parameters") and callable(m.reset_parameters)
              and any(True for _ in m.parameters(recurse=False))]
    if cascade is not None:
        layers = layers[len(layers) - int(cascade):] if cascade > 0 else []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in layers:
            m.reset_parameters()
    for prm in clone.parameters():
        prm.requires_grad_(False)
    return clone.eval()
