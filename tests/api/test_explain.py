"""/explain and /localize over HTTP: outputs, targets, errors, and batching that never mixes answers."""

from __future__ import annotations

import base64
import io
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from service.engine import get_method, validate_params
from service.imaging import decode_image, to_model_input
from tests.support import decode_png, decode_raw, demo_png, make_client, wait_ready


def _post(client, method, data, **options):
    return client.post(f"/explain/{method}", files={"image": ("x.png", data)}, data=options)


def _engine_map(client, data, method, target, **params):
    """The same explanation computed by calling the engine directly on the same preprocessed tensor."""
    model = client.app.state.runtime.registry.get("demo")
    x = to_model_input(decode_image(data), input_size=model.spec.input_size, channels=3, mean=model.spec.mean,
                       std=model.spec.std)
    m = get_method(method)
    return m.explain(model.module, x[None], torch.tensor([target]), layer=model.target_layer if m.uses_layer else None,
                     task=model.task, input_range=model.input_range, **validate_params(m, params))[0].numpy()


def test_gradcam_heatmap_png_raw_and_overlay(client, demo_sample):
    data, objects = demo_sample
    cls = objects[0]["class"]
    r = _post(client, "gradcam", data, target=cls, outputs=["heatmap", "overlay", "raw"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "gradcam" and body["layer"] == client.get("/models/demo").json()["target_layer"]
    [e] = body["explanations"]
    assert e["label"] == cls and e["score"] > 0.5 and e["empty"] is False and e["nonfinite"] is False
    heat = decode_png(e["heatmap"])
    assert heat.shape == (128, 128) and heat.dtype == np.uint8 and heat.max() == 255
    overlay = decode_png(e["overlay"])
    assert overlay.shape == (128, 128, 3)
    raw = decode_raw(e["raw"])
    assert raw.shape == (16, 16)  # the demo's last conv map
    index = ["circle", "square", "triangle", "cross", "ring", "star"].index(cls)
    np.testing.assert_allclose(raw, _engine_map(client, data, "gradcam", index), rtol=1e-4, atol=1e-6)
    assert e["max"] == pytest.approx(float(raw.max()), rel=1e-6)


def test_heatmap_is_at_the_original_size_and_points_at_the_object(client, demo_sample):
    data, objects = demo_sample
    big = Image.open(io.BytesIO(data)).resize((256, 192))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    obj = objects[0]
    e = _post(client, "gradcam", buf.getvalue(), target=obj["class"]).json()["explanations"][0]
    heat = decode_png(e["heatmap"])
    assert heat.shape == (192, 256)
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    x0, y0, x1, y1 = obj["box"]
    sx, sy = 256 / 128, 192 / 128
    assert x0 * sx - 8 <= x <= x1 * sx + 8 and y0 * sy - 8 <= y <= y1 * sy + 8


def test_several_targets_and_top_k(client, demo_sample):
    data, _ = demo_sample
    two = _post(client, "saliency", data, target=["star", "0"]).json()["explanations"]
    assert [e["index"] for e in two] == [5, 0]
    top = _post(client, "layercam", data, top_k="3").json()["explanations"]
    scores = [e["score"] for e in top]
    assert len(top) == 3 and scores == sorted(scores, reverse=True)
    default = _post(client, "gradcam", data).json()["explanations"]
    assert len(default) == 1 and default[0]["score"] == pytest.approx(scores[0])


def test_json_body_with_method_params(client, demo_sample):
    data, _ = demo_sample
    body = {"image": base64.b64encode(data).decode(), "target": 1, "window": 16, "stride": 8, "outputs": ["raw"]}
    r = client.post("/explain/occlusion", json=body)
    assert r.status_code == 200, r.text
    e = r.json()["explanations"][0]
    assert "heatmap" not in e and decode_raw(e["raw"]).shape == (128, 128)


@pytest.mark.parametrize(
    "method, options, status, needle",
    [
        ("nope", {}, 404, "valid methods"),
        ("occlusion", {"window": "0"}, 422, "window"),
        ("occlusion", {"window": "big"}, 400, "window"),
        ("smoothgrad", {"samples": "100000"}, 422, "samples"),
        ("gradcam", {"windw": "3"}, 400, "unknown option(s): windw"),
        ("gradcam", {"layer": "features.nope"}, 422, "layers with a spatial output"),
        ("gradcam", {"target": "hexagon"}, 422, "not a label"),
        ("gradcam", {"outputs": "heatmap,video"}, 422, "outputs"),
        ("gradcam", {"outputs": "overlay", "colormap": "nonexistent"}, 422, "colormap"),
        ("gradcam", {"outputs": "overlay", "alpha": "2"}, 422, "alpha"),
    ],
)
def test_explain_errors_before_any_model_work(client, demo_sample, method, options, status, needle):
    before = client.app.state.runtime.batchers["demo"].stats.items_run
    r = _post(client, method, demo_sample[0], **options)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert needle in r.json()["detail"]
    assert client.app.state.runtime.batchers["demo"].stats.items_run == before


def test_methods_catalogue(client):
    methods = {m["name"]: m for m in client.get("/methods").json()["methods"]}
    required = {"cam", "gradcam", "gradcam-counterfactual", "guided-backprop", "guided-gradcam", "saliency",
                "smoothgrad", "occlusion", "gradcam-pp", "scorecam", "layercam", "integrated-gradients"}
    assert required <= set(methods)
    occ = methods["occlusion"]["params"]
    assert {"window", "stride", "baseline"} <= set(occ)
    assert occ["window"]["type"] == "integer" and occ["window"]["minimum"] >= 1
    assert {"samples", "noise"} <= set(methods["smoothgrad"]["params"])
    assert methods["gradcam"]["family"] == "cam" and methods["saliency"]["family"] == "gradient"
    assert required <= set(client.get("/models/demo").json()["methods"])


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory):
    """A model without a GAP→linear head (no CAM) and one whose maps are all zero."""
    path = tmp_path_factory.mktemp("reg") / "models.yaml"
    path.write_text(textwrap.dedent("""
        models:
          - name: mobilenet
            source: torchvision:mobilenet_v3_small
            num_classes: 4
            input_size: [64, 64]
            default: true
          - name: blind
            source: python:tests.support:blind_net
            input_size: [32, 32]
    """))
    with make_client(models=path) as c:
        wait_ready(c)
        yield c


def test_cam_needs_a_gap_linear_head(odd_models, demo_sample):
    assert "cam" not in odd_models.get("/models/mobilenet").json()["methods"]
    r = _post(odd_models, "cam", demo_sample[0])
    assert r.status_code == 422 and "cam" in r.json()["detail"] and "head" in r.json()["detail"]
    assert _post(odd_models, "gradcam", demo_sample[0]).status_code == 200


def test_all_zero_maps_are_reported_not_divided(odd_models, demo_sample):
    r = _post(odd_models, "gradcam", demo_sample[0], model="blind", outputs="heatmap,raw")
    e = r.json()["explanations"][0]
    assert e["empty"] is True and e["max"] == 0.0
    assert decode_png(e["heatmap"]).max() == 0
    assert np.all(decode_raw(e["raw"]) == 0)
    boxes = odd_models.post("/localize", files={"image": ("x.png", demo_sample[0])}, data={"model": "blind"})
    assert boxes.status_code == 200 and boxes.json()["boxes"] == []


def test_concurrent_mixed_requests_each_get_their_own_answer(demo_sample):
    from service.demo.data import generate_sample, sample_rng

    images = []
    for i in range(4):
        img, _ = generate_sample(sample_rng(4242, i))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        images.append(buf.getvalue())
    cases = [(m, images[i % 4], t) for i, (m, t) in enumerate(
        [(m, t) for m in ("gradcam", "guided-backprop", "saliency", "layercam") for t in ("circle", "star", "ring")])]
    with make_client(max_batch_delay_ms=100, max_batch_size=8, cache_bytes=0) as c:  # repeats must reach the model
        wait_ready(c)

        def ask(case):
            method, data, target = case
            r = _post(c, method, data, target=target, outputs="raw")
            assert r.status_code == 200, r.text
            return decode_raw(r.json()["explanations"][0]["raw"])

        alone = [ask(case) for case in cases]
        stats = c.app.state.runtime.batchers["demo"].stats
        batches_before = stats.batches
        with ThreadPoolExecutor(len(cases)) as pool:
            together = list(pool.map(ask, cases))
        batched = stats.batches - batches_before
    assert batched < len(cases), "no two requests shared a model pass"
    for (method, _, target), a, b in zip(cases, alone, together):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=f"{method}/{target}")


def test_localize_boxes_in_original_pixels(client, demo_sample):
    data, objects = demo_sample
    default = client.post("/localize", files={"image": ("x.png", data)}).json()
    assert (default["method"], default["threshold"]) == ("guided-gradcam", 0.05)  # the demo entry's calibrated defaults
    small = client.post("/localize", files={"image": ("x.png", data)},
                        data={"threshold": "0.5", "method": "gradcam"}).json()
    assert small["method"] == "gradcam" and small["threshold"] == 0.5
    # multi-label: every class with p >= 0.5
    assert {b["label"] for b in small["boxes"]} == {o["class"] for o in objects}
    big = Image.open(io.BytesIO(data)).resize((384, 256))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    large = client.post("/localize", files={"image": ("x.png", buf.getvalue())},
                        data={"threshold": "0.5", "method": "gradcam"}).json()
    assert large["image"] == {"width": 384, "height": 256}
    for a, b in zip(sorted(small["boxes"], key=lambda b: b["index"]), sorted(large["boxes"], key=lambda b: b["index"])):
        x0, y0, x1, y1 = a["box"]
        expected = np.array([x0 * 3, y0 * 2, x1 * 3, y1 * 2])
        assert np.all(np.abs(np.array(b["box"]) - expected) <= 6), (a, b)


@pytest.mark.parametrize("method", ["gradcam", "cam", "layercam", "saliency", "guided-backprop", "guided-gradcam"])
def test_a_served_explanation_is_one_forward(client, method):
    """One pass: the method's own forward yields the scores and the top-k targets; nothing else runs the model."""
    module = client.app.state.runtime.registry.get("demo").module
    calls = []
    handle = module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        # an image of this test's own, so that no earlier request of the session put its maps in the result cache
        r = client.post(f"/explain/{method}", files={"image": ("x.png", demo_png(8102))}, data={"top_k": "2"})
        assert r.headers["x-cache"] == "miss"
    finally:
        handle.remove()
    assert r.status_code == 200, r.text
    assert len(calls) == 1 and calls == [1], calls       # one forward, of the one image (two targets share it)
    scores = [e["score"] for e in r.json()["explanations"]]
    assert len(scores) == 2 and scores[0] >= scores[1]
