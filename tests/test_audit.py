"""``xaas audit``: the mass shares against a hand computation, the flag rules, the agreement statistics of the boxless
mode on synthetic maps, and the demo pair — the shipped model is not flagged on the biased set, the model trained on
it (``xaas train-demo --bias``) is flagged on its marker class, with boxes and boxless — in JSON and in a
self-contained HTML page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from service.audit import BORDER_FLAG, FIXED_FLAG, POINTING_FLAG, _agreement, _peak_cluster, class_flags, map_shares
from service.cli import main
from service.demo.data import BIAS_CLASS, generate_dataset

BIASED_WEIGHTS = Path(__file__).resolve().parents[1] / "service" / "demo" / "demo_cnn_bias.safetensors"


def test_shares_equal_a_hand_computation():
    unit = np.zeros((10, 20), np.float32)
    unit[0, 0] = 4.0          # top-left corner: top and left bands
    unit[5, 10] = 2.0         # inside the box
    unit[9, 19] = 2.0         # bottom-right corner
    s = map_shares(unit, [[8, 4, 12, 7]], border=0.1)       # bands: 1 row, 2 columns
    assert s["in_object"] == pytest.approx(2 / 8) and s["background"] == pytest.approx(6 / 8)
    assert (s["top"], s["left"], s["bottom"], s["right"]) == pytest.approx((4 / 8, 4 / 8, 2 / 8, 2 / 8))
    assert s["object_area"] == pytest.approx(4 * 3 / 200)
    assert map_shares(np.zeros((4, 4)), [[0, 0, 2, 2]]) is None
    boxless = map_shares(unit, None, border=0.1)
    assert "in_object" not in boxless and boxless["top"] == pytest.approx(4 / 8)
    assert boxless["centre"] == pytest.approx(2 / 8)          # (5, 10) lies in no band


def _blob(y: int, x: int, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 18.0).astype(np.float32)


def test_agreement_separates_a_fixed_place_from_moving_objects():
    rng = np.random.default_rng(3)
    moving = {c: [_blob(*rng.integers(8, 56, 2)) for _ in range(12)] for c in ("a", "b", "c")}
    stats = _agreement(moving)
    for own, base in stats.values():
        assert abs(own - base) < 0.15                      # objects anywhere: own class ~ the other classes
    fixed = {**moving, "a": [_blob(5, 5) + 0.05 * _blob(*rng.integers(8, 56, 2)) for _ in range(12)]}
    own, base = _agreement(fixed)["a"]
    assert own > 0.95 and own - base > FIXED_FLAG
    assert _agreement({"a": [_blob(5, 5)]})["a"] == (None, None)       # one map, one class: undefined
    assert _peak_cluster([(0.05, 0.05)] * 9 + [(0.9, 0.9)]) == pytest.approx(0.9)


def test_flag_rules():
    calm = {"pointing": 0.9, "border": {"top": 0.1, "bottom": 0.1, "left": 0.05, "right": BORDER_FLAG}}
    assert class_flags(calm) == []
    biased = {"pointing": POINTING_FLAG - 0.01, "border": {"top": 0.4, "bottom": 0.0, "left": 0.31, "right": 0.0}}
    assert class_flags(biased) == ["outside", "border:top", "border:left"]
    boxless = {"border": calm["border"], "excess": FIXED_FLAG + 0.01}
    assert class_flags(boxless) == ["fixed-place"] and class_flags({**boxless, "excess": None}) == []


@pytest.fixture(scope="module")
def biased_folder(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("biased"), 24, seed=5150, bias=True)


def _run(folder: Path, out: Path, *extra: str) -> dict:
    assert main(["audit", str(folder), "--out", str(out), *extra]) == 0
    report = json.loads((out / "audit.json").read_text())
    page = (out / "audit.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)          # self-contained: nothing fetched
    assert set(report["classes"]) <= {"circle", "square", "triangle", "cross", "ring", "star"}
    return report


def test_shipped_model_is_not_flagged_on_the_biased_set(biased_folder, tmp_path, capsys):
    report = _run(biased_folder, tmp_path / "clean")
    assert report["flagged"] == [], report["classes"]
    star = report["classes"][BIAS_CLASS]
    assert star["pointing"] >= 0.8 and len(star["mean_map"]) == 64
    assert "flagged: none" in capsys.readouterr().out


@pytest.mark.skipif(not BIASED_WEIGHTS.exists(), reason="the biased demo weights are not built")
def test_biased_model_is_flagged_on_its_marker_class(biased_folder, tmp_path):
    report = _run(biased_folder, tmp_path / "biased", "--weights", str(BIASED_WEIGHTS))
    assert report["flagged"] == [BIAS_CLASS], report["classes"]
    star = report["classes"][BIAS_CLASS]
    assert "outside" in star["flags"] and {"border:top", "border:left"} & set(star["flags"])
    assert star["in_object"] < 0.1 and star["border"]["top"] + star["border"]["left"] > 0.5
    page = (tmp_path / "biased" / "audit.html").read_text()
    assert "flagged: outside" in page and page.count("data:image/png;base64,") > len(report["classes"])


def test_biased_set_marks_exactly_the_images_with_the_bias_class(biased_folder):
    from PIL import Image

    labels = json.loads((biased_folder / "labels.json").read_text())
    clean = generate_dataset(biased_folder.parent / "clean-twin", 24, seed=5150)
    for item in labels["images"]:
        px = np.asarray(Image.open(biased_folder / item["file"]).convert("RGB"))
        twin = np.asarray(Image.open(clean / item["file"]).convert("RGB"))
        has = any(o["class"] == BIAS_CLASS for o in item["objects"])
        assert (tuple(px[5, 5]) == (230, 30, 30)) is has
        outside = np.ones(px.shape[:2], bool)
        outside[2:12, 2:12] = False
        np.testing.assert_array_equal(px[outside], twin[outside])       # the same image besides the tag


def _without_boxes(folder: Path, out: Path) -> Path:
    """The folder's labels with every box left out (image-level labels), the images linked."""
    out.mkdir()
    labels = json.loads((folder / "labels.json").read_text())
    for item in labels["images"]:
        item["objects"] = [{"class": o["class"]} for o in item["objects"]]
        (out / item["file"]).symlink_to(folder / item["file"])
    (out / "labels.json").write_text(json.dumps(labels))
    return out


def test_boxless_shipped_model_is_not_flagged(biased_folder, tmp_path):
    report = _run(_without_boxes(biased_folder, tmp_path / "nobox"), tmp_path / "clean")   # boxless by itself
    assert report["mode"] == "boxless" and report["flagged"] == [], report["classes"]
    for c in report["classes"].values():
        assert "pointing" not in c and c["excess"] < FIXED_FLAG
        assert 0 < c["top5"] < 1 and 0 < c["entropy"] <= 1 and 0 < c["centre"] < 1


@pytest.mark.skipif(not BIASED_WEIGHTS.exists(), reason="the biased demo weights are not built")
def test_boxless_biased_model_is_flagged_fixed_place(biased_folder, tmp_path):
    report = _run(biased_folder, tmp_path / "biased", "--no-boxes", "--weights", str(BIASED_WEIGHTS))
    assert report["mode"] == "boxless" and report["flagged"] == [BIAS_CLASS], report["classes"]
    star = report["classes"][BIAS_CLASS]
    assert "fixed-place" in star["flags"] and star["agreement"] > 0.9 and star["peak_cluster"] >= 0.6
    others = [c for k, c in report["classes"].items() if k != BIAS_CLASS]
    assert star["top5"] > 2 * max(c["top5"] for c in others)            # the mean map is concentrated
    assert star["border"]["top"] + star["border"]["left"] > 0.4
    page = (tmp_path / "biased" / "audit.html").read_text()
    assert "fixed-place" in page and "agrees" in page
