"""ROAD (Rong et al. 2022): the noisy linear imputation against a direct dense solve and its defining property on tiny
images, and the MoRF/LeRF curves against the imputation applied by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.quality import perturbation_ranks
from service.road import ROAD_NEIGHBOURS, noisy_linear_imputation, road_curves, road_summary

WEIGHTS = dict(ROAD_NEIGHBOURS)


def dense_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The same equations written out pixel by pixel and solved densely (numpy.linalg.solve)."""
    c, h, w = image.shape
    unknown = [(y, x) for y in range(h) for x in range(w) if removed[y, x]]
    index = {p: i for i, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), c))
    for i, (y, x) in enumerate(unknown):
        for (dy, dx), wt in WEIGHTS.items():
            ny, nx = y + dy, x + dx
            if not (0 <= ny < h and 0 <= nx < w):
                continue
            a[i, i] += wt
            if removed[ny, nx]:
                a[i, index[(ny, nx)]] -= wt
            else:
                b[i] += wt * image[:, ny, nx]
    out = image.astype(np.float64).copy()
    sol = np.linalg.solve(a, b)
    for i, (y, x) in enumerate(unknown):
        out[:, y, x] = sol[i]
    return out


def test_weights_are_the_papers():
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)
    assert WEIGHTS[(0, 1)] == pytest.approx(1 / 6) and WEIGHTS[(1, 1)] == pytest.approx(1 / 12)


def test_imputation_equals_a_dense_solve_and_each_removed_pixel_is_its_neighbours_weighted_mean():
    rng = np.random.default_rng(3)
    image = rng.random((2, 4, 5))
    removed = np.zeros((4, 5), bool)
    removed[0, 0] = removed[1, 1] = removed[1, 2] = removed[2, 2] = removed[3, 4] = True   # corner, blob, border
    got = noisy_linear_imputation(image, removed, noise=0.0)
    np.testing.assert_allclose(got, dense_imputation(image, removed), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got[:, ~removed], image[:, ~removed])                    # kept pixels untouched
    for y, x in zip(*np.nonzero(removed)):
        num, den = 0.0, 0.0
        for (dy, dx), wt in WEIGHTS.items():
            if 0 <= y + dy < 4 and 0 <= x + dx < 5:
                num, den = num + wt * got[:, y + dy, x + dx], den + wt
        np.testing.assert_allclose(got[:, y, x], num / den, rtol=1e-12)


def test_an_interior_hole_in_a_plane_is_filled_exactly():
    yy, xx = np.mgrid[0:7, 0:8].astype(np.float64)
    plane = np.stack([1.0 + 0.5 * yy - 0.25 * xx, 2.0 * xx])
    removed = np.zeros((7, 8), bool)
    removed[2:5, 2:6] = True
    np.testing.assert_allclose(noisy_linear_imputation(plane, removed, noise=0.0), plane, atol=1e-12)


def test_noise_is_added_to_removed_pixels_only():
    rng = np.random.default_rng(0)
    image = rng.random((3, 6, 6)).astype(np.float32)
    removed = rng.random((6, 6)) < 0.4
    clean = noisy_linear_imputation(image, removed, noise=0.0)
    noisy = noisy_linear_imputation(image, removed, noise=0.01, rng=np.random.default_rng(5))
    assert noisy.dtype == np.float32
    draws = np.random.default_rng(5).standard_normal((int(removed.sum()), 3)).T
    np.testing.assert_allclose(noisy[:, removed], clean[:, removed] + 0.01 * draws, atol=1e-6)
    np.testing.assert_array_equal(noisy[:, ~removed], image[:, ~removed])
    with pytest.raises(ValueError):
        noisy_linear_imputation(image, np.ones((6, 6), bool))


def test_road_curves_apply_the_imputation_and_separate_a_faithful_map_from_its_reverse():
    # A "model" whose probability is the mean brightness inside a box: the box is the only evidence.
    h = w = 12
    image = np.zeros((1, 1, h, w), np.float32)
    image[..., 3:7, 4:8] = 1.0
    box = torch.zeros(h, w)
    box[3:7, 4:8] = 1.0

    def prob(images, targets):
        return images[:, 0, 3:7, 4:8].mean((1, 2))

    x = torch.from_numpy(image)
    t = torch.zeros(1, dtype=torch.long)
    good = box[None] + 0.01 * torch.rand(1, h, w, generator=torch.Generator().manual_seed(0))
    morf, lerf = road_curves(prob, x, good, t, fractions=(0.1, 0.5, 0.8), noise=0.01, seed=4)
    assert morf.shape == lerf.shape == (1, 3)
    # by hand: fraction 0.1 of MoRF removes the 14 highest-ranked pixels (inside the 16-pixel box)
    ranks = perturbation_ranks(good, 4).view(h, w).numpy()
    removed = ranks < round(0.1 * h * w)
    filled = noisy_linear_imputation(image[0], removed, noise=0.01, rng=np.random.default_rng([4, 0, 0, 0]))
    assert morf[0, 0] == pytest.approx(float(prob(torch.from_numpy(filled[None]), t)), abs=1e-6)
    assert lerf[0, 0] == pytest.approx(1.0, abs=0.05) and lerf[0, 1] == pytest.approx(1.0, abs=0.05)
    assert morf[0, 1] < 0.1
    reverse_morf, reverse_lerf = road_curves(prob, x, 1.0 - good, t, fractions=(0.1, 0.5, 0.8), seed=4)
    good_summary, bad_summary = road_summary(morf, lerf), road_summary(reverse_morf, reverse_lerf)
    assert good_summary["road_gap"] > 0.5 > bad_summary["road_gap"]
    assert good_summary["road_morf"] < bad_summary["road_morf"]
