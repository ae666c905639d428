"""Metrics, the training loop (smoke) and the shipped demo weights (for real)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.demo.data import CLASSES, SyntheticShapes, generate_sample_with_masks, sample_rng
from service.demo.model import ARCH_NAME, DEMO_MEAN, DEMO_STD, DemoNet
from service.demo.train import (
    DEFAULT_WEIGHTS,
    EVAL_SEED,
    average_precision,
    evaluate_demo,
    load_demo_model,
    read_demo_metadata,
    train_demo,
)

# A stream used by neither training (seed 0) nor evaluate_demo's default.
_FRESH_SEED = 31337


# --------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------


def test_ap_hand_computed() -> None:
    # Ranking: +, -, +, -  -> precision at the two hits: 1/1 and 2/3.
    ap = average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert ap == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)


def test_ap_perfect_and_worst() -> None:
    assert average_precision(np.array([0, 1, 1]), np.array([0.1, 0.8, 0.9])) == pytest.approx(1.0)
    # Both positives ranked last: precision 1/3 then 2/4 at the hits.
    assert average_precision(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(
        (1.0 / 3.0 + 2.0 / 4.0) / 2.0
    )


def test_ap_ties_are_one_threshold() -> None:
    # All scores tied: a single threshold at which precision is the base rate.
    assert average_precision(np.array([1, 0, 0, 1]), np.full(4, 0.5)) == pytest.approx(0.5)
    # A tie between one positive and one negative at the top is not resolved
    # in the positive's favour.
    assert average_precision(np.array([1, 0, 1]), np.array([0.9, 0.9, 0.1])) == pytest.approx(
        0.5 * 0.5 + 0.5 * (2.0 / 3.0)
    )


def test_ap_no_positives_is_nan() -> None:
    assert math.isnan(average_precision(np.zeros(5), np.arange(5.0)))


def test_ap_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, size=200)
        y[0] = 1
        # Coarse scores so that ties actually occur.
        s = np.round(rng.random(200) + 0.5 * y, 1)
        assert average_precision(y, s) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)


# --------------------------------------------------------------------------
# Training loop (tiny smoke run; the real run is offline)
# --------------------------------------------------------------------------


def test_train_demo_smoke(tmp_path: Path) -> None:
    out = tmp_path / "tiny.safetensors"
    lines: list[str] = []
    result = train_demo(out, seed=3, presentations=48, batch_size=16, log=lines.append, num_workers=0)
    assert out.is_file()
    assert result["steps"] == 3 and result["presentations"] == 48
    assert math.isfinite(result["final_loss"])
    assert any("step" in line for line in lines)
    meta = read_demo_metadata(out)
    assert meta["arch"] == ARCH_NAME
    assert meta["classes"] == list(CLASSES)
    assert meta["seed"] == 3 and meta["presentations"] == 48
    model = load_demo_model(out)
    assert not model.training
    # The saved weights are the trained ones, not a fresh initialisation.
    fresh = DemoNet()
    assert not torch.equal(model.classifier.weight, fresh.classifier.weight)


def test_train_demo_refuses_eval_stream(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="held-out"):
        train_demo(tmp_path / "x.safetensors", seed=EVAL_SEED, presentations=32)


def test_load_demo_model_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train"):
        load_demo_model(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------
# The shipped weights
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> torch.nn.Module:
    assert DEFAULT_WEIGHTS.is_file(), f"shipped weights missing: {DEFAULT_WEIGHTS}"
    return load_demo_model()


def test_shipped_file_is_small_and_described() -> None:
    assert DEFAULT_WEIGHTS.name == "demo_cnn.safetensors"
    assert DEFAULT_WEIGHTS.stat().st_size < 4 * 1024 * 1024
    meta = read_demo_metadata()
    assert meta["arch"] == ARCH_NAME
    assert meta["classes"] == list(CLASSES)
    assert meta["mean"] == list(DEMO_MEAN) and meta["std"] == list(DEMO_STD)
    assert meta["seed"] != EVAL_SEED and meta["seed"] != _FRESH_SEED
    assert meta["presentations"] >= 10_000


def test_shipped_weights_classify_held_out_images(shipped: torch.nn.Module) -> None:
    assert tuple(shipped.class_names) == CLASSES
    result = evaluate_demo(n=200, seed=_FRESH_SEED)
    assert result["n"] == 200
    assert result["mAP"] >= 0.95, result
    assert result["exact_match"] >= 0.8, result
    assert set(result["per_class_ap"]) == set(CLASSES)


def test_shipped_weights_localise_objects(shipped: torch.nn.Module) -> None:
    """Pointing game with classic CAM (== Grad-CAM for a GAP -> linear head).

    For every object present, the peak of its class map (upsampled to the
    image) should fall inside the object's box.  The usual protocol (Zhang et
    al., 2016) allows 15 px of tolerance; the network keys on object contours,
    so some peaks sit a few pixels outside the box, hence a looser bar for the
    strict (0 px) variant.  The service's explanation-quality checks rely on
    the demo model localising like this.
    """
    ds = SyntheticShapes(60, _FRESH_SEED + 1)
    distances: list[int] = []
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        cams = F.interpolate(shipped.class_activation_maps(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
    for i in range(len(ds)):
        _, objects, _ = generate_sample_with_masks(sample_rng(ds.seed, i))
        for obj in objects:
            cam = cams[i, CLASSES.index(obj["class"])]
            py, px = divmod(int(cam.argmax()), cam.shape[1])
            x0, y0, x1, y1 = obj["box"]
            # Chebyshev distance from the peak to the box (0 when inside).
            distances.append(max(x0 - px, px - (x1 - 1), y0 - py, py - (y1 - 1), 0))
    d = np.array(distances)
    assert d.size > 60
    assert (d <= 15).mean() >= 0.97, f"pointing game (15 px) {(d <= 15).mean():.3f}"
    assert (d == 0).mean() >= 0.8, f"pointing game (in box) {(d == 0).mean():.3f}"
