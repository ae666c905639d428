"""The client and its CLI on segmentation models, against the live server (shipped registry: ``demo-seg``):
``region`` on explain/localize in every form (name, box, mask as bytes / array / PIL), ``outputs=labelmap`` on
predict, and the typed segmentation members (pixel_fraction, mean_probability, mask, labelmap, mask_boxes)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaas_client import AsyncClient, Client, InvalidInput, MaskBox
from xaas_client.cli import main

SEG = "demo-seg"
BOX = (16, 20, 80, 90)


@pytest.fixture(scope="module")
def shapes() -> tuple[bytes, list[dict], list[np.ndarray]]:
    """A demo image with a circle, a square and a ring (classes 1, 2, 5 of demo-seg), and their exact masks."""
    from service.demo.data import generate_sample_with_masks, sample_rng

    image, objects, masks = generate_sample_with_masks(sample_rng(5150, 9))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), objects, masks


@pytest.fixture(scope="module")
def xaas(server: str):
    with Client(server) as client:
        yield client


def _box_mask() -> np.ndarray:
    mask = np.zeros((128, 128), dtype=bool)
    mask[BOX[1]:BOX[3], BOX[0]:BOX[2]] = True
    return mask


def _iou(a, b) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_predict_segmentation_members_and_labelmap(xaas: Client, shapes):
    data, objects, masks = shapes
    result = xaas.predict(data, model=SEG, outputs=("mask", "labelmap"))
    assert result.task == "segmentation"
    labelmap = result.labelmap_array()
    assert labelmap.shape == (128, 128) and labelmap.dtype == np.uint8
    by_index = {p.index: p for p in result.predictions}
    assert set(by_index) == set(range(7))
    for p in result.predictions:
        assert p.pixel_fraction == pytest.approx(float((labelmap == p.index).mean()), abs=1e-6)
        assert np.array_equal(p.mask_array(), labelmap == p.index)
        assert 0.0 <= p.mean_probability <= 1.0
    circle = by_index[1]
    assert circle.pixel_fraction == pytest.approx(masks[0].mean(), abs=0.01)
    assert circle.mean_probability > 0.9
    without = xaas.predict(data, model=SEG)
    assert without.labelmap is None and without.predictions[0].mask is not None
    with pytest.raises(ValueError, match="labelmap"):
        without.labelmap_png()


def test_explain_region_forms_agree(xaas: Client, shapes, tmp_path: Path):
    """A box tuple, its string, the same pixels as a bool array, PNG bytes, a PNG file's Path or a PIL image: one
    map; 'all' another."""
    data, _, _ = shapes
    mask = _box_mask()
    png = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(png, format="PNG")
    (tmp_path / "roi.png").write_bytes(png.getvalue())
    forms = [BOX, list(BOX), "16,20,80,90", mask, png.getvalue(), tmp_path / "roi.png",
             Image.open(io.BytesIO(png.getvalue()))]
    maps = [xaas.explain("gradcam", data, model=SEG, target=1, region=r, outputs="raw").explanations[0].raw_array()
            for r in forms]
    assert float(maps[0].max()) > 0
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], rtol=1e-5, atol=1e-7)
    everywhere = xaas.explain("gradcam", data, model=SEG, target=1, region="all", outputs="raw")
    assert not np.allclose(everywhere.explanations[0].raw_array(), maps[0])


def test_region_errors_are_typed(xaas: Client, shapes):
    data, _, _ = shapes
    with pytest.raises(InvalidInput) as caught:
        xaas.explain("gradcam", data, model=SEG, target=1, region=(0, 0, 500, 20))
    assert any(e["field"] == "region" for e in caught.value.errors)
    with pytest.raises(ValueError, match="x0, y0, x1, y1"):
        xaas.explain("gradcam", data, model=SEG, target=1, region=(1, 2, 3))
    with pytest.raises(InvalidInput, match="only segmentation models"):
        xaas.explain("gradcam", data, target=1, region="all")   # the default model is a classifier


def test_localize_mask_boxes_are_typed(xaas: Client, shapes):
    data, objects, masks = shapes
    result = xaas.localize(data, model=SEG, target=[1, 2, 5], min_area=20, region="predicted")
    assert {b.index for b in result.boxes} == {1, 2, 5}
    assert result.mask_boxes and all(isinstance(m, MaskBox) for m in result.mask_boxes)
    for cls, mask in zip((1, 2, 5), masks):
        ys, xs = np.nonzero(mask)
        truth = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        mine = max((m for m in result.mask_boxes if m.index == cls), key=lambda m: m.area)
        assert _iou(mine.box, truth) >= 0.5, (mine, truth)
        assert mine.width == mine.box[2] - mine.box[0] and mine.mean_probability > 0.5
    classifier = xaas.localize(data)
    assert classifier.mask_boxes is None


def test_async_client_takes_regions(server: str, shapes):
    import asyncio

    data, _, _ = shapes

    async def go():
        async with AsyncClient(server) as client:
            return await client.localize(data, model=SEG, target=1, region=BOX)

    result = asyncio.run(go())
    assert result.mask_boxes is not None and result.boxes


def test_cli_region_flags_and_labelmap(server: str, shapes, tmp_path: Path, capsys):
    data, _, _ = shapes
    image = tmp_path / "shapes.png"
    image.write_bytes(data)
    mask_file = tmp_path / "mask.png"
    Image.fromarray(_box_mask().astype(np.uint8) * 255).save(mask_file)

    assert main(["localize", str(image), "--server", server, "--model", SEG, "--target", "circle",
                 "--region", "all"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["index", "label", "from", "score", "x0", "y0", "x1", "y1"]
    assert any(line.split()[2] == "mask" for line in out[2:]) and any(line.split()[2] == "heatmap" for line in out[2:])

    raws = []
    for region in ("16,20,80,90", f"mask:{mask_file}"):
        assert main(["explain", str(image), "--server", server, "--model", SEG, "--target", "1", "--region", region,
                     "--json"]) == 0
        raws.append(json.loads(capsys.readouterr().out)["explanations"][0]["heatmap"])
    assert raws[0] == raws[1]

    labelmap = tmp_path / "labels.png"
    assert main(["predict", str(image), "--server", server, "--model", SEG, "--labelmap", str(labelmap)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["index", "label", "score", "pixels", "mean", "p"]
    assert np.asarray(Image.open(labelmap)).max() <= 6

    assert main(["explain", str(image), "--server", server, "--model", SEG, "--target", "1",
                 "--region", "0,0,999,5"]) == 1
    assert "region" in capsys.readouterr().err
