"""Gradient methods against finite differences, hand-derived guided gradients and exact quadratures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from engine_support import TinyNet, frozen, randomise_bn, trainable_copy
from torch import nn

from service.engine import METHODS
from service.engine.gradients import GuidedReLUMode, integration_rule, smoothgrad_noise
from service.errors import InvalidOption


def tiny(classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return frozen(randomise_bn(TinyNet(classes)).double())


def batch(seed: int = 1, n: int = 2, size: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def explain(method, model, x, targets, **params):
    return METHODS[method].explain(model, x, torch.as_tensor(targets), layer=None, task="multiclass", **params)


def input_grad(model, x, target):
    """d logit / d x for one row, by a full backward on a trainable copy."""
    ref = trainable_copy(model)
    xi = x.clone().requires_grad_()
    ref(xi)[0, target].backward()
    return xi.grad.detach()


# ------------------------------------------------------------------------------------------------ saliency


def test_saliency_matches_central_finite_differences():
    model, x = tiny(), batch(n=1, size=6)
    target, eps = 3, 1e-6
    fd = torch.zeros_like(x)
    flat = x.flatten()
    with torch.no_grad():
        for i in range(flat.numel()):
            plus, minus = flat.clone(), flat.clone()
            plus[i] += eps
            minus[i] -= eps
            fd.view(-1)[i] = (model(plus.view_as(x))[0, target] - model(minus.view_as(x))[0, target]) / (2 * eps)
    expected = fd.abs().amax(1).float()
    got = explain("saliency", model, x, [target])
    assert got.shape == (1, 6, 6) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_smoothgrad_with_zero_noise_is_saliency():
    model, x = tiny(), batch(n=2)
    sal = explain("saliency", model, x, [1, 2])
    smooth = explain("smoothgrad", model, x, [1, 2], samples=7, noise=0.0)
    torch.testing.assert_close(smooth, sal, rtol=1e-6, atol=1e-9)


def test_smoothgrad_averages_saliency_over_its_documented_noise(monkeypatch):
    monkeypatch.setattr("service.engine.base.BACKWARD_CHUNK", 3)
    model, x = tiny(), batch(n=2)
    got = explain("smoothgrad", model, x, [1, 4], samples=5, noise=0.2, seed=7)
    expected = []
    for b, c in enumerate([1, 4]):
        sigma = 0.2 * float(x[b].max() - x[b].min())
        maps = [input_grad(model, x[b:b + 1] + sigma * smoothgrad_noise(7, s, x.shape[1:], device="cpu",
                                                                          dtype=x.dtype), c).abs().amax(1)[0]
                for s in range(5)]
        expected.append(torch.stack(maps).mean(0))
    torch.testing.assert_close(got, torch.stack(expected).float(), rtol=1e-5, atol=1e-9)
    assert not torch.allclose(got, explain("smoothgrad", model, x, [1, 4], samples=5, noise=0.2, seed=8))


# ------------------------------------------------------------------------------------------------ guided backprop


class GuidedNet(nn.Module):
    """Three ReLUs reached three different ways: nn.ReLU(inplace=True), F.relu, Tensor.relu."""

    def __init__(self):
        super().__init__()
        self.l1, self.r1 = nn.Linear(8, 7), nn.ReLU(inplace=True)
        self.l2, self.l3, self.l4 = nn.Linear(7, 6), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        a1 = self.r1(self.l1(x.flatten(1)))
        a2 = F.relu(self.l2(a1))
        a3 = self.l3(a2).relu()
        return self.l4(a3)


def hand_guided(model: GuidedNet, x: torch.Tensor, c: int, guided: bool = True) -> torch.Tensor:
    """Backward by hand: at each ReLU keep R only where the forward activation and (guided) R itself are > 0."""
    h = x.flatten(1)[0]
    z1 = model.l1.weight @ h + model.l1.bias
    a1 = z1.clamp_min(0)
    z2 = model.l2.weight @ a1 + model.l2.bias
    a2 = z2.clamp_min(0)
    z3 = model.l3.weight @ a2 + model.l3.bias
    a3 = z3.clamp_min(0)
    gate = (lambda r: r.clamp_min(0)) if guided else (lambda r: r)
    r = model.l4.weight[c]
    r = model.l3.weight.T @ (gate(r) * (a3 > 0))
    r = model.l2.weight.T @ (gate(r) * (a2 > 0))
    r = model.l1.weight.T @ (gate(r) * (a1 > 0))
    return r.view(x.shape[1:])


def test_guided_backprop_matches_the_hand_derived_rule_for_every_relu_spelling():
    torch.manual_seed(3)
    model = frozen(GuidedNet().double())
    x = torch.randn(2, 2, 2, 2, dtype=torch.float64)
    got = explain("guided-backprop", model, x, [0, 2])
    for b, c in enumerate([0, 2]):
        g = hand_guided(model, x[b:b + 1], c)
        torch.testing.assert_close(got[b], g.abs().amax(0).float(), rtol=1e-6, atol=1e-9)
    # The rule must bite: plain gradients differ on this net.
    plain = torch.stack([hand_guided(model, x[b:b + 1], c, guided=False).abs().amax(0)
                         for b, c in enumerate([0, 2])]).float()
    assert not torch.allclose(got, plain)
    torch.testing.assert_close(explain("saliency", model, x, [0, 2]), plain, rtol=1e-6, atol=1e-9)


def test_guided_mode_only_passes_positive_gradients_and_counts_relus():
    torch.manual_seed(0)
    x = torch.randn(4, 6, requires_grad=True)
    seen = []
    with GuidedReLUMode() as mode:
        a = F.relu(x)
        b = torch.relu(x * 2)
        c = torch.relu_(x * 3)
        d = F.relu(x * 4, True)
        e = (x * 5).relu_()
    assert mode.count == 5
    for out, k in zip((a, b, c, d, e), (1, 2, 3, 4, 5)):
        upstream = torch.randn(4, 6)
        (g,) = torch.autograd.grad(out, x, upstream)
        expected = k * upstream.clamp_min(0) * (x * k > 0)
        torch.testing.assert_close(g, expected)
        seen.append(out)
    assert torch.equal(c, (x * 3).clamp_min(0))


def test_guided_inplace_relu_keeps_aliasing_semantics():
    class Aliasing(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            h = self.lin(x.flatten(1))
            torch.relu_(h)  # return value ignored: h itself must be rectified
            return self.out(h)

    torch.manual_seed(0)
    model = frozen(Aliasing().double())
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    got = explain("guided-backprop", model, x, [0, 1, 0])
    h = model.lin(x.flatten(1)).clamp_min(0)
    for b, c in enumerate([0, 1, 0]):
        r = model.lin.weight.T @ (model.out.weight[c].clamp_min(0) * (h[b] > 0))
        torch.testing.assert_close(got[b], r.view(1, 2, 2).abs().amax(0).float())


def count_relu_module_calls(model, x):
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return len(calls)


@pytest.mark.parametrize("arch, functional_relus", [("resnet18", 0), ("densenet121", 1)])
def test_guided_mode_catches_torchvision_inplace_relus_and_densenets_functional_relu(arch, functional_relus):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = frozen(getattr(torchvision.models, arch)(weights=None))
    x = torch.randn(1, 3, 32, 32)
    modules = count_relu_module_calls(model, x)
    with torch.enable_grad(), GuidedReLUMode() as mode:
        model(x.requires_grad_())
    assert mode.count == modules + functional_relus


def test_guided_backprop_refuses_a_model_without_relu():
    torchvision = pytest.importorskip("torchvision")
    model = frozen(torchvision.models.efficientnet_b0(weights=None))
    with pytest.raises(InvalidOption, match="needs ReLU"):
        explain("guided-backprop", model, torch.randn(1, 3, 32, 32), [0])


def test_guided_gradcam_is_upsampled_gradcam_times_guided_backprop():
    model, x = tiny(), batch(n=2, size=16)
    gb = explain("guided-backprop", model, x, [0, 3])
    cam = METHODS["gradcam"].explain(model, x, torch.tensor([0, 3]), layer="features", task="multiclass")
    up = F.interpolate(cam[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    got = METHODS["guided-gradcam"].explain(model, x, torch.tensor([0, 3]), layer="features", task="multiclass")
    assert got.shape == (2, 16, 16) and float(got.max()) > 0
    torch.testing.assert_close(got, up * gb, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------------------------ integrated gradients


@pytest.mark.parametrize("rule", ["riemann-left", "riemann-right", "riemann-middle", "trapezoid"])
def test_integrated_gradients_matches_a_manual_quadrature(rule, monkeypatch):
    monkeypatch.setattr("service.engine.base.BACKWARD_CHUNK", 4)
    model, x = tiny(), batch(n=2)
    alphas, weights = integration_rule(rule, 5)
    assert abs(sum(weights) - 1) < 1e-12
    got = explain("integrated-gradients", model, x, [1, 2], steps=5, rule=rule)
    for b, c in enumerate([1, 2]):
        avg = sum(w * input_grad(model, a * x[b:b + 1], c) for a, w in zip(alphas, weights))
        torch.testing.assert_close(got[b], (x[b:b + 1] * avg).sum(1)[0].float(), rtol=1e-5, atol=1e-9)


def test_integrated_gradients_completeness():
    model, x = tiny(), batch(n=2)
    got = explain("integrated-gradients", model, x, [1, 2], steps=256)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x)))[[0, 1], [1, 2]]
    assert float(gap.abs().min()) > 1e-3
    torch.testing.assert_close(got.sum((1, 2)).double(), gap, rtol=1e-2, atol=1e-4)


def test_integrated_gradients_completeness_on_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = frozen(torchvision.models.resnet18(weights=None))
    x = torch.randn(1, 3, 64, 64)
    target = 7
    got = explain("integrated-gradients", model, x, [target], steps=64, baseline="blur")
    from service.engine.baselines import make_baseline

    with torch.no_grad():
        gap = float(model(x)[0, target] - model(make_baseline(x, "blur"))[0, target])
    assert abs(gap) > 1e-3
    assert abs(float(got.sum()) - gap) <= 0.05 * abs(gap)


def test_integrated_gradients_baselines_and_sign_options():
    from service.engine.baselines import gaussian_blur, make_baseline

    x = batch(n=2)
    lo = [-2.0, -1.5, -1.0]
    black = make_baseline(x, "black", input_range=(lo, [1.0, 1.0, 1.0]))
    assert torch.equal(black[:, :, 0, 0], torch.tensor([lo, lo], dtype=x.dtype))
    assert torch.equal(make_baseline(x, "black")[:, :, 3, 3], x.amin((2, 3)))
    torch.testing.assert_close(make_baseline(x, "mean")[:, :, 5, 1], x.mean((2, 3)))
    flat = torch.full((1, 3, 8, 8), 0.7, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    assert float(make_baseline(x, "blur").std()) < float(x.std())

    model = tiny()
    signed = explain("integrated-gradients", model, x, [0, 1], steps=4)
    assert float(signed.min()) < 0 < float(signed.max())
    torch.testing.assert_close(explain("integrated-gradients", model, x, [0, 1], steps=4, sign="positive"),
                               signed.clamp_min(0))
    torch.testing.assert_close(explain("integrated-gradients", model, x, [0, 1], steps=4, sign="absolute"),
                               signed.abs())
    with_black = explain("integrated-gradients", model, x, [0, 1], steps=4, baseline="black",
                         input_range=(lo, [1.0] * 3))
    assert not torch.allclose(with_black, signed)
    with pytest.raises(InvalidOption, match="trapezoid"):
        explain("integrated-gradients", model, x, [0, 1], steps=1, rule="trapezoid")
