"""Attention-MIL models over HTTP: the registry's task mil (tiling fields, config errors), /predict on the bag,
/explain/attention-mil at the original size equal to the engine's map, /localize on it, the probe refusing the image
methods with a reason, and the patch limit answered 413 from the header."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.errors import ConfigError
from service.registry import read_registry_file
from tests.support import decode_png, decode_raw, make_client, png_bytes, wait_ready

PROBLEM = "application/problem+json"
ENTRY = ("models:\n"
         "  - name: mil\n"
         "    source: python:tests.engine.test_engine_mil:TinyMIL\n"
         "    task: mil\n"
         "    labels: [a, b, c]\n"
         "    patch_size: 32\n"
         "    stride: 16\n"
         "    max_patches: 64\n")


@pytest.fixture(scope="module")
def mil_client(tmp_path_factory):
    path = tmp_path_factory.mktemp("mil") / "models.yaml"
    path.write_text(ENTRY)
    with make_client(models=str(path)) as c:
        wait_ready(c, timeout=120)
        yield c


def _image(h: int = 80, w: int = 112, seed: int = 0) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _post(client, path, data, **fields):
    return client.post(path, files={"image": ("x.png", data, "image/png")}, data={"model": "mil", **fields})


def _engine(data: bytes, target: int, weights: str = "attention"):
    from service.engine import get_method
    from service.engine.targets import ClassLogit, TargetRequest
    from service.imaging import decode_image, to_bag
    from tests.engine.test_engine_mil import TinyMIL

    bag = to_bag(decode_image(data), patch=32, stride=16, channels=3, mean=[0.485, 0.456, 0.406],
                 std=[0.229, 0.224, 0.225])
    model = TinyMIL().eval().requires_grad_(False)
    return get_method("attention-mil").explain_bags(model, bag.patches[None], [TargetRequest((ClassLogit(target),))],
                                                    tiling=bag.tiling, weights=weights), bag


def test_models_shows_the_tiling_and_the_probe_offers_attention_mil_only(mil_client, client):
    body = mil_client.get("/models/mil").json()
    assert body["task"] == "mil" and (body["patch_size"], body["stride"], body["max_patches"]) == (32, 16, 64)
    assert body["methods"] == ["attention-mil"]
    assert "attention-mil" in body["refused"]["gradcam"]
    resp = _post(mil_client, "/explain/gradcam", _image())
    assert resp.status_code == 422 and resp.headers["content-type"].startswith(PROBLEM)
    assert "bags of patches" in resp.json()["detail"]
    demo = client.get("/models/demo").json()
    assert "attention-mil" not in demo["methods"]


def test_predict_answers_the_bag_classes(mil_client):
    data = _image()
    resp = _post(mil_client, "/predict", data, top_k="3")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["task"] == "mil" and body["image"] == {"width": 112, "height": 80}
    ex, _ = _engine(data, 0)
    scores = {p["index"]: p["score"] for p in body["predictions"]}
    assert abs(sum(scores.values()) - 1) < 1e-5
    assert abs(scores[0] - float(ex.scores[0])) < 1e-5


def test_explain_attention_mil_is_the_engine_map_at_the_original_size(mil_client):
    data = _image(seed=1)
    for weights in ("attention", "confidence"):
        resp = _post(mil_client, "/explain/attention-mil", data, target="b", outputs=["heatmap", "raw"],
                     weights=weights)
        assert resp.status_code == 200, resp.text
        item = resp.json()["explanations"][0]
        ex, bag = _engine(data, 1, weights)
        raw = decode_raw(item["raw"])
        assert raw.shape == bag.tiling.cells == (5, 7)
        np.testing.assert_allclose(raw, ex.maps[0].numpy(), rtol=1e-5, atol=1e-7)
        assert decode_png(item["heatmap"]).shape[:2] == (80, 112)
        assert item["index"] == 1 and abs(item["score"] - float(ex.scores[0])) < 1e-5


def test_localize_boxes_the_attention(mil_client):
    data = _image(seed=2)
    resp = _post(mil_client, "/localize", data, method="attention-mil", target="0", threshold="0.5")
    assert resp.status_code == 200, resp.text
    boxes = resp.json()["boxes"]
    assert boxes and all(0 <= b["box"][0] < b["box"][2] <= 112 and 0 <= b["box"][1] < b["box"][3] <= 80
                         for b in boxes)


def test_too_many_patches_is_413_naming_the_limit(mil_client):
    resp = _post(mil_client, "/predict", _image(200, 200))   # 12 x 12 = 144 patches > 64
    assert resp.status_code == 413 and resp.headers["content-type"].startswith(PROBLEM)
    assert "max_patches" in resp.json()["detail"] and "144" in resp.json()["detail"]


def test_bad_weights_option_and_small_image(mil_client):
    resp = _post(mil_client, "/explain/attention-mil", _image(), weights="gradients")
    assert resp.status_code == 422 and "weights" in resp.text
    resp = _post(mil_client, "/explain/attention-mil", _image(20, 24), outputs=["raw"])   # one padded patch
    assert resp.status_code == 200, resp.text
    assert decode_raw(resp.json()["explanations"][0]["raw"]).shape == (2, 2)


@pytest.mark.parametrize("extra, message", [
    ("", "patch_size"),
    ("    patch_size: 32\n    stride: 12\n", "must divide"),
    ("    patch_size: 32\n    input_size: [64, 64]\n", "input_size"),
])
def test_config_errors_name_the_field(tmp_path, extra, message):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: m\n    source: python:x:y\n    task: mil\n" + extra)
    with pytest.raises(ConfigError, match=message):
        read_registry_file(path)
    path.write_text("models:\n  - name: m\n    source: python:x:y\n    patch_size: 32\n")
    with pytest.raises(ConfigError, match="task: mil"):
        read_registry_file(path)


def test_a_model_off_the_protocol_fails_at_load(tmp_path):
    from service.registry import ModelRegistry

    path = tmp_path / "models.yaml"
    path.write_text(ENTRY.replace("tests.engine.test_engine_mil:TinyMIL", "tests.support:blind_net"))
    with pytest.raises(ConfigError, match="mil model"):
        ModelRegistry.from_file(path).load_all()
    assert torch.is_tensor(torch.zeros(1))


# --------------------------------------------------------------------------------------------------- mil-gradcam


def _lesion_png(size: int = 128, index: int = 1) -> tuple[bytes, np.ndarray]:
    from service.demo.mil import lesion_image

    pixels, mask, _ = lesion_image(4242, index, size, label=1)
    return png_bytes(pixels), mask


def _demo_mil_gradcam(data: bytes, layer: str, target: int = 1):
    from service.demo.mil import MEAN, PATCH, STD, load_demo_mil
    from service.engine import get_method
    from service.engine.targets import ClassLogit, TargetRequest
    from service.imaging import decode_image, to_bag

    bag = to_bag(decode_image(data), patch=PATCH, stride=PATCH, channels=3, mean=list(MEAN), std=list(STD))
    model, _ = load_demo_mil()
    return get_method("mil-gradcam").explain_bags(model, bag.patches[None], [TargetRequest((ClassLogit(target),))],
                                                  tiling=bag.tiling, layer=layer)


def test_mil_gradcam_on_the_demo_is_the_engine_map_at_the_image_size(client):
    info = client.get("/models/demo-mil").json()
    assert "mil-gradcam" in info["methods"] and info["target_layer"] == "encoder.b4"
    data, _ = _lesion_png(128)
    for layer, side in ((None, 16), ("encoder.b3", 32)):
        fields = {"model": "demo-mil", "target": "lesion", "outputs": ["heatmap", "raw"], **({"layer": layer} if layer
                                                                                             else {})}
        resp = client.post("/explain/mil-gradcam", files={"image": ("x.png", data, "image/png")}, data=fields)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["layer"] == (layer or "encoder.b4")
        item = body["explanations"][0]
        raw = decode_raw(item["raw"])
        ex = _demo_mil_gradcam(data, layer or "encoder.b4")
        assert raw.shape == (side, side)   # 128 px in 32-px patches of 4x4 (b4) or 8x8 (b3) cells
        np.testing.assert_allclose(raw, ex.maps[0].numpy(), rtol=1e-4, atol=1e-6 * float(ex.maps.max()))
        assert decode_png(item["heatmap"]).shape[:2] == (128, 128)
        assert item["index"] == 1 and abs(item["score"] - float(ex.scores[0])) < 1e-5


def test_mil_gradcam_layer_errors_and_refusals(client, mil_client):
    data, _ = _lesion_png(64)
    resp = client.post("/explain/mil-gradcam", files={"image": ("x.png", data, "image/png")},
                       data={"model": "demo-mil", "layer": "head"})
    assert resp.status_code == 422 and resp.headers["content-type"].startswith(PROBLEM)
    assert "encoder.b4" in resp.json()["detail"] and resp.json()["errors"][0]["field"] == "layer"
    resp = client.post("/explain/mil-gradcam", files={"image": ("x.png", data, "image/png")}, data={"model": "demo"})
    assert resp.status_code == 422 and "mil models" in resp.json()["detail"]
    assert "mil-gradcam" not in client.get("/models/demo").json()["methods"]
    tiny = mil_client.get("/models/mil").json()   # a mean-colour encoder: no per-patch map
    assert "per-patch map" in tiny["refused"]["mil-gradcam"] and tiny["target_layer"] is None
    resp = _post(mil_client, "/explain/mil-gradcam", _image())
    assert resp.status_code == 422 and "per-patch map" in resp.json()["detail"]


def test_a_mil_target_layer_must_be_a_per_patch_map(tmp_path):
    from service.registry import ModelRegistry

    path = tmp_path / "models.yaml"
    path.write_text(ENTRY + "    target_layer: enc\n")   # TinyMIL's Linear on mean colours: [B, N, 8], no map
    with pytest.raises(ConfigError, match="target_layer"):
        ModelRegistry.from_file(path).load_all()
