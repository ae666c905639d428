"""Every common vision architecture: the default layer (checked against a table, with its reason), the methods the
applicability probe offers and refuses, a finite non-constant map from every offered method, and agreement with
pytorch-grad-cam / captum on the same layer and reshape.

Random-init torchvision models at small inputs where the architecture allows (64 px; ViT with ``image_size=64``:
a 4x4 patch grid; Swin/MaxViT need 224). Heads that torchvision initialises to zero (ViT) are re-initialised, since a
zero head has no gradient anywhere. The slowest families are marked ``slow`` (CI runs them too).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from engine_support import frozen
from torch import nn

from service.capabilities import probe
from service.engine import METHODS, get_method
from service.engine.layers import choose_target_layer

pgc = pytest.importorskip("pytorch_grad_cam")
torchvision = pytest.importorskip("torchvision")

# family: (builder, input side, default layer, refused methods)
NEGATIVE = {"xgradcam"}                           # needs non-negative activations at the layer
ATTENTION = {"attention-rollout", "attention-gradients"}
NO_GUIDED = {"guided-backprop", "guided-gradcam"}
FAMILIES = {
    "resnet18": (lambda: torchvision.models.resnet18(), 64, "layer4", ATTENTION),
    "resnext50_32x4d": (lambda: torchvision.models.resnext50_32x4d(), 64, "layer4", ATTENTION),
    "wide_resnet50_2": (lambda: torchvision.models.wide_resnet50_2(), 64, "layer4", ATTENTION),
    "vgg11": (lambda: torchvision.models.vgg11(), 64, "features.19", {"cam"} | ATTENTION),
    "densenet121": (lambda: torchvision.models.densenet121(), 64, "features", NEGATIVE | ATTENTION),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), 64, "features", ATTENTION),  # ReLU6: guided too
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(), 64, "features",
                           {"cam"} | NEGATIVE | ATTENTION),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(), 64, "features",
                        NO_GUIDED | NEGATIVE | ATTENTION),
    "efficientnet_v2_s": (lambda: torchvision.models.efficientnet_v2_s(), 64, "features",
                          NO_GUIDED | NEGATIVE | ATTENTION),
    "regnet_y_400mf": (lambda: torchvision.models.regnet_y_400mf(), 64, "trunk_output", ATTENTION),
    "convnext_tiny": (lambda: torchvision.models.convnext_tiny(), 64, "features",
                      {"cam"} | NO_GUIDED | NEGATIVE | ATTENTION),
    "shufflenet_v2_x0_5": (lambda: torchvision.models.shufflenet_v2_x0_5(), 64, "conv5", ATTENTION),  # GAP: x.mean
    "squeezenet1_1": (lambda: torchvision.models.squeezenet1_1(), 64, "features", {"cam"} | ATTENTION),
    "googlenet": (lambda: torchvision.models.googlenet(aux_logits=False, init_weights=False), 64, "inception5b",
                  ATTENTION),
    "vit_b_16": (lambda: torchvision.models.vit_b_16(image_size=64), 64, "encoder.layers.encoder_layer_11.ln_1",
                 {"cam", "fused-cam"} | NO_GUIDED | NEGATIVE),   # fused-cam: no finer map than the patch grid
}
SLOW = {
    "inception_v3": (lambda: torchvision.models.inception_v3(aux_logits=False, init_weights=False), 299, "Mixed_7c",
                     ATTENTION),
    "swin_t": (lambda: torchvision.models.swin_t(), 224, "permute", NO_GUIDED | NEGATIVE | ATTENTION),
    "maxvit_t": (lambda: torchvision.models.maxvit_t(), 224, "blocks.3", {"cam"} | NO_GUIDED | NEGATIVE | ATTENTION),
}
CASES = [pytest.param(k, id=k) for k in FAMILIES] + [pytest.param(k, id=k, marks=pytest.mark.slow) for k in SLOW]
TABLE = {**FAMILIES, **SLOW}


def build(name: str) -> tuple[nn.Module, int]:
    builder, side, _, _ = TABLE[name]
    torch.manual_seed(0)
    model = builder()
    for m in model.modules():   # zero-initialised heads (ViT) have no gradient anywhere: give them weights
        if isinstance(m, nn.Linear) and not bool(m.weight.abs().sum()):
            nn.init.normal_(m.weight, std=0.02)
    return frozen(model), side


@pytest.fixture(scope="module")
def models():
    cache: dict[str, tuple[nn.Module, int]] = {}

    def get(name: str) -> tuple[nn.Module, int]:
        if name not in cache:
            cache.clear()  # one model at a time: bounded memory
            cache[name] = build(name)
        return cache[name]

    return get


@pytest.mark.parametrize("name", CASES)
def test_default_layer_and_the_methods_offered(models, name):
    """Every family: the table's default layer (with a reason) and exactly the table's refusals, each with its
    reason, from the same probe the registry runs at load."""
    model, side = models(name)
    shape = (3, side, side)
    layer, reason = choose_target_layer(model, shape)
    assert layer == TABLE[name][2], (layer, reason)
    assert reason
    caps = probe(model, input_shape=shape, task="multiclass", target_layer=layer)
    refused = {m for m, why in caps.methods.items() if why is not None}
    assert refused == TABLE[name][3], {m: caps.methods[m] for m in refused ^ TABLE[name][3]}
    assert all(caps.methods[m] for m in refused)
    assert layer in caps.layers


SWEEP = ["resnet18", "densenet121", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16",
         pytest.param("swin_t", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", SWEEP)
def test_every_offered_method_gives_a_finite_non_constant_map(models, name):
    """Images twice the table's side (finer maps), each explained for its most probable class (its least probable
    for counterfactual Grad-CAM, whose map is the evidence against the class): every offered method's map is finite
    and, for some image, not constant."""
    model, side = models(name)
    side = side if name in ("vit_b_16", "swin_t") else 2 * side
    shape = (3, side, side)
    layer, _ = choose_target_layer(model, shape)
    caps = probe(model, input_shape=shape, task="multiclass", target_layer=layer)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    cheap = {"smoothgrad": {"samples": 2}, "integrated-gradients": {"steps": 2}, "rise": {"masks": 8, "cells": 2},
             "occlusion": {"window": side // 2, "stride": side // 2}, "scorecam": {"channels": 8}}
    for method in caps.usable_methods:
        t = logits.argmin(1) if method == "gradcam-counterfactual" else logits.argmax(1)
        maps = get_method(method).explain(model, x, t, layer=None, task="multiclass", **cheap.get(method, {}))
        assert torch.isfinite(maps).all(), method
        assert any(float(m.std()) > 0 for m in maps), f"{method}: constant maps on {name}"


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


def _gradcampp_closed_form(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """The paper's closed form on grad-cam's own activations and gradients, without grad-cam's ``eps = 1e-7`` in
    the denominator: on random-init networks the gradients are ~1e-5, so that eps outweighs ``g^2`` and reshapes the
    map (we leave it out on purpose; see GradCAMPlusPlus)."""
    g2, g3 = grads ** 2, grads ** 3
    denom = 2 * g2 + acts.sum(axis=(2, 3), keepdims=True) * g3
    alpha = np.where((grads != 0) & (denom != 0), g2 / np.where(denom != 0, denom, 1), 0)
    weights = (alpha * np.maximum(grads, 0)).sum(axis=(2, 3))
    return (weights[:, :, None, None] * acts).sum(1)


def _gradcam_pkg_layer_maps(cls, model: nn.Module, module: nn.Module, x: torch.Tensor, target: int,
                            reshape=None, closed_form: bool = False) -> torch.Tensor:
    """pytorch-grad-cam's map *before* its resize and normalisation: it keeps them in ``compute_cam_per_layer``;
    we read the raw weighted sum through its own ``get_cam_image`` on the activations it captured (Grad-CAM++:
    its closed form without eps on those activations, see :func:`_gradcampp_closed_form`)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    trainable = copy.deepcopy(model).requires_grad_(True)
    layer = dict(trainable.named_modules())[next(n for n, m in model.named_modules() if m is module)]
    with cls(model=trainable, target_layers=[layer], reshape_transform=reshape) as cam:
        cam.activations_and_grads(x)
        out = cam.activations_and_grads(x)
        trainable.zero_grad()
        loss = ClassifierOutputTarget(target)(out[0])
        loss.backward()
        acts = cam.activations_and_grads.activations[-1].cpu().numpy()
        grads = cam.activations_and_grads.gradients[-1].cpu().numpy()
        if closed_form:
            raw = _gradcampp_closed_form(acts.astype(np.float64), grads.astype(np.float64))
        else:
            raw = cam.get_cam_image(x, [layer], [ClassifierOutputTarget(target)], acts, grads, False)
    return torch.from_numpy(np.maximum(raw, 0)).float()


def _vit_reshape(tensor: torch.Tensor, grid: int) -> torch.Tensor:
    result = tensor[:, 1:, :].reshape(tensor.size(0), grid, grid, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def _swin_reshape(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2)


AGREE = [
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", lambda t: _vit_reshape(t, 4)),
    ("convnext_tiny", "features", None),
    ("efficientnet_b0", "features", None),
    ("mobilenet_v3_small", "features", None),
    ("densenet121", "features.denseblock4", None),  # grad-cam records `features` after DenseNet's in-place F.relu
    pytest.param("swin_t", "features.7", _swin_reshape, marks=pytest.mark.slow, id="swin_t-nhwc"),
]


@pytest.mark.parametrize(("name", "layer", "reshape"), AGREE, ids=[a[0] if isinstance(a, tuple) else None
                                                                     for a in AGREE])
@pytest.mark.parametrize(("ours", "theirs"), [("gradcam", "GradCAM"), ("gradcam-pp", "GradCAMPlusPlus"),
                                              ("layercam", "LayerCAM")])
def test_cam_methods_agree_with_pytorch_grad_cam(models, name, layer, reshape, ours, theirs):
    """On the same layer and reshape, our raw maps and grad-cam's raw maps (before its resize/normalise) correlate
    at r >= 0.98."""
    model, side = models(name)
    module = model.get_submodule(layer)
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        target = int(model(x).argmax())
    cls = getattr(pgc, theirs)
    theirs_map = _gradcam_pkg_layer_maps(cls, model, module, x, target, reshape,
                                         closed_form=ours == "gradcam-pp")[0]
    mine = get_method(ours).explain(model, x, torch.tensor([target]), layer=layer, task="multiclass")[0]
    assert mine.shape == theirs_map.shape
    assert float(mine.std()) > 0
    assert pearson(mine, theirs_map) >= 0.98


def _guided_by_replacement(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """An independent guided backprop: a deep copy whose ReLU-family modules are replaced by modules with the
    guided rule written out (positive gradient times the activation's derivative)."""

    class Guided(torch.autograd.Function):
        @staticmethod
        def forward(ctx, inp, high, slope):
            out = torch.where(inp > 0, inp.clamp(max=high), inp * slope)
            ctx.save_for_backward(inp)
            ctx.high, ctx.slope = high, slope
            return out

        @staticmethod
        def backward(ctx, grad):
            (inp,) = ctx.saved_tensors
            d = torch.where((inp > 0) & (inp < ctx.high), 1.0, torch.where(inp <= 0, ctx.slope, 0.0))
            return d * grad.clamp(min=0), None, None

    class GuidedModule(nn.Module):
        def __init__(self, high, slope):
            super().__init__()
            self.high, self.slope = high, slope

        def forward(self, inp):
            return Guided.apply(inp, self.high, self.slope)

    clone = copy.deepcopy(model)
    for mod in list(clone.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(mod, child_name, GuidedModule(6.0, 0.0))
            elif isinstance(child, nn.ReLU):
                setattr(mod, child_name, GuidedModule(float("inf"), 0.0))
            elif isinstance(child, nn.LeakyReLU):
                setattr(mod, child_name, GuidedModule(float("inf"), child.negative_slope))
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(clone(xg)[0, target], xg)
    return grad.abs().amax(1)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "resnet18"])
def test_guided_backprop_with_relu6_and_partial_relus(models, name):
    """ReLU6 (MobileNetV2) is guided too, checked against an independent module-replacement implementation; where
    captum handles the activation (nn.ReLU only: ResNet, MobileNetV3's ReLUs beside its Hardswish) it agrees with
    captum as well."""
    import captum.attr as ca

    model, side = models(name)
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(3))
    mine = get_method("guided-backprop").explain(model, x, torch.tensor([7]), layer=None, task="multiclass")[0]
    by_hand = _guided_by_replacement(model, x, 7)[0]
    assert pearson(mine, by_hand) >= 0.999
    if not any(isinstance(m, nn.ReLU6) for m in model.modules()):
        theirs = ca.GuidedBackprop(model).attribute(x.clone().requires_grad_(), target=7).abs().amax(1)[0]
        assert pearson(mine, theirs) >= 0.99


def test_leaky_relu_networks_get_guided_backprop():
    model = frozen(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(4, 4, 3, padding=1),
                                 nn.LeakyReLU(0.1, inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 3)))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    mine = get_method("guided-backprop").explain(model, x, torch.tensor([1]), layer=None, task="multiclass")[0]
    assert pearson(mine, _guided_by_replacement(model, x, 1)[0]) >= 0.999


def test_vit_gets_class_specific_gradcam_and_attention_maps(models):
    model, side = models("vit_b_16")
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(5)).expand(2, -1, -1, -1)
    classes = torch.tensor([3, 900])
    for method in ("gradcam", "attention-gradients"):
        maps = get_method(method).explain(model, x, classes, layer=None, task="multiclass")
        assert maps.shape == (2, 4, 4), method            # the patch grid
        assert float((maps[0] - maps[1]).abs().max()) > 0, f"{method} is not class-specific"
    rollout = get_method("attention-rollout").explain(model, x, classes, layer=None, task="multiclass")
    assert rollout.shape == (2, 4, 4) and torch.allclose(rollout[0], rollout[1])  # class-agnostic, as documented
    assert torch.isfinite(rollout).all() and float(rollout.std()) > 0


def test_attention_rollout_by_hand_on_a_tiny_transformer():
    """Rollout equals the product written out from the attention weights nn.MultiheadAttention returns."""
    torch.manual_seed(0)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, 8))
            self.blocks = nn.ModuleList([nn.MultiheadAttention(8, 2, batch_first=True) for _ in range(2)])
            self.norms = nn.ModuleList([nn.LayerNorm(8) for _ in range(2)])
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
            for attn, norm in zip(self.blocks, self.norms):
                h = norm(t)
                t = t + attn(h, h, h, need_weights=False)[0]
            return self.head(t[:, 0])

    model = frozen(Tiny())
    x = torch.randn(1, 3, 16, 16)
    mine = get_method("attention-rollout").explain(model, x, torch.tensor([0]), layer=None, task="multiclass")[0]
    weights = []
    hooks = [b.register_forward_pre_hook(lambda m, a, k: (a, {**k, "need_weights": True,
                                                              "average_attn_weights": False}), with_kwargs=True)
             for b in model.blocks]
    hooks += [b.register_forward_hook(lambda m, a, out: weights.append(out[1])) for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    r = torch.eye(17)
    for w in weights:
        a = 0.5 * w[0].mean(0) + 0.5 * torch.eye(17)
        a = a / a.sum(-1, keepdim=True)
        r = a @ r
    torch.testing.assert_close(mine, r[0, 1:].reshape(4, 4), rtol=1e-5, atol=1e-6)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_fused_attention_model_is_refused_with_the_reason():
    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.qkv = nn.Linear(8, 24)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            q, k, v = self.qkv(t).chunk(3, -1)
            t = t + torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.head(t.mean(1))

    caps = probe(frozen(Fused()), input_shape=(3, 16, 16), task="multiclass", target_layer=None)
    assert "fused kernel" in caps.methods["attention-rollout"]
    assert set(METHODS) >= ATTENTION


def test_cam_is_refused_on_a_zero_initialised_head():
    """torchvision initialises a ViT's new head to zeros: ``W · mean(A) + b`` then equals the logits whatever the
    pooling, so the numerical GAP→linear check would prove nothing; CAM is refused instead of served as zeros."""
    vit = frozen(torchvision.models.vit_b_16(image_size=32, num_classes=3))
    assert float(vit.heads.head.weight.abs().max()) == 0
    layer, _ = choose_target_layer(vit, (3, 32, 32))
    caps = probe(vit, input_shape=(3, 32, 32), task="multiclass", target_layer=layer)
    assert "global-average-pool" in caps.methods["cam"]
    with torch.no_grad():
        vit.heads.head.weight.normal_()
    assert "global-average-pool" in probe(vit, input_shape=(3, 32, 32), task="multiclass",
                                          target_layer=layer).methods["cam"]   # a real head reads the class token


class _RegisterViT(nn.Module):
    """A DeiT/timm-style ViT with a class token and ``registers`` register tokens (Darcet et al. 2024) before the
    patch tokens, built from torchvision's encoder block (a ``python:`` source would return the same)."""

    def __init__(self, registers: int, side: int = 16, patch: int = 4, dim: int = 16, classes: int = 5):
        super().__init__()
        from torchvision.models.vision_transformer import EncoderBlock

        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.prefix = nn.Parameter(torch.randn(1, 1 + registers, dim))
        self.blocks = nn.Sequential(*(EncoderBlock(2, dim, 32, 0.0, 0.0) for _ in range(2)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(len(t), -1, -1), t], 1)
        return self.head(self.norm(self.blocks(t))[:, 0])


def test_register_tokens_need_the_tokens_entry_and_then_give_the_patch_grid():
    """26 tokens = 1 class + 9 registers + 4x4 patches; inferred, the smallest prefix that leaves a square grid
    is 1 (5x5) — wrong, which is what ``tokens: {grid: [4, 4], prefix: 10}`` is for. With it, Grad-CAM at the last
    block's input norm equals the hand computation on the patch tokens."""
    from service.engine.layers import layer_layout, set_token_layout

    torch.manual_seed(0)
    model = frozen(_RegisterViT(registers=9))
    shape = (3, 16, 16)
    layer = "blocks.1.ln_1"
    assert layer_layout(model, layer, shape).grid == (5, 5)          # the inference cannot know
    set_token_layout(model, (4, 4), 10)
    layout = layer_layout(model, layer, shape)
    assert (layout.kind, layout.grid, layout.prefix) == ("tokens", (4, 4), 10)
    chosen, _ = choose_target_layer(model, shape)
    assert chosen == layer
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([1, 3])
    mine = get_method("gradcam").explain(model, x, t, layer=layer, task="multiclass")

    acts = {}
    trainable = copy.deepcopy(model)
    handle = trainable.get_submodule(layer).register_forward_hook(lambda m, a, out: acts.setdefault("a", out))
    logits = trainable(x.requires_grad_(True))
    handle.remove()
    a = acts["a"]
    (g,) = torch.autograd.grad(logits[torch.arange(2), t].sum(), a)
    patches, grads = a[:, 10:].detach(), g[:, 10:]                    # [B, 16, C]
    weights = grads.mean(1, keepdim=True)
    by_hand = (patches * weights).sum(-1).relu().reshape(2, 4, 4)
    torch.testing.assert_close(mine, by_hand, rtol=1e-4, atol=1e-7)
