"""Object masks in audit labels (``"mask": "masks/00000_0.png"``): the shares and the pointing game against a hand
computation, ``xaas demo-data --masks`` writing the exact masks, a whole audit on known maps measured on the masks
(ring and cross: a mask smaller than its box), mixed and partial sets, the calibrate/evaluate boxes derived from a
mask, the HTML outline, and every bad mask an error naming its file."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from service.audit import AuditData, AuditRun, map_shares
from service.calibrate import load_pairs, parse_method
from service.demo.data import CLASSES, DatasetFormatError, generate_dataset, mask_box
from service.demo.model import DEMO_MEAN, DEMO_STD
from service.errors import ConfigError, InvalidMask
from service.quality import POINTING_TOLERANCE, pointing_hit, pointing_in_mask, unit_map

#: The model as load_pairs and the audit's report see it (no network needed: the maps are given).
FAKE = SimpleNamespace(name="fake", labels=list(CLASSES),
                       spec=SimpleNamespace(input_size=(32, 32), channels=3, mean=DEMO_MEAN, std=DEMO_STD))


def test_mask_shares_and_pointing_equal_a_hand_computation():
    unit = np.zeros((10, 20), np.float32)
    unit[0, 0] = 4.0
    unit[5, 10] = 2.0          # on the mask
    unit[5, 12] = 1.0          # in the box, off the mask
    unit[9, 19] = 1.0
    mask = np.zeros((10, 20), bool)
    mask[4:7, 9:11] = True
    s = map_shares(unit, [[8, 4, 13, 7]], border=0.1, mask=mask)
    assert s["in_object"] == pytest.approx(2 / 8) and s["background"] == pytest.approx(6 / 8)
    assert s["object_area"] == pytest.approx(6 / 200)
    box = map_shares(unit, [[8, 4, 13, 7]], border=0.1)
    assert box["in_object"] == pytest.approx(3 / 8) and box["object_area"] == pytest.approx(15 / 200)
    assert map_shares(unit, None, mask=mask).keys() == map_shares(unit, None).keys()     # boxless ignores masks
    peak = np.zeros((10, 20), np.float32)
    peak[5, 12] = 1.0                                        # 2 px right of the mask
    assert pointing_in_mask(peak, mask, POINTING_TOLERANCE) and not pointing_in_mask(peak, mask)
    peak = np.roll(peak, 1, axis=1)                          # 3 px: a miss
    assert not pointing_in_mask(peak, mask, POINTING_TOLERANCE)


def test_a_box_mask_points_exactly_as_its_box():
    rng = np.random.default_rng(0)
    for _ in range(300):
        x0, y0 = rng.integers(0, 14, 2)
        x1, y1 = x0 + rng.integers(1, 6), y0 + rng.integers(1, 6)
        mask = np.zeros((16, 16), bool)
        mask[y0:y1, x0:x1] = True
        unit = rng.random((16, 16)) ** 8
        assert pointing_in_mask(unit, mask, 2) == pointing_hit(unit, [[x0, y0, x1, y1]], 2)


@pytest.fixture(scope="module")
def masked(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("masked"), 8, seed=5150, masks=True)


def _labels(folder: Path) -> dict:
    return json.loads((folder / "labels.json").read_text())


def _copy(folder: Path, out: Path, edit=None) -> Path:
    shutil.copytree(folder, out)
    if edit is not None:
        labels = _labels(out)
        edit(labels)
        (out / "labels.json").write_text(json.dumps(labels))
    return out


def test_demo_data_masks_are_exact_and_the_images_unchanged(masked, tmp_path):
    plain = generate_dataset(tmp_path / "plain", 8, seed=5150)
    for item, twin in zip(_labels(masked)["images"], _labels(plain)["images"]):
        assert [{k: v for k, v in o.items() if k != "mask"} for o in item["objects"]] == twin["objects"]
        assert (masked / item["file"]).read_bytes() == (plain / item["file"]).read_bytes()
        for obj in item["objects"]:
            mask = np.asarray(Image.open(masked / obj["mask"]))
            assert mask.shape == (128, 128) and set(np.unique(mask)) == {0, 255}
            assert mask_box(mask > 0) == obj["box"]


def _run(folder: Path, raw: list[np.ndarray] | None = None, **kwargs) -> tuple[AuditRun, dict]:
    inputs, sizes, pairs, files = load_pairs(folder, FAKE, need_boxes=False, keep_masks=True)
    run = AuditRun(FAKE, parse_method("gradcam"), AuditData(inputs, sizes, pairs, files,
                                                            lambda n: (folder / n).read_bytes(), str(folder)),
                   **kwargs)
    rng = np.random.default_rng(7)
    run.raw = raw if raw is not None else [rng.random((16, 16)).astype(np.float32) for _ in pairs]
    run.images_done = run.total
    return run, run.report()


def test_audit_measures_the_masks(masked, tmp_path):
    run, report = _run(masked)
    assert report["mode"] == "boxes"
    labels = _labels(masked)
    expected: dict[str, list[tuple[float, float]]] = {}
    for pair, raw in zip(run.data.pairs, run.raw):
        unit = unit_map(raw, run.data.sizes[pair.image])
        objs = [o for o in labels["images"][pair.image]["objects"] if o["class"] == pair.label]
        mask = np.logical_or.reduce([np.asarray(Image.open(masked / o["mask"])) > 0 for o in objs])
        expected.setdefault(pair.label, []).append((unit[mask].sum() / unit.sum(), mask.mean()))
    assert set(report["classes"]) == set(expected)
    for label, values in expected.items():
        c = report["classes"][label]
        assert c["located_by"] == "mask"
        assert c["in_object"] == pytest.approx(np.mean([v[0] for v in values]), abs=1e-4)
        assert c["object_area"] == pytest.approx(np.mean([v[1] for v in values]), abs=1e-4)
    # the same maps against the boxes only: a mask lies within its tight box, so never more mass on it
    boxes = _copy(masked, tmp_path / "boxes", lambda lab: [o.pop("mask") for i in lab["images"] for o in i["objects"]])
    _, by_box = _run(boxes, run.raw)
    for label, c in report["classes"].items():
        b = by_box["classes"][label]
        assert b["located_by"] == "box" and b["in_object"] >= c["in_object"] - 1e-9
        if label in ("ring", "cross"):                        # hollow / thin shapes: much less area than the box
            assert c["object_area"] < 0.8 * b["object_area"], (label, c, b)


def test_mixed_partial_and_mask_only_objects(masked, tmp_path):
    labels = _labels(masked)
    objects = [o for item in labels["images"] for o in item["objects"]]
    cls = max(CLASSES, key=lambda c: sum(o["class"] == c for o in objects))       # a class in several images
    first = next(o for o in objects if o["class"] == cls)

    def mixed(lab):      # one object of the class loses its mask, another (if any) its box
        for item in lab["images"]:
            for o in item["objects"]:
                if o["class"] == cls:
                    if o["mask"] == first["mask"]:
                        del o["mask"]
                    else:
                        del o["box"]
    run, report = _run(_copy(masked, tmp_path / "mixed", mixed))
    assert report["classes"][cls]["located_by"] == "mixed"
    assert all(c["located_by"] == "mask" for k, c in report["classes"].items() if k != cls)
    mask_only = [p for p in run.data.pairs if p.label == cls and p.boxes != [first["box"]]]
    assert mask_only
    for p in mask_only:        # calibrate/evaluate: a mask-only object's box is its mask's tight box
        objs = [o for o in labels["images"][p.image]["objects"] if o["class"] == cls]
        assert p.boxes == [o["box"] for o in objs]

    def partial(lab):    # an object with neither: the pair is not located, the audit boxless
        lab["images"][0]["objects"][0] = {"class": lab["images"][0]["objects"][0]["class"]}
    _, report = _run(_copy(masked, tmp_path / "partial", partial))
    assert report["mode"] == "boxless"


def test_html_outlines_the_mask_of_a_flagged_example(masked):
    from service.audit_report import _example_overlay

    run, _ = _run(masked)
    pair = next(p for p in run.data.pairs if p.label == "ring")
    image = (masked / run.data.files[pair.image]).read_bytes()
    raw = np.zeros((16, 16), np.float32)
    with_mask = np.asarray(Image.open(io.BytesIO(_example_overlay(image, raw, pair.boxes, pair.region))))
    with_box = np.asarray(Image.open(io.BytesIO(_example_overlay(image, raw, pair.boxes))))
    mask = pair.region.full(128, 128)
    white = (with_mask == 255).all(axis=2) & ~(with_box == 255).all(axis=2)
    assert white.any() and mask[white].all()                  # the outline lies on the mask
    x0, y0, x1, y1 = pair.boxes[0]
    assert (with_box[y0, x0:x1] == 255).all() and not (with_mask[y0, x0:x1] == 255).all()


def _bad(masked: Path, tmp_path: Path, case: str) -> Path:
    out = _copy(masked, tmp_path / case)
    labels = _labels(out)
    obj = labels["images"][1]["objects"][0]
    if case == "missing":
        obj["mask"] = "masks/nope.png"
    elif case == "escape":
        obj["mask"] = "../x.png"
    elif case == "absolute":
        obj["mask"] = "/etc/passwd"
    elif case == "not a string":
        obj["mask"] = 7
    elif case == "wrong size":
        Image.new("L", (64, 128), 255).save(out / obj["mask"])
    elif case == "undecodable":
        (out / obj["mask"]).write_bytes(b"\x89PNG not really")
    elif case == "empty":
        Image.new("L", (128, 128), 0).save(out / obj["mask"])
    (out / "labels.json").write_text(json.dumps(labels))
    return out


@pytest.mark.parametrize("case, error, fragment", [
    ("missing", InvalidMask, "masks/nope.png"), ("wrong size", InvalidMask, "64×128"),
    ("undecodable", InvalidMask, "00001_0.png"), ("empty", InvalidMask, "no object pixel"),
    ("escape", DatasetFormatError, "../x.png"), ("absolute", DatasetFormatError, "/etc/passwd"),
    ("not a string", DatasetFormatError, "7"),
])
def test_bad_masks_are_errors_naming_the_file(masked, tmp_path, case, error, fragment):
    folder = _bad(masked, tmp_path, case)
    with pytest.raises(error) as info:
        load_pairs(folder, FAKE, need_boxes=False, keep_masks=True)
    message = str(info.value)
    assert fragment in message and ("images[1]" in message or "00001.png" in message), message
    if error is InvalidMask:
        assert isinstance(info.value, ConfigError) and "00001.png" in message
    with pytest.raises(error):                                # calibrate and evaluate check the masks too
        load_pairs(folder, FAKE)


def test_the_cli_reports_a_bad_mask(masked, tmp_path, capsys):
    from service.cli import main

    assert main(["audit", str(_bad(masked, tmp_path, "wrong size")), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "00001.png" in err and "masks/00001_0.png" in err and "not the image's 128×128" in err
