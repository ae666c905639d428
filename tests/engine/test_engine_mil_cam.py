"""mil-gradcam: a hand computation with torch.autograd (tiled and overlapping strides, crop), a one-patch bag equal to
the plain Grad-CAM of the encoder + head, a chunked encoder equal to an unchunked one, batch independence, the model
left untouched, and the layer errors."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from service.engine import METHODS, get_method
from service.engine.mil import GatedAttention, Tiling, tile
from service.engine.mil_cam import patch_layers, stitch_patch_maps
from service.engine.targets import ClassLogit, TargetRequest
from service.errors import InvalidOption
from tests.engine.test_engine_mil import TinyMIL

PATCH = 16


class ConvMIL(nn.Module):
    """Conv encoder (8 x 8 maps per 16-px patch) → GAP → gated attention → linear head, chunked over the patches."""

    def __init__(self, k: int = 3, chunk: int = 1024) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(OrderedDict(
            c1=nn.Conv2d(3, 4, 3, stride=2, padding=1), r1=nn.ReLU(), c2=nn.Conv2d(4, 6, 3, padding=1), r2=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten()))
        self.att = GatedAttention(6, hidden=4)
        self.head = nn.Linear(6, k)
        with torch.no_grad():   # a peaked attention: the patches' gradients differ (random init makes them alike)
            self.att.w.weight.mul_(30)
            self.encoder.c2.bias.add_(0.05)
        self.chunk = chunk

    def forward(self, bags: torch.Tensor) -> dict[str, torch.Tensor]:
        b, n = bags.shape[:2]
        flat = bags.reshape(b * n, *bags.shape[2:])
        h = torch.cat([self.encoder(c) for c in flat.split(self.chunk)]).reshape(b, n, -1)
        a = self.att(h)
        return {"logits": self.head(GatedAttention.pool(h, a)[:, 0]), "attention": a, "patch_logits": self.head(h)}


def _bags(height: int, width: int, stride: int, b: int = 2, seed: int = 3) -> tuple[torch.Tensor, Tiling]:
    t = Tiling.of(height=height, width=width, patch=PATCH, stride=stride)
    g = torch.Generator().manual_seed(seed)

    def image() -> torch.Tensor:   # noise whose amplitude varies over 8-px cells: patches unlike each other
        gain = (4 * torch.rand(1, math.ceil(height / 8), math.ceil(width / 8), generator=g)) ** 2
        gain = gain.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :height, :width]
        return torch.randn(3, height, width, generator=g) * gain

    return torch.stack([tile(image(), t) for _ in range(b)]), t


def _by_hand(model: ConvMIL, bags: torch.Tensor, t: Tiling, classes: list[list[int]]) -> list[torch.Tensor]:
    """Grad-CAM of the tiled feature map computed directly: A = encoder[:4](patches) with autograd, the channel
    weights the gradient's mean over patches and positions, the patch maps placed and averaged cell by cell."""
    maps = []
    for b, cs in enumerate(classes):
        a = model.encoder[:4](bags[b]).detach().requires_grad_()                   # [N, K, 8, 8]
        h = model.encoder[4:](a)[None]
        logits = model.head(GatedAttention.pool(h, model.att(h))[:, 0])[0]
        for c in cs:
            (g,) = torch.autograd.grad(logits[c], a, retain_graph=True)
            alpha = g.mean((0, 2, 3))                                              # [K]
            cams = torch.relu((alpha[None, :, None, None] * a).sum(1)).detach()   # [N, 8, 8]
            step = t.stride * 8 // PATCH
            total = torch.zeros((t.rows - 1) * step + 8, (t.cols - 1) * step + 8)
            count = torch.zeros_like(total)
            for n in range(t.count):
                r, q = divmod(n, t.cols)
                total[r * step:r * step + 8, q * step:q * step + 8] += cams[n]
                count[r * step:r * step + 8, q * step:q * step + 8] += 1
            maps.append((total / count)[:math.ceil(t.height * 8 / PATCH), :math.ceil(t.width * 8 / PATCH)])
    return maps


@pytest.mark.parametrize("height, width, stride", [(32, 48, 16), (30, 40, 16), (30, 40, 8)])
def test_matches_a_hand_computation(height, width, stride):
    model = ConvMIL().eval()
    bags, t = _bags(height, width, stride)
    classes = [[0, 2], [1]]
    reqs = [TargetRequest(tuple(ClassLogit(c) for c in cs)) for cs in classes]
    ex = get_method("mil-gradcam").explain_bags(model, bags, reqs, tiling=t, layer="encoder.r2")
    want = _by_hand(model, bags, t, classes)
    assert ex.maps.shape == (3, *want[0].shape) == (3, math.ceil(height / 2), math.ceil(width / 2))
    for got, expected in zip(ex.maps, want, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.amax()))
    assert float(ex.maps.amax()) > 0
    with torch.no_grad():
        probs = torch.softmax(model(bags)["logits"], 1)
    torch.testing.assert_close(ex.scores, torch.stack([probs[0, 0], probs[0, 2], probs[1, 1]]))


def test_default_layer_is_the_last_spatial_per_patch_map():
    model = ConvMIL().eval()
    found = dict(patch_layers(model, (3, PATCH, PATCH)))
    assert found["encoder.r2"] == (6, 8, 8) and found["encoder.gap"] == (6, 1, 1) and "head" not in found
    bags, t = _bags(32, 32, 16)
    method = get_method("mil-gradcam")
    auto = method.explain_bags(model, bags, [TargetRequest()] * 2, tiling=t)
    named = method.explain_bags(model, bags, [TargetRequest()] * 2, tiling=t, layer="encoder.r2")
    torch.testing.assert_close(auto.maps, named.maps)


def test_one_patch_bag_is_the_plain_gradcam_of_encoder_and_head():
    """A bag of one patch covering the whole image: attention over one patch is 1, so the model is head(encoder(x))
    and mil-gradcam must be the image Grad-CAM of that CNN at the same layer."""
    model = ConvMIL().eval()
    cnn = nn.Sequential(model.encoder, model.head).eval()
    torch.manual_seed(5)
    images = torch.randn(2, 3, PATCH, PATCH)
    t = Tiling.of(height=PATCH, width=PATCH, patch=PATCH, stride=PATCH)
    bags = torch.stack([tile(x, t) for x in images])                              # [2, 1, 3, 16, 16]
    for c in range(3):
        ex = get_method("mil-gradcam").explain_bags(model, bags, [TargetRequest((ClassLogit(c),))] * 2, tiling=t,
                                                    layer="encoder.r2")
        plain = get_method("gradcam").explain(cnn, images, torch.tensor([c, c]), layer="0.r2", task="multiclass")
        torch.testing.assert_close(ex.maps, plain, rtol=1e-5, atol=1e-7)
        assert float(plain.amax()) > 0 or c != 0


def test_chunked_encoder_gives_the_unchunked_map():
    bags, t = _bags(48, 48, 16)                                                    # 2 bags x 9 patches = 18 rows
    reqs = [TargetRequest(top_k=2)] * 2
    whole = get_method("mil-gradcam").explain_bags(ConvMIL().eval(), bags, reqs, tiling=t, layer="encoder.r2")
    for chunk in (4, 5, 1):
        parts = get_method("mil-gradcam").explain_bags(ConvMIL(chunk=chunk).eval(), bags, reqs, tiling=t,
                                                       layer="encoder.r2")
        torch.testing.assert_close(parts.maps, whole.maps, rtol=1e-5, atol=1e-7)
        assert [r.index for r in parts.rows.targets] == [r.index for r in whole.rows.targets]


def test_bags_are_independent_and_the_model_untouched():
    model = ConvMIL().eval()
    frozen = ConvMIL().eval().requires_grad_(False)
    frozen.encoder[2].weight.requires_grad_(True)   # a mixed model: every flag must come back as it was
    bags, t = _bags(32, 48, 16, b=3)
    method = get_method("mil-gradcam")
    for m in (model, frozen):
        before = {k: v.clone() for k, v in m.state_dict().items()}
        flags = [p.requires_grad for p in m.parameters()]
        req = TargetRequest((ClassLogit(1),))
        together = method.explain_bags(m, bags, [req] * 3, tiling=t, layer="encoder.r2").maps
        other = bags.clone()
        other[0] = torch.randn_like(other[0]) * 4
        changed = method.explain_bags(m, other, [req] * 3, tiling=t, layer="encoder.r2").maps
        for i in range(3):
            alone = method.explain_bags(m, bags[i:i + 1], [req], tiling=t, layer="encoder.r2").maps
            torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(changed[1:], together[1:], rtol=1e-5, atol=1e-7)
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
        assert flags == [p.requires_grad for p in m.parameters()]
        assert all(p.grad is None for p in m.parameters())
        assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())
        assert m.training is False


class SideBranch(ConvMIL):
    def __init__(self) -> None:
        super().__init__()
        self.side = nn.Conv2d(3, 2, 3)

    def forward(self, bags: torch.Tensor) -> dict[str, torch.Tensor]:
        self.side(bags.flatten(0, 1))   # runs once per patch, reaches nothing
        return super().forward(bags)


@pytest.mark.parametrize("frozen", [False, True])
def test_layer_errors_are_invalid_options_naming_the_layer(frozen):
    model = SideBranch().eval().requires_grad_(not frozen)
    bags, t = _bags(32, 32, 16)
    method = get_method("mil-gradcam")
    cases = [("side", "do not depend"), ("head", "not a per-patch map"), ("nope", "no module"),
             ("att", "not a per-patch map")]
    for layer, message in cases:
        with pytest.raises(InvalidOption, match=message) as info:
            method.explain_bags(model, bags, [TargetRequest()] * 2, tiling=t, layer=layer)
        assert info.value.errors[0].field == "layer"
    assert not any(mod._forward_hooks for mod in model.modules())
    _, overlapping = _bags(32, 32, 8)
    with pytest.raises(InvalidOption, match="stride") as info:   # a 1x1 map per 16-px patch cannot step 8 px
        method.explain_bags(model, _bags(32, 32, 8)[0], [TargetRequest()] * 2, tiling=overlapping,
                            layer="encoder.gap")
    assert info.value.errors[0].field == "layer"


def test_a_model_without_per_patch_maps_is_refused_and_the_method_is_mil_only():
    m = METHODS["mil-gradcam"]
    assert m.tasks == ("mil",) and m.uses_layer and get_method("milgradcam") is m
    with pytest.raises(InvalidOption, match="per-patch map"):
        m.check_model(TinyMIL().eval(), (3, 32, 32))
    m.check_model(ConvMIL().eval(), (3, PATCH, PATCH))
    with pytest.raises(InvalidOption, match="mil models"):
        next(m.steps(ConvMIL(), torch.zeros(1, 3, 16, 16), [TargetRequest()], task="multiclass"))


def test_stitch_averages_overlaps_like_patch_map():
    t = Tiling.of(height=48, width=32, patch=32, stride=16)                       # 2 x 1 patches, 4 x 4 maps
    maps = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 3.0)])[None]
    out = stitch_patch_maps(maps, t)
    assert out.shape == (1, 6, 4)
    torch.testing.assert_close(out[0, :, 0], torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0]))
