"""ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
ICML 2022) — MoRF/LeRF curves whose removed pixels are filled by noisy linear imputation, so that the model cannot
read the removal mask itself. Used by ``xaas evaluate`` and ``bench/quality.py --road-images``; the pixel ranking is
:func:`service.quality.perturbation_ranks`, shared with deletion/insertion.

Example::

    morf, lerf = road_curves(class_probability_fn(model, "multiclass"), x, maps, targets, seed=0)
    road_summary(morf, lerf)   # {"road_morf": ..., "road_lerf": ..., "road_gap": ...}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import spsolve
from torch import Tensor

from .quality import perturbation_ranks

__all__ = ["ROAD_FRACTIONS", "ROAD_NEIGHBOURS", "ROAD_NOISE", "noisy_linear_imputation", "road_curves", "road_summary"]


#: ROAD's imputation weights over the 8-neighbourhood, ``((dy, dx), weight)``: 1/6 for the four direct neighbours,
#: 1/12 for the diagonal ones (Rong et al.'s reference code), summing to 1.
ROAD_NEIGHBOURS: tuple[tuple[tuple[int, int], float], ...] = (
    ((-1, 0), 1 / 6), ((1, 0), 1 / 6), ((0, -1), 1 / 6), ((0, 1), 1 / 6),
    ((-1, -1), 1 / 12), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((1, 1), 1 / 12),
)
#: Fractions of pixels removed along a ROAD curve (the paper's 10 %, 20 %, ..., 90 %).
ROAD_FRACTIONS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))
#: Standard deviation of the noise added to imputed pixels, in the units of the image given (the paper's 0.01).
ROAD_NOISE = 0.01


def noisy_linear_imputation(image: np.ndarray, removed: np.ndarray, *, noise: float = ROAD_NOISE,
                            rng: np.random.Generator | None = None) -> np.ndarray:
    r"""ROAD's noisy linear imputation (Rong et al., ICML 2022): every removed pixel becomes the weighted mean of its
    in-image 8-neighbours (:data:`ROAD_NEIGHBOURS`), removed neighbours being unknowns themselves, plus noise:

        \Big(\sum_{j \in N(i)} w_j\Big) x_i - \sum_{j \in N(i), j removed} w_j x_j = \sum_{j \in N(i), j kept} w_j v_j

    one sparse linear system over the removed pixels (``scipy.sparse``, solved by ``spsolve`` for all channels at
    once), then ``x_i += noise * N(0, 1)`` per channel. Kept pixels are returned unchanged. ``image`` ``[C, H, W]``,
    ``removed`` ``[H, W]`` bool; at least one pixel must be kept (otherwise the system has no data). Unlike blurring
    or a constant, the infill carries no trace of the removed pixels' shape or values, which is the paper's point:
    the model cannot read the mask itself (the class information leak of deletion with a fixed substitute).

    Example::

        filled = noisy_linear_imputation(x.numpy(), ranks < k, rng=np.random.default_rng(0))
    """
    img = np.asarray(image, dtype=np.float64)
    mask = np.asarray(removed, dtype=bool)
    c, h, w = img.shape
    if mask.shape != (h, w):
        raise ValueError(f"removed must be [H, W] = {(h, w)}, got {mask.shape}")
    unknown = np.flatnonzero(mask.ravel())
    out = img.copy()
    if unknown.size == 0:
        return out.astype(image.dtype, copy=False)
    if unknown.size == h * w:
        raise ValueError("ROAD imputation needs at least one kept pixel")
    variable = np.full(h * w, -1, dtype=np.int64)
    variable[unknown] = np.arange(unknown.size)
    ys, xs = np.divmod(unknown, w)
    flat = img.reshape(c, -1)
    diagonal = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, c))
    rows, cols, vals = [], [], []
    for (dy, dx), weight in ROAD_NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        eq = np.flatnonzero(inside)
        neighbour = ny[inside] * w + nx[inside]
        diagonal[eq] += weight                       # only in-image neighbours count (the image border)
        var = variable[neighbour]
        free = var >= 0
        rows.append(eq[free])
        cols.append(var[free])
        vals.append(np.full(int(free.sum()), -weight))
        np.add.at(rhs, eq[~free], weight * flat[:, neighbour[~free]].T)
    n = unknown.size
    a = sparse.csc_matrix((np.concatenate([diagonal, *vals]),
                           (np.concatenate([np.arange(n), *rows]), np.concatenate([np.arange(n), *cols]))),
                          shape=(n, n))
    solution = np.asarray(spsolve(a, rhs)).reshape(n, c)
    if noise:
        solution = solution + noise * (rng or np.random.default_rng()).standard_normal(solution.shape)
    out.reshape(c, -1)[:, unknown] = solution.T
    return out.astype(image.dtype, copy=False)


def road_curves(prob_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, saliency: Tensor, targets: Tensor, *,
                fractions: Sequence[float] = ROAD_FRACTIONS, noise: float = ROAD_NOISE, seed: int = 0,
                batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """ROAD's MoRF and LeRF curves (Rong et al. 2022), ``([P, K], [P, K])`` for ``K = len(fractions)``.

    Pixels are ranked by ``saliency`` (``[P, H, W]``, ties broken at random as in :func:`deletion_insertion`). At
    fraction ``f`` the ``round(f * H * W)`` most (MoRF) or least (LeRF) important pixels are removed and filled by
    :func:`noisy_linear_imputation` (noise seeded by ``(seed, pair, step, order)``); the curve is the target's
    probability ``prob_fn(images, targets)``. A faithful map makes MoRF fall fast (low) and LeRF stay high.
    Summarise with :func:`road_summary`. The imputations run on the CPU (scipy); the model in batches.
    """
    p, _, h, w = inputs.shape
    if saliency.shape != (p, h, w):
        raise ValueError(f"saliency must be [P, H, W] = {(p, h, w)}, got {tuple(saliency.shape)}")
    if not all(0.0 <= f < 1.0 for f in fractions):
        raise ValueError("ROAD fractions must lie in [0, 1): at least one pixel is kept")
    ranks = perturbation_ranks(saliency, seed).view(p, h, w).cpu().numpy()
    images = inputs.detach().cpu().numpy()
    curves = np.empty((2, p, len(fractions)), dtype=np.float32)
    jobs = [(row, k, order) for row in range(p) for k in range(len(fractions)) for order in (0, 1)]
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        filled = []
        for row, k, order in chunk:
            count = round(fractions[k] * h * w)
            removed = ranks[row] < count if order == 0 else ranks[row] >= h * w - count
            rng = np.random.default_rng([int(seed), row, k, order])
            filled.append(noisy_linear_imputation(images[row], removed, noise=noise, rng=rng))
        batch = torch.from_numpy(np.stack(filled)).to(device=inputs.device, dtype=inputs.dtype)
        rows = torch.tensor([j[0] for j in chunk], device=targets.device)
        probs = prob_fn(batch, targets[rows]).float().cpu().tolist()
        for (row, k, order), v in zip(chunk, probs):
            curves[order, row, k] = v
    return curves[0], curves[1]


def road_summary(morf: np.ndarray, lerf: np.ndarray) -> dict[str, float]:
    """Means over pairs and fractions: ``road_morf`` (lower is better), ``road_lerf`` (higher is better) and
    ``road_gap = road_lerf - road_morf`` (twice pytorch-grad-cam's ``ROADCombined``; higher is better)."""
    mo, le = float(np.mean(morf)), float(np.mean(lerf))
    return {"road_morf": mo, "road_lerf": le, "road_gap": le - mo}
