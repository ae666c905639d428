"""Volumes in the engine: CAM-family and gradient methods and 3-D occlusion on ``[B, C, D, H, W]`` inputs — Grad-CAM
agrees with pytorch-grad-cam's 3-D Grad-CAM (r >= 0.98) and with a hand autograd computation, occlusion with a hand
loop over its cubes, rows in one batch equal the rows alone, no model change is left behind, and the probe refuses
the methods that do not explain volumes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from service.capabilities import probe
from service.engine import METHODS, get_method
from service.engine.layers import choose_target_layer
from service.engine.passes import complete
from service.engine.targets import ClassLogit, TargetRequest
from service.errors import InvalidOption
from tests.engine.engine_support import assert_unchanged, frozen, hook_free, snapshot
from tests.engine.vol_support import tiny_net3d

SHAPE = (1, 8, 12, 12)
VOLUME_METHODS = ["cam", "gradcam", "gradcam-pp", "layercam", "hirescam", "xgradcam", "saliency", "smoothgrad",
                  "integrated-gradients", "occlusion"]
PARAMS = {"smoothgrad": {"samples": 3}, "integrated-gradients": {"steps": 4}, "occlusion": {"window": 4, "stride": 4}}


@pytest.fixture(scope="module")
def net():
    return frozen(tiny_net3d())


def _x(n: int = 1, seed: int = 0, shape=SHAPE) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def _explain(method, model, x, classes, layer="features", **params):
    m = get_method(method)
    requests = [TargetRequest((ClassLogit(c),)) for c in classes]
    return complete(m.steps(model, x, requests, layer=layer if m.uses_layer else None, task="multiclass", **params))


def test_the_default_layer_and_the_methods_a_volume_model_is_offered(net):
    assert choose_target_layer(net, SHAPE)[0] == "features"
    caps = probe(net, input_shape=SHAPE, task="multiclass", target_layer="features")
    assert set(VOLUME_METHODS) <= set(caps.usable_methods)
    for name in ("scorecam", "rise", "guided-backprop", "fused-cam"):
        assert "volumes" in caps.methods[name]
    with pytest.raises(InvalidOption, match="volumes"):
        METHODS["scorecam"].explain(net, _x(), torch.tensor([0]), layer="features")


def test_gradcam_agrees_with_pytorch_grad_cam_in_3d():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    model = frozen(r3d_18(num_classes=5))
    x = _x(shape=(3, 16, 32, 32), seed=1)
    theirs_model = copy.deepcopy(model).requires_grad_(True)
    layer = theirs_model.layer3
    target = ClassifierOutputTarget(2)
    with GradCAM(model=theirs_model, target_layers=[layer]) as cam:
        outputs = cam.activations_and_grads(x)
        theirs_model.zero_grad()
        target(outputs[0]).backward()
        acts = cam.activations_and_grads.activations[-1].cpu().numpy()
        grads = cam.activations_and_grads.gradients[-1].cpu().numpy()
        raw = cam.get_cam_image(x, [layer], [target], acts, grads, False)
    theirs = torch.from_numpy(np.maximum(raw, 0)).float()[0]
    mine = _explain("gradcam", model, x, [2], layer="layer3").maps[0]
    assert mine.shape == theirs.shape == (4, 4, 4) and float(mine.std()) > 0
    r = float(torch.corrcoef(torch.stack([mine.flatten(), theirs.flatten()]))[0, 1])
    assert r >= 0.98, r


def test_gradcam_equals_hand_autograd_on_a_volume(net):
    x = _x(seed=2)
    store = {}
    handle = net.features.register_forward_hook(lambda m, a, out: store.setdefault("a", out))
    try:
        with torch.enable_grad():
            logits = net(x.clone().requires_grad_(True))
            (grad,) = torch.autograd.grad(logits[0, 3], store["a"])
    finally:
        handle.remove()
    a = store["a"].detach()
    expected = torch.relu((grad.mean((2, 3, 4), keepdim=True) * a).sum(1))[0]
    mine = _explain("gradcam", net, x, [3]).maps[0]
    assert mine.shape == (4, 6, 6)
    torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_occlusion_cubes_equal_a_hand_loop(net):
    x = _x(seed=3)
    win = stride = 4
    mine = _explain("occlusion", net, x, [1], window=win, stride=stride).maps[0]
    with torch.no_grad():
        ref = net(x)[0, 1]
        expected = torch.zeros(SHAPE[1:])
        for z in range(0, 8, stride):
            for y in range(0, 12, stride):
                for xx in range(0, 12, stride):
                    occluded = x.clone()
                    occluded[..., z:z + win, y:y + win, xx:xx + win] = 0
                    expected[z:z + win, y:y + win, xx:xx + win] = ref - net(occluded)[0, 1]
    torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", VOLUME_METHODS)
def test_rows_of_a_volume_batch_equal_the_rows_alone(net, method):
    x = _x(2, seed=4)
    before = snapshot(net)
    params = PARAMS.get(method, {})
    batched = _explain(method, net, x, [0, 2], **params)
    assert batched.maps.dim() == 4
    for i, c in enumerate([0, 2]):
        alone = _explain(method, net, x[i:i + 1], [c], **params)
        scale = float(alone.maps[0].abs().max())
        torch.testing.assert_close(batched.maps[i], alone.maps[0], rtol=1e-4, atol=1e-5 * max(scale, 1e-12))
    assert hook_free(net)
    assert_unchanged(net, before)
