"""Synthetic shapes generator: determinism, exact boxes, on-disk format."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from service.demo.data import (
    CLASSES,
    IMAGE_SIZE,
    DatasetFormatError,
    SyntheticShapes,
    generate_dataset,
    generate_sample,
    generate_sample_with_masks,
    labels_vector,
    load_dataset,
    mask_box,
    sample_rng,
)
from service.demo.model import DEMO_MEAN, DEMO_STD

_N_CHECK = 150  # samples for the per-sample property checks


def _samples(seed: int, n: int) -> list[tuple[Image.Image, list[dict], list[np.ndarray]]]:
    return [generate_sample_with_masks(sample_rng(seed, i)) for i in range(n)]


@pytest.fixture(scope="module")
def samples() -> list[tuple[Image.Image, list[dict], list[np.ndarray]]]:
    return _samples(11, _N_CHECK)


def test_same_seed_same_sample() -> None:
    img_a, objs_a = generate_sample(np.random.default_rng(123))
    img_b, objs_b = generate_sample(np.random.default_rng(123))
    assert objs_a == objs_b
    assert np.array_equal(np.asarray(img_a), np.asarray(img_b))


def test_different_seeds_differ() -> None:
    img_a, _ = generate_sample(sample_rng(0, 0))
    img_b, _ = generate_sample(sample_rng(0, 1))
    img_c, _ = generate_sample(sample_rng(1, 0))
    assert not np.array_equal(np.asarray(img_a), np.asarray(img_b))
    assert not np.array_equal(np.asarray(img_a), np.asarray(img_c))


def test_sample_depends_only_on_seed_and_index() -> None:
    # Drawing other samples first must not change sample (5, 3).
    for i in range(3):
        generate_sample(sample_rng(5, i))
    late = np.asarray(generate_sample(sample_rng(5, 3))[0])
    fresh = np.asarray(generate_sample(sample_rng(5, 3))[0])
    assert np.array_equal(late, fresh)


def test_image_format(samples) -> None:
    for img, _, _ in samples[:10]:
        assert img.mode == "RGB"
        assert img.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_object_count_and_unique_classes(samples) -> None:
    counts = Counter()
    for _, objects, masks in samples:
        assert 1 <= len(objects) <= 3
        assert len(masks) == len(objects)
        names = [o["class"] for o in objects]
        assert len(set(names)) == len(names), "a class may appear at most once per image"
        assert set(names) <= set(CLASSES)
        counts[len(objects)] += 1
    assert set(counts) == {1, 2, 3}, counts


def test_every_class_is_common() -> None:
    seen = Counter(o["class"] for _, objs in (generate_sample(sample_rng(12, i)) for i in range(300)) for o in objs)
    for cls in CLASSES:
        # 300 images x ~2 objects / 6 classes ~ 100 each; 50 catches a broken class.
        assert seen[cls] >= 50, seen


def test_boxes_are_inside_and_ordered(samples) -> None:
    for _, objects, _ in samples:
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            assert all(isinstance(v, int) for v in obj["box"])
            assert 0 <= x0 < x1 <= IMAGE_SIZE
            assert 0 <= y0 < y1 <= IMAGE_SIZE


def test_boxes_are_tight_around_masks(samples) -> None:
    for _, objects, masks in samples:
        for obj, mask in zip(objects, masks, strict=True):
            x0, y0, x1, y1 = obj["box"]
            inside = np.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            assert not (mask & ~inside).any(), "mask pixels outside the box"
            # Exclusive x1/y1: the last row/column of the box holds mask pixels.
            assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
            assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()


def test_objects_do_not_overlap(samples) -> None:
    for _, _, masks in samples:
        total = np.sum(masks, axis=0)
        assert total.max(initial=0) <= 1


def test_objects_are_plain_visible(samples) -> None:
    # Every object must stand out from the background right around it: the
    # luminance gap between the object and a thin ring outside it is large.
    luma = np.array([0.299, 0.587, 0.114])
    for img, _, masks in samples[:60]:
        pix = np.asarray(img, dtype=np.float64) / 255.0 @ luma
        for mask in masks:
            ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
            ring &= ~np.any(masks, axis=0)
            assert abs(pix[mask].mean() - pix[ring].mean()) > 0.15


def test_objects_are_reasonably_sized(samples) -> None:
    for _, objects, masks in samples:
        for obj, mask in zip(objects, masks, strict=True):
            x0, y0, x1, y1 = obj["box"]
            assert max(x1 - x0, y1 - y0) >= 12
            assert mask.sum() >= 80


def test_generate_sample_matches_masked_variant() -> None:
    img_a, objs_a = generate_sample(sample_rng(4, 2))
    img_b, objs_b, _ = generate_sample_with_masks(sample_rng(4, 2))
    assert objs_a == objs_b
    assert np.array_equal(np.asarray(img_a), np.asarray(img_b))


def test_mask_box_exclusive_end() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == [3, 2, 9, 5]
    with pytest.raises(ValueError):
        mask_box(np.zeros((4, 4), dtype=bool))


def test_generate_and_load_round_trip(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "ds", n=6, seed=21)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(6)]
    raw = json.loads((out / "labels.json").read_text())
    assert set(raw) == {"classes", "images"}
    assert raw["classes"] == list(CLASSES)
    assert [entry["file"] for entry in raw["images"]] == [f"{i:05d}.png" for i in range(6)]

    classes, entries = load_dataset(out)
    assert classes == list(CLASSES)
    assert len(entries) == 6
    for i, (path, objects) in enumerate(entries):
        expected_img, expected_objects = generate_sample(sample_rng(21, i))
        assert path == out / f"{i:05d}.png"
        assert objects == expected_objects
        # PNG is lossless: the file holds exactly the generated pixels.
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(expected_img))


def _write_labels(directory: Path, payload: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = payload if isinstance(payload, str) else json.dumps(payload)
    (directory / "labels.json").write_text(text)
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE)).save(directory / "00000.png")
    return directory


def _one(objects: object) -> dict:
    return {"classes": list(CLASSES), "images": [{"file": "00000.png", "objects": objects}]}


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "top level"),
        ({"classes": list(CLASSES)}, "top level"),
        ({"classes": "circle", "images": []}, "'classes'"),
        ({"classes": list(CLASSES), "images": {}}, "'images' must be a list"),
        ({"classes": list(CLASSES), "images": [{"objects": []}]}, "images[0]"),
        (_one([{"class": "hexagon", "box": [0, 0, 5, 5]}]), "unknown class 'hexagon'"),
        (_one([{"class": "circle", "box": [0, 0, 5]}]), "4 integers"),
        (_one([{"class": "circle", "box": [0, 0, 5.5, 5]}]), "4 integers"),
        (_one([{"class": "circle", "box": [6, 0, 5, 5]}]), "x0 < x1"),
        (_one([{"box": [0, 0, 5, 5]}]), "objects[0]"),
        (_one([{"class": "circle", "colour": "red"}]), "objects[0]"),
    ],
)
def test_malformed_labels_give_clear_error(tmp_path: Path, payload: object, fragment: str) -> None:
    directory = _write_labels(tmp_path / "bad", payload)
    with pytest.raises(DatasetFormatError) as info:
        load_dataset(directory)
    assert fragment in str(info.value)
    assert "labels.json" in str(info.value)


def test_objects_without_box_are_image_level_labels(tmp_path: Path) -> None:
    directory = _write_labels(tmp_path / "ds", _one([{"class": "circle"}, {"class": "star", "box": [1, 2, 3, 4]}]))
    _, entries = load_dataset(directory)
    assert entries[0][1] == [{"class": "circle"}, {"class": "star", "box": [1, 2, 3, 4]}]


def test_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="not found"):
        load_dataset(tmp_path)


def test_missing_image_file(tmp_path: Path) -> None:
    directory = _write_labels(tmp_path / "ds", _one([]))
    (directory / "00000.png").unlink()
    with pytest.raises(FileNotFoundError, match="00000.png"):
        load_dataset(directory)


def test_torch_dataset_items() -> None:
    ds = SyntheticShapes(5, seed=8)
    raw = SyntheticShapes(5, seed=8, normalize=False)
    assert len(ds) == 5
    x, y = ds[3]
    xr, yr = raw[3]
    assert x.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and x.dtype == torch.float32
    assert y.shape == (len(CLASSES),) and y.dtype == torch.float32
    assert float(xr.min()) >= 0.0 and float(xr.max()) <= 1.0
    mean = torch.tensor(DEMO_MEAN)[:, None, None]
    std = torch.tensor(DEMO_STD)[:, None, None]
    assert torch.allclose(x, (xr - mean) / std, atol=1e-5)

    img, objects = generate_sample(sample_rng(8, 3))
    assert torch.equal(y, torch.from_numpy(labels_vector(objects)))
    assert torch.allclose(xr, torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
    assert y.sum() == len(objects)
    with pytest.raises(IndexError):
        ds[5]
