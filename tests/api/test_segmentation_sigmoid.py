"""The sigmoid segmentation path (registry ``activation: sigmoid``): a class's pixels are those with probability
> 0.5 (masks of different classes may overlap), its statistics are sigmoid means, and explanations sum its logits over
those pixels — checked against a hand autograd Grad-CAM on the rebuilt network."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.support import decode_png, decode_raw, make_client, png_bytes, wait_ready

SIZE = 32


@pytest.fixture(scope="module")
def sig_client(tmp_path_factory):
    path = tmp_path_factory.mktemp("sig") / "models.yaml"
    path.write_text(
        "models:\n"
        "  - name: sig\n"
        "    source: python:tests.api.seg_support:tiny_sigmoid_seg\n"
        "    task: segmentation\n"
        "    activation: sigmoid\n"
        "    labels: [a, b, c]\n"
        f"    input_size: [{SIZE}, {SIZE}]\n"
        "    mean: [0.5, 0.5, 0.5]\n"
        "    std: [0.25, 0.25, 0.25]\n")
    with make_client(models=str(path)) as c:
        wait_ready(c)
        yield c


def _image(seed: int, size: int = SIZE) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _model_and_input(data: bytes):
    from service.imaging import decode_image, to_model_input
    from tests.api.seg_support import tiny_sigmoid_seg

    model = tiny_sigmoid_seg().eval().requires_grad_(False)
    x = to_model_input(decode_image(data), input_size=(SIZE, SIZE), channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    return model, x[None] if x.dim() == 3 else x


def _hand_gradcam(model, x, layer: str, cls: int, mask: torch.Tensor) -> torch.Tensor:
    """Grad-CAM written out: gradient of ``sum(Y^c * M)`` at the layer, GAP weights, ReLU of the weighted sum."""
    trainable = copy.deepcopy(model).requires_grad_(True)
    acts = []
    handle = dict(trainable.named_modules())[layer].register_forward_hook(lambda m, a, o: acts.append(o))
    out = trainable(x)["out"]
    handle.remove()
    (grad,) = torch.autograd.grad((out[0, cls] * mask).sum(), acts[0])
    return (grad.mean((2, 3), keepdim=True) * acts[0]).sum(1).relu()[0].detach()


def test_predict_uses_probability_above_one_half_and_sigmoid_means(sig_client):
    data = _image(1)
    body = sig_client.post("/predict", files={"image": ("x.png", data, "image/png")},
                           data={"model": "sig"}).json()
    model, x = _model_and_input(data)
    with torch.no_grad():
        probs = torch.sigmoid(model(x)["out"])[0]
    masks = probs > 0.5
    # The fixture's biases make the multi-label masks overlap: argmax would give fractions summing to 1.
    assert float(masks.float().mean((1, 2)).sum()) > 1.05
    assert {p["index"] for p in body["predictions"]} == {0, 1, 2}
    for p in body["predictions"]:
        c = p["index"]
        assert p["pixel_fraction"] == pytest.approx(float(masks[c].float().mean()), abs=1e-6)
        inside = float(probs[c][masks[c]].mean()) if bool(masks[c].any()) else 0.0
        assert p["mean_probability"] == pytest.approx(inside, abs=1e-5)
        assert p["score"] == pytest.approx(float(probs[c].mean()), abs=1e-5)
        assert np.array_equal(decode_png(p["mask"]) > 0, masks[c].numpy())


@pytest.mark.parametrize("cls", [0, 1])
def test_explain_predicted_region_is_probability_above_one_half(sig_client, cls):
    data = _image(2)
    resp = sig_client.post("/explain/gradcam", files={"image": ("x.png", data, "image/png")},
                           data={"model": "sig", "target": str(cls), "outputs": "raw"})
    assert resp.status_code == 200, resp.text
    served = resp.json()["explanations"][0]
    model, x = _model_and_input(data)
    with torch.no_grad():
        out = model(x)["out"]
    probs = torch.sigmoid(out)[0, cls]
    mask = (probs > 0.5).float()
    assert 0 < float(mask.mean()) < 1
    assert not torch.equal(mask.bool(), out.argmax(1)[0] == cls)   # argmax would explain other pixels
    layer = sig_client.get("/models/sig").json()["target_layer"]
    hand = _hand_gradcam(model, x, layer, cls, mask)
    assert float(hand.max()) > 0
    np.testing.assert_allclose(decode_raw(served["raw"]), hand.numpy(), rtol=1e-3, atol=1e-5 * float(hand.max()))
    assert served["score"] == pytest.approx(float((probs * mask).sum() / mask.sum()), abs=1e-5)


def test_top_k_ranks_by_sigmoid_mean_and_keeps_the_requested_region(sig_client):
    """Without a target the class of highest mean sigmoid probability is explained, over the request's region."""
    data = _image(3)
    model, x = _model_and_input(data)
    with torch.no_grad():
        out = model(x)["out"]
    probs = torch.sigmoid(out)[0]
    best = int(probs.mean((1, 2)).argmax())
    layer = sig_client.get("/models/sig").json()["target_layer"]
    for region, mask in (("predicted", (probs[best] > 0.5).float()), ("all", torch.ones(SIZE, SIZE))):
        resp = sig_client.post("/explain/gradcam", files={"image": ("x.png", data, "image/png")},
                               data={"model": "sig", "region": region, "outputs": "raw"})
        assert resp.status_code == 200, resp.text
        served = resp.json()["explanations"][0]
        assert served["index"] == best
        hand = _hand_gradcam(model, x, layer, best, mask)
        np.testing.assert_allclose(decode_raw(served["raw"]), hand.numpy(), rtol=1e-3,
                                   atol=1e-5 * float(hand.max()))
        assert served["score"] == pytest.approx(float((probs[best] * mask).sum() / mask.sum()), abs=1e-5)


def test_localize_mask_boxes_use_probability_above_one_half(sig_client):
    from scipy import ndimage

    data = _image(4)
    model, x = _model_and_input(data)
    with torch.no_grad():
        probs = torch.sigmoid(model(x)["out"])[0, 1]
    mask = (probs > 0.5).numpy()
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    assert count >= 1
    body = sig_client.post("/localize", files={"image": ("x.png", data, "image/png")},
                           data={"model": "sig", "target": "1"}).json()
    expected = sorted(([s[1].start, s[0].start, s[1].stop, s[0].stop],
                       float(probs.numpy()[labels == k + 1].mean()))
                      for k, s in enumerate(ndimage.find_objects(labels)))
    got = sorted((m["box"], m["mean_probability"]) for m in body["mask_boxes"])
    assert [b for b, _ in got] == [b for b, _ in expected]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in expected], rtol=1e-5)
