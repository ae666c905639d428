"""Segmentation models over HTTP: registry task, /predict statistics and masks, /explain with a class and a region
(the map equals the engine's on the same target), and bad regions answered with a 4xx naming the field."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from tests.support import decode_png, decode_raw, make_client, png_bytes, wait_ready

PROBLEM = "application/problem+json"
SIZE = 32


@pytest.fixture(scope="module")
def seg_client(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "models.yaml"
    path.write_text(
        "models:\n"
        "  - name: seg\n"
        "    source: python:tests.api.seg_support:tiny_seg\n"
        "    task: segmentation\n"
        "    labels: [background, circle, square]\n"
        f"    input_size: [{SIZE}, {SIZE}]\n"
        "    mean: [0.5, 0.5, 0.5]\n"
        "    std: [0.25, 0.25, 0.25]\n")
    with make_client(models=str(path)) as c:
        wait_ready(c)
        yield c


def _image(seed: int = 0, size: int = 48) -> tuple[bytes, np.ndarray]:
    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return png_bytes(array), array


def _model_and_input(data: bytes):
    """The served network rebuilt from its factory, and the image through the service's own preprocessing (the
    targets, not the resizing, are under test here)."""
    from service.imaging import decode_image, to_model_input
    from tests.api.seg_support import tiny_seg

    model = tiny_seg().eval().requires_grad_(False)
    x = to_model_input(decode_image(data), input_size=(SIZE, SIZE), channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    return model, x[None] if x.dim() == 3 else x


def test_models_lists_the_segmentation_task_and_its_methods(seg_client):
    body = seg_client.get("/models/seg").json()
    assert body["task"] == "segmentation"
    assert body["target_layer"]


def test_predict_reports_pixel_fractions_and_masks_at_the_original_size(seg_client):
    data, array = _image(1)
    resp = seg_client.post("/predict", files={"image": ("x.png", data, "image/png")},
                           data={"model": "seg", "outputs": "mask,labelmap"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["task"] == "segmentation"
    fractions = {p["index"]: p["pixel_fraction"] for p in body["predictions"]}
    assert set(fractions) == {0, 1, 2} and abs(sum(fractions.values()) - 1) < 1e-6
    model, x = _model_and_input(data)
    with torch.no_grad():
        argmax = model(x)["out"].argmax(1)[0]
    for p in body["predictions"]:
        assert p["pixel_fraction"] == pytest.approx(float((argmax == p["index"]).float().mean()), abs=1e-3)
        mask = decode_png(p["mask"])
        assert mask.shape == (48, 48)
        assert set(np.unique(mask)) <= {0, 255}
    labelmap = decode_png(body["labelmap"])
    assert labelmap.shape == (48, 48) and labelmap.max() <= 2


@pytest.mark.parametrize("region", ["all", "predicted", "4,8,40,30"])
def test_explain_region_equals_the_engine_on_the_same_target(seg_client, region):
    from service.engine import get_method
    from service.engine.passes import complete
    from service.engine.targets import ClassRegion, Region, TargetRequest

    data, array = _image(2)
    model, x = _model_and_input(data)
    with torch.no_grad():
        cls = int(torch.bincount(model(x)["out"].argmax(1).flatten(), minlength=3).argmax())
    resp = seg_client.post("/explain/gradcam", files={"image": ("x.png", data, "image/png")},
                           data={"model": "seg", "target": str(cls), "region": region, "outputs": "raw"})
    assert resp.status_code == 200, resp.text
    served = decode_raw(resp.json()["explanations"][0]["raw"])
    if region == "4,8,40,30":
        spec = Region("box", box=(4 / 48, 8 / 48, 40 / 48, 30 / 48))
    else:
        spec = Region(region)
    layer = seg_client.get("/models/seg").json()["target_layer"]
    mine = complete(get_method("gradcam").steps(model, x, [TargetRequest((ClassRegion(cls, spec),))], layer=layer,
                                                task="segmentation")).maps[0].numpy()
    assert float(np.abs(mine).max()) > 0
    np.testing.assert_allclose(served, mine, rtol=1e-3, atol=1e-5 * float(np.abs(mine).max()))


def test_explain_with_a_mask_region(seg_client):
    data, _ = _image(3)
    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[10:30, 5:20] = 255
    encoded = base64.b64encode(png_bytes(mask)).decode()
    resp = seg_client.post("/explain/occlusion", files={"image": ("x.png", data, "image/png")},
                           data={"model": "seg", "target": "1", "region": "mask:" + encoded, "window": "8",
                                 "stride": "8", "outputs": "raw"})
    assert resp.status_code == 200, resp.text
    other = seg_client.post("/explain/occlusion", files={"image": ("x.png", data, "image/png")},
                            data={"model": "seg", "target": "1", "region": "all", "window": "8", "stride": "8",
                                  "outputs": "raw"})
    assert not np.allclose(decode_raw(resp.json()["explanations"][0]["raw"]),
                           decode_raw(other.json()["explanations"][0]["raw"]))


@pytest.mark.parametrize("region,needle", [("1,2,3", "expected predicted"), ("10,10,5,20", "x0 < x1"),
                                           ("0,0,100,20", "exceeds the image"), ("mask:!!", "base64"),
                                           ("mask:" + base64.b64encode(b"not a png").decode(), "readable png")])
def test_bad_regions_are_422_naming_the_field(seg_client, region, needle):
    data, _ = _image(4)
    resp = seg_client.post("/explain/gradcam", files={"image": ("x.png", data, "image/png")},
                           data={"model": "seg", "target": "1", "region": region})
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert needle.lower() in body["detail"].lower()
    assert any(e["field"] == "region" for e in body.get("errors", []))


def test_a_region_on_a_classifier_is_refused(client, demo_sample):
    resp = client.post("/explain/gradcam", files={"image": ("x.png", demo_sample[0], "image/png")},
                       data={"region": "all"})
    assert resp.status_code == 422, resp.text
    assert "only segmentation models" in resp.json()["detail"]


def test_cam_is_not_offered_for_the_segmentation_model(seg_client):
    data, _ = _image(5)
    resp = seg_client.post("/explain/cam", files={"image": ("x.png", data, "image/png")},
                           data={"model": "seg", "target": "1"})
    assert 400 <= resp.status_code < 500, resp.text


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _truth_boxes(masks) -> list[list[int]]:
    """The box of each object's exact generator mask (x1/y1 exclusive)."""
    out = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        out.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return out


def test_localize_on_demo_seg_boxes_the_predicted_mask_beside_the_explanation(client):
    """On the shipped demo-seg model and a synthetic image, every object's class has a mask box matching the object's
    true box (IoU >= 0.5), with the class's mean probability inside; the explanation's boxes are there too."""
    from service.demo.data import CLASSES, generate_sample_with_masks, sample_rng

    image, objects, masks = generate_sample_with_masks(sample_rng(5150, 9))   # circle, square, ring
    assert len({o["class"] for o in objects}) == len(objects) >= 2
    classes = [1 + CLASSES.index(o["class"]) for o in objects]
    data = png_bytes(np.asarray(image))
    resp = client.post("/localize", files={"image": ("x.png", data, "image/png")},
                       data={"model": "demo-seg", "target": [str(c) for c in classes], "min_area": "20"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {b["index"] for b in body["boxes"]} == set(classes)
    assert all(len(b["box"]) == 4 and b["area"] > 0 for b in body["boxes"])
    for cls, truth in zip(classes, _truth_boxes(masks)):
        mine = [m for m in body["mask_boxes"] if m["index"] == cls]
        assert mine, (cls, body["mask_boxes"])
        best = max(mine, key=lambda m: _iou(m["box"], truth))
        assert _iou(best["box"], truth) >= 0.5, (best, truth)
        assert 0.5 < best["mean_probability"] <= 1.0
        assert best["label"] == CLASSES[cls - 1]


def test_mask_boxes_are_the_components_of_the_predicted_mask_png(client):
    """A mask box is the box of a component of /predict's mask PNG of the class, and its mean probability is the
    softmax's mean over that component (the same forward, at the original size)."""
    from scipy import ndimage

    from service.demo.data import generate_sample_with_masks, sample_rng

    image, objects, _ = generate_sample_with_masks(sample_rng(5150, 2))
    data = png_bytes(np.asarray(image.resize((160, 144))))
    predicted = client.post("/predict", files={"image": ("x.png", data, "image/png")},
                            data={"model": "demo-seg", "target": "0"}).json()
    mask = decode_png(predicted["predictions"][0]["mask"]) > 0
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = sorted([s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labels))
    body = client.post("/localize", files={"image": ("x.png", data, "image/png")},
                       data={"model": "demo-seg", "target": "0", "region": "all"}).json()
    assert sorted(m["box"] for m in body["mask_boxes"]) == boxes
    assert sum(m["area"] for m in body["mask_boxes"]) == int(mask.sum())
    assert all(0.5 < m["mean_probability"] <= 1 for m in body["mask_boxes"])


def test_localize_of_a_classifier_has_no_mask_boxes(client, demo_sample):
    resp = client.post("/localize", files={"image": ("x.png", demo_sample[0], "image/png")})
    assert resp.status_code == 200, resp.text
    assert "mask_boxes" not in resp.json() and resp.json()["boxes"]
    refused = client.post("/localize", files={"image": ("x.png", demo_sample[0], "image/png")},
                          data={"region": "all"})
    assert refused.status_code == 422 and any(e["field"] == "region" for e in refused.json()["errors"])


@pytest.mark.parametrize("region", ["predicted", "all", "6,3,28,29", "mask"])
def test_served_map_agrees_with_pytorch_grad_cam_and_hand_autograd(seg_client, region):
    """Issue #14's bar, over HTTP: the raw map of a class-and-region request correlates (r >= 0.98) with
    pytorch-grad-cam's GradCAM + SemanticSegmentationTarget on the same layer and the same pixel mask, and equals a
    hand autograd Grad-CAM of sum(Y^c * M)."""
    pytest.importorskip("pytorch_grad_cam")
    import copy

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
    from torch import nn

    data, _ = _image(6, size=SIZE)   # the input size: original pixels are the output grid's
    model, x = _model_and_input(data)
    with torch.no_grad():
        out = model(x)["out"]
    cls = int(torch.bincount(out.argmax(1).flatten(), minlength=3).argmax())
    mask = torch.zeros(SIZE, SIZE)
    fields = {"model": "seg", "target": str(cls), "outputs": "raw"}
    if region == "predicted":
        mask = (out.argmax(1)[0] == cls).float()
    elif region == "all":
        mask[:] = 1
    elif region == "mask":
        mask[5:20, 8:30] = 1
        region = "mask:" + base64.b64encode(png_bytes((mask.numpy() * 255).astype(np.uint8))).decode()
    else:
        mask[3:29, 6:28] = 1
    fields["region"] = region
    resp = seg_client.post("/explain/gradcam", files={"image": ("x.png", data, "image/png")}, data=fields)
    assert resp.status_code == 200, resp.text
    served = torch.from_numpy(np.array(decode_raw(resp.json()["explanations"][0]["raw"])))
    layer_name = seg_client.get("/models/seg").json()["target_layer"]

    class Unwrap(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            return self.inner(t)["out"]

    wrapped = Unwrap(copy.deepcopy(model)).requires_grad_(True)
    layer = dict(wrapped.inner.named_modules())[layer_name]
    target = SemanticSegmentationTarget(cls, mask.numpy())
    with GradCAM(model=wrapped, target_layers=[layer]) as cam:
        output = cam.activations_and_grads(x)
        wrapped.zero_grad()
        target(output[0]).backward()
        acts = cam.activations_and_grads.activations[-1].cpu().numpy()
        grads = cam.activations_and_grads.gradients[-1].cpu().numpy()
        theirs = torch.from_numpy(np.maximum(cam.get_cam_image(x, [layer], [target], acts, grads, False), 0))[0]
    assert served.shape == theirs.shape and float(served.std()) > 0
    r = float(torch.corrcoef(torch.stack([served.flatten(), theirs.float().flatten()]))[0, 1])
    assert r >= 0.98, r

    trainable = copy.deepcopy(model).requires_grad_(True)
    acts_hand = []
    handle = dict(trainable.named_modules())[layer_name].register_forward_hook(lambda m, a, o: acts_hand.append(o))
    (grad,) = torch.autograd.grad((trainable(x)["out"][0, cls] * mask).sum(), acts_hand[0])
    handle.remove()
    hand = (grad.mean((2, 3), keepdim=True) * acts_hand[0]).sum(1).relu()[0].detach()
    torch.testing.assert_close(served, hand, rtol=1e-3, atol=1e-5 * float(hand.max()))


def test_mask_boxes_survive_the_result_cache_and_async_jobs(client):
    """Maps cached by /explain carry the clean forward's mask, so a /localize cache hit still has its mask boxes; a
    /localize job's result is the synchronous body."""
    import time

    from service.demo.data import generate_sample_with_masks, sample_rng

    image, _, _ = generate_sample_with_masks(sample_rng(5150, 4))   # cross, ring
    data = png_bytes(np.asarray(image))
    fields = {"model": "demo-seg", "target": ["4", "5"], "region": "4,4,120,120"}
    first = client.post("/explain/gradcam", files={"image": ("x.png", data, "image/png")}, data=fields)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    hit = client.post("/localize", files={"image": ("x.png", data, "image/png")}, data=fields)
    assert hit.status_code == 200 and hit.headers["x-cache"] == "hit", hit.text
    body = hit.json()
    assert {m["index"] for m in body["mask_boxes"]} == {4, 5}
    accepted = client.post("/localize", files={"image": ("x.png", data, "image/png")}, data=fields,
                           headers={"Prefer": "respond-async"})
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 60
    while (job := client.get(f"/jobs/{accepted.json()['id']}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["status"] == "done", job
    assert job["result"]["mask_boxes"] == body["mask_boxes"] and job["result"]["boxes"] == body["boxes"]
