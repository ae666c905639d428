"""CAM family against hand-written computations (explicit full backward on a non-frozen copy) and invariants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_support import DenseLikeNet, MLPHead, TinyNet, frozen, randomise_bn, trainable_copy
from torch import nn

from service.engine import METHODS
from service.errors import InvalidOption


def tiny(classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return frozen(randomise_bn(TinyNet(classes)).double())


def batch(seed: int = 1, n: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_acts_grads(model: nn.Module, x: torch.Tensor, targets: list[int], layer: str = "features"):
    """Activation and d(logit)/d(activation) per row, via retain_grad + a full backward on a trainable copy."""
    ref = trainable_copy(model)
    acts, grads = [], []
    for i, t in enumerate(targets):
        store = {}

        def hook(mod, args, out, store=store):
            out.retain_grad()
            store["a"] = out

        handle = dict(ref.named_modules())[layer].register_forward_hook(hook)
        try:
            logits = ref(x[i:i + 1])
        finally:
            handle.remove()
        ref.zero_grad()
        logits[0, t].backward()
        acts.append(store["a"].detach()[0])
        grads.append(store["a"].grad.detach()[0])
    return torch.stack(acts), torch.stack(grads)


def loop_weighted_sum(weights, acts):
    """sum_k weights[k] * acts[k] with an explicit loop (independent of the engine's einsum)."""
    cam = torch.zeros_like(acts[0])
    for k in range(acts.shape[0]):
        cam = cam + weights[k] * acts[k]
    return cam


def ref_gradcam(a, g, negate=False):
    g = -g if negate else g
    return torch.stack([loop_weighted_sum([g[b, k].mean() for k in range(a.shape[1])], a[b]).clamp_min(0)
                        for b in range(a.shape[0])])


def ref_gradcampp(a, g):
    out = []
    for b in range(a.shape[0]):
        weights = []
        for k in range(a.shape[1]):
            s = float(a[b, k].sum())
            w = 0.0
            for gij in g[b, k].flatten().tolist():
                if gij != 0:
                    w += gij**2 / (2 * gij**2 + s * gij**3) * max(gij, 0.0)
            weights.append(w)
        out.append(loop_weighted_sum(weights, a[b]).clamp_min(0))
    return torch.stack(out)


def ref_layercam(a, g):
    return torch.stack([loop_weighted_sum([1.0] * a.shape[1], g[b].clamp_min(0) * a[b]).clamp_min(0)
                        for b in range(a.shape[0])])


def ref_hirescam(a, g):
    return (g * a).sum(1).clamp_min(0)


def ref_xgradcam(a, g):
    out = []
    for b in range(a.shape[0]):
        weights = [float((g[b, k] * a[b, k]).sum() / a[b, k].sum()) if float(a[b, k].sum()) != 0 else 0.0
                   for k in range(a.shape[1])]
        out.append(loop_weighted_sum(weights, a[b]).clamp_min(0))
    return torch.stack(out)


@pytest.mark.parametrize("method, reference", [
    ("gradcam", ref_gradcam),
    ("gradcam-counterfactual", lambda a, g: ref_gradcam(a, g, negate=True)),
    ("gradcam-pp", ref_gradcampp),
    ("layercam", ref_layercam),
    ("hirescam", ref_hirescam),
    ("xgradcam", ref_xgradcam),
])
def test_gradient_cams_match_hand_written_autograd(method, reference):
    model, x, targets = tiny(), batch(), [0, 3, 4]
    a, g = reference_acts_grads(model, x, targets)
    expected = reference(a, g).float()
    got = METHODS[method].explain(model, x, torch.tensor(targets), layer="features", task="multiclass")
    assert got.dtype == torch.float32 and got.shape == (3, 8, 8)
    assert float(expected.abs().max()) > 0, "degenerate reference map"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    assert bool((got >= 0).all())


def test_layercam_on_an_early_layer_uses_that_layers_resolution():
    model, x = tiny(), batch()
    a, g = reference_acts_grads(model, x, [1, 2, 3], layer="features.0")
    got = METHODS["layercam"].explain(model, x, torch.tensor([1, 2, 3]), layer="features.0", task="multiclass")
    assert got.shape == (3, 16, 16)
    torch.testing.assert_close(got, ref_layercam(a, g).float(), rtol=1e-5, atol=1e-7)


def test_gradcam_is_cam_over_hw_on_a_gap_linear_head():
    model, x, t = tiny(), batch(), torch.tensor([0, 1, 2])
    cam = METHODS["cam"].explain(model, x, t, layer="features", task="multiclass")
    grad = METHODS["gradcam"].explain(model, x, t, layer="features", task="multiclass")
    # With y = W mean_ij(A) + b, dy/dA_ij = W/Z, so Grad-CAM's alpha = W/Z and Grad-CAM = ReLU(CAM)/Z.
    torch.testing.assert_close(grad * 64, cam, rtol=1e-5, atol=1e-7)
    # Same at the last ReLU module itself (the map the pool reads).
    grad_relu = METHODS["gradcam"].explain(model, x, t, layer="features.4", task="multiclass")
    torch.testing.assert_close(grad_relu * 64, cam, rtol=1e-5, atol=1e-7)
    a = reference_acts_grads(model, x, [0, 1, 2])[0]
    w = model.fc.weight
    expected = torch.stack([loop_weighted_sum(w[c], a[b]).clamp_min(0) for b, c in enumerate([0, 1, 2])])
    torch.testing.assert_close(cam, expected.float(), rtol=1e-5, atol=1e-7)


def test_gradcam_is_cam_over_hw_on_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = frozen(torchvision.models.resnet18(weights=None))
    x = torch.randn(2, 3, 96, 96)
    t = torch.tensor([5, 700])
    cam = METHODS["cam"].explain(model, x, t, layer=None, task="multiclass")
    grad = METHODS["gradcam"].explain(model, x, t, layer=None, task="multiclass")
    assert cam.shape == (2, 3, 3)
    assert float(cam.max()) > 0
    torch.testing.assert_close(grad * 9, cam, rtol=1e-4, atol=1e-5 * float(cam.max()))


def test_cam_applies_densenet_style_relu_between_layer_and_pool():
    torch.manual_seed(0)
    model = frozen(DenseLikeNet().double())
    x = batch(n=2, size=8)
    cam = METHODS["cam"].explain(model, x, torch.tensor([1, 3]), layer="features", task="multiclass")
    with torch.no_grad():
        a = model.features(x)
    w = model.classifier.weight
    expected = torch.stack([loop_weighted_sum(w[c], a[b].clamp_min(0)).clamp_min(0) for b, c in enumerate([1, 3])])
    torch.testing.assert_close(cam, expected.float(), rtol=1e-5, atol=1e-7)


def test_cam_refuses_a_head_without_global_average_pooling():
    torch.manual_seed(0)
    model = frozen(MLPHead())
    with pytest.raises(InvalidOption) as err:
        METHODS["cam"].explain(model, torch.randn(1, 3, 8, 8), torch.tensor([0]), layer="act", task="multiclass")
    assert "global-average-pool" in err.value.detail and "use gradcam" in err.value.detail
    assert "fc (Linear)" in err.value.detail
    # Grad-CAM works on it.
    out = METHODS["gradcam"].explain(model, torch.randn(1, 3, 8, 8), torch.tensor([0]), layer="act", task="multiclass")
    assert out.shape == (1, 8, 8)


def test_counterfactual_is_gradcam_of_the_opposite_class_on_a_mirrored_head():
    model = tiny(classes=2)
    with torch.no_grad():
        model.fc.weight[1] = -model.fc.weight[0]
        model.fc.bias[1] = -model.fc.bias[0]
    x = batch(n=2)
    counter = METHODS["gradcam-counterfactual"].explain(model, x, torch.tensor([0, 1]), layer=None, task="multiclass")
    other = METHODS["gradcam"].explain(model, x, torch.tensor([1, 0]), layer=None, task="multiclass")
    assert float(counter.max()) > 0
    torch.testing.assert_close(counter, other, rtol=0, atol=0)


def ref_scorecam(model, x, targets, task):
    with torch.no_grad():
        a = model.features(x)
    out = []
    for b, c in enumerate(targets):
        weights = []
        for k in range(a.shape[1]):
            up = F.interpolate(a[b:b + 1, k:k + 1], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            lo, hi = float(up.min()), float(up.max())
            mask = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
            with torch.no_grad():
                logits = model(x[b:b + 1] * mask)
            p = torch.softmax(logits, 1)[0, c] if task == "multiclass" else torch.sigmoid(logits[0, c])
            weights.append(float(p))
        out.append(loop_weighted_sum(weights, a[b]).clamp_min(0))
    return torch.stack(out).float()


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_scorecam_matches_a_channel_by_channel_loop(task, monkeypatch):
    monkeypatch.setattr("service.engine.base.FORWARD_CHUNK", 5)  # chunks straddle rows
    model, x, targets = tiny(), batch(n=2), [2, 4]
    got = METHODS["scorecam"].explain(model, x, torch.tensor(targets), layer="features", task=task)
    expected = ref_scorecam(model, x, targets, task)
    assert float(expected.max()) > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_layer_errors_name_the_layer():
    model, x, t = tiny(), batch(n=1), torch.tensor([0])
    with pytest.raises(InvalidOption) as err:
        METHODS["gradcam"].explain(model, x, t, layer="nope", task="multiclass")
    assert "'nope'" in err.value.detail and "features" in err.value.detail
    with pytest.raises(InvalidOption, match="not a \\[B, C, h, w\\] spatial map"):
        METHODS["gradcam"].explain(model, x, t, layer="fc", task="multiclass")


def test_a_module_that_runs_twice_or_not_at_all_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.unused = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    model = frozen(Twice())
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([1])
    with pytest.raises(InvalidOption, match="runs 2 times"):
        METHODS["gradcam"].explain(model, x, t, layer="conv", task="multiclass")
    with pytest.raises(InvalidOption, match="did not run"):
        METHODS["gradcam"].explain(model, x, t, layer="unused", task="multiclass")


def test_a_layer_the_logits_do_not_depend_on_is_refused():
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.aux = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            h = self.conv(x)
            self.aux(h)
            return self.fc(h.mean((2, 3)))

    with pytest.raises(InvalidOption, match="do not depend on layer 'aux'"):
        METHODS["gradcam"].explain(frozen(Aux()), torch.randn(1, 3, 8, 8), torch.tensor([1]), layer="aux",
                                   task="multiclass")


def test_multilabel_uses_the_class_logit_like_multiclass():
    model, x, t = tiny(), batch(n=2), torch.tensor([1, 2])
    a = METHODS["gradcam-pp"].explain(model, x, t, layer=None, task="multilabel")
    b = METHODS["gradcam-pp"].explain(model, x, t, layer=None, task="multiclass")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
