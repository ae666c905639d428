"""``xaas calibrate`` scores exactly the box ``/localize`` returns, threshold for threshold.

A calibrated threshold is only worth storing if calibration boxed the maps the way ``/localize`` will. For each map
and threshold ``t`` the ground truth is set to ``boxes_from_map(raw, size, threshold=t)`` (what ``/localize``
answers); calibration must then score IoU exactly 1 at ``t``, which for non-empty boxes means the very same box.
The maps are built to catch the ways two box routines drift apart: ties between equal-area components, plateaus at
exactly the threshold (including thresholds that float32 rounds down, given as Python and NumPy floats), upsampling,
negative / non-finite values and many small components.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import service.calibrate as calibrate_module
from service.engine.localize import boxes_from_map, component_boxes
from service.quality import box_sweep, unit_map

THRESHOLDS = (0.05, 0.15, 0.3, 0.5, 0.7, 0.75, 0.95)


def _tie_different_shapes() -> np.ndarray:
    """Two 16-pixel components: a 2x8 bar met first in raster order (top right) and a 4x4 square further left and
    down. Sorting ties by anything but label order (box x0, box area, last label) picks the square."""
    m = np.zeros((40, 60), np.float32)
    m[2:4, 40:48] = 1.0
    m[10:14, 3:7] = 1.0
    return m


def _tie_same_shapes() -> np.ndarray:
    """Three equal 5x5 blobs of different heights; at low thresholds all three tie."""
    m = np.zeros((50, 50), np.float32)
    m[30:35, 5:10] = 0.6
    m[5:10, 30:35] = 1.0
    m[5:10, 5:10] = 0.8
    return m


def _plateau(level: float) -> np.ndarray:
    """A small peak inside a large plateau at exactly float32(level): at ``t = level`` the box is the plateau's when
    the plateau counts as ``>= t`` and the peak's otherwise."""
    m = np.zeros((64, 64), np.float32)
    m[8:56, 4:60] = np.float32(level)
    m[30:34, 30:34] = 1.0
    return m


def _upsampled(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((16, 16)) ** 4).astype(np.float32)


def _dirty() -> np.ndarray:
    """Negative and non-finite values count as zero importance in both paths."""
    m = _upsampled(5) - 0.2
    m[0, 0], m[3, 7], m[9, 9] = np.nan, np.inf, -np.inf
    return m


def _noisy() -> np.ndarray:
    """Dozens of small components at low thresholds, several of equal area."""
    rng = np.random.default_rng(11)
    return np.where(rng.random((48, 48)) > 0.8, rng.random((48, 48)), 0.0).astype(np.float32)


#: (raw map, original image size (width, height)).
MAPS: list[tuple[np.ndarray, tuple[int, int]]] = [
    (_tie_different_shapes(), (60, 40)),
    (_tie_same_shapes(), (50, 50)),
    (_plateau(0.7), (64, 64)),
    (_plateau(0.95), (64, 64)),
    (_plateau(0.05), (64, 64)),
    (_plateau(0.3), (64, 64)),
    (_upsampled(3), (128, 96)),
    (_upsampled(4), (97, 131)),
    (_dirty(), (128, 128)),
    (_noisy(), (48, 48)),
    (_noisy(), (100, 70)),
]


def _thresholds_for(raw: np.ndarray, size: tuple[int, int]) -> list[float]:
    """The fixed grid plus thresholds equal to values the unit map actually takes (plateaus at the threshold)."""
    unit = unit_map(raw, size)
    values = np.unique(unit[unit > 0])
    picks = [float(values[k]) for k in np.linspace(0, values.size - 1, 5).astype(int)]
    return sorted(set(THRESHOLDS) | set(picks))


@pytest.mark.parametrize("k", range(len(MAPS)))
def test_box_sweep_scores_the_box_localize_returns(k):
    raw, size = MAPS[k]
    unit = unit_map(raw, size)
    for t in _thresholds_for(raw, size):
        for threshold in (t, np.float64(t), np.float32(t)):       # however the threshold arrives
            [localized] = boxes_from_map(raw, size, threshold=threshold)
            boxes, areas = component_boxes(unit, threshold)
            assert boxes[0].tolist() == localized.as_list() and areas[0] == localized.area, (k, t, threshold)
            largest, _ = box_sweep(unit, [localized.as_list()], [threshold])
            assert largest.tolist() == [1.0], (k, t, threshold)   # IoU 1: the same box
            every = boxes_from_map(raw, size, threshold=threshold, all_components=True)
            assert [b.as_list() + [b.area] for b in every] == np.c_[boxes, areas].tolist(), (k, t, threshold)


def test_the_maps_exercise_ties_and_plateaus():
    """Guard the fixtures: the tie and plateau maps really are ties and plateaus at the thresholds tested."""
    boxes, areas = component_boxes(unit_map(_tie_different_shapes(), (60, 40)), 0.5)
    assert areas.tolist() == [16, 16] and boxes[0].tolist() == [40, 2, 48, 4]    # the bar, met first, wins
    boxes, areas = component_boxes(unit_map(_tie_same_shapes(), (50, 50)), 0.5)
    assert areas.tolist() == [25, 25, 25] and boxes[0].tolist() == [5, 5, 10, 10]
    for level in (0.7, 0.95):                                    # float32 rounds these down
        assert float(np.float32(level)) < level
        [box] = boxes_from_map(_plateau(level), (64, 64), threshold=level)
        assert box.as_list() == [4, 8, 60, 56]                   # the plateau counts as >= t
        [box] = boxes_from_map(_plateau(level), (64, 64), threshold=np.float64(level))
        assert box.as_list() == [4, 8, 60, 56]
    assert len(component_boxes(unit_map(_noisy(), (48, 48)), 0.05)[0]) > 20


def test_calibrate_scores_the_box_localize_returns(monkeypatch, tmp_path):
    """End to end through :func:`service.calibrate.calibrate` (its size bookkeeping, unit maps and sweep), with the
    model's explanations replaced by the maps above: at every threshold, with /localize's boxes as the ground truth,
    box accuracy and mean IoU are exactly 1."""
    raws = [raw for raw, _ in MAPS]
    sizes = [size for _, size in MAPS]
    loaded = SimpleNamespace(name="fake", target_layer="features", spec=SimpleNamespace(
        localize_method="gradcam", localize_threshold=0.7))
    monkeypatch.setattr(calibrate_module, "explain_pairs", lambda *_a, **_k: [r.copy() for r in raws])
    for t in sorted({t for raw, size in MAPS for t in _thresholds_for(raw, size)}):
        t = round(t, 6)                                          # calibrate's threshold grid is 6 decimals
        pairs = [calibrate_module.Pair(i, 0, "x", [boxes_from_map(raw, size, threshold=t)[0].as_list()])
                 for i, (raw, size) in enumerate(MAPS)]
        monkeypatch.setattr(calibrate_module, "load_pairs",
                            lambda *_a, _p=pairs, **_k: (torch.zeros(len(raws), 1, 1, 1), sizes, _p, ["f"] * len(raws)))
        report = calibrate_module.calibrate(tmp_path, loaded=loaded, methods=["gradcam"], thresholds=[t])
        result = report["methods"]["gradcam"]
        assert result["box_accuracy"] == [1.0] and result["mean_iou"] == 1.0, (t, result)
