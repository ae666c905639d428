"""Attention-MIL engine: gated attention against a hand computation, tiling and the patch map, the method's rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.engine import METHODS, get_method
from service.engine.mil import GatedAttention, MILOutput, Tiling, mil_outputs, patch_map, tile
from service.engine.targets import ClassLogit, TargetRequest
from service.errors import InvalidOption, ModelExecutionError


class TinyMIL(nn.Module):
    """Mean-colour encoder → gated attention (one branch per class when ``branches`` = K) → linear head."""

    def __init__(self, k: int = 3, branches: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(3, 8)
        self.att = GatedAttention(8, hidden=4, branches=branches)
        self.head = nn.Linear(8, k)

    def forward(self, bags: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.enc(bags.mean((3, 4))))          # [B, N, 8]
        a = self.att(h)
        z = GatedAttention.pool(h, a)
        logits = self.head(z[:, 0]) if a.shape[1] == 1 else torch.einsum("bkd,kd->bk", z, self.head.weight) + \
            self.head.bias
        return {"logits": logits, "attention": a, "patch_logits": self.head(h)}


def test_gated_attention_matches_hand_computation():
    torch.manual_seed(1)
    att = GatedAttention(5, hidden=3)
    h = torch.randn(2, 7, 5)
    att.requires_grad_(False)
    a = att(h)
    V, U, w = att.V, att.U, att.w
    for b in range(2):
        s = [float(w(torch.tanh(V(h[b, k])) * torch.sigmoid(U(h[b, k])))) for k in range(7)]
        e = torch.exp(torch.tensor(s) - max(s))
        torch.testing.assert_close(a[b, 0], e / e.sum(), rtol=1e-5, atol=1e-6)
    assert a.shape == (2, 1, 7)
    torch.testing.assert_close(a.sum(2), torch.ones(2, 1))


def test_tiling_covers_the_image_and_pads():
    t = Tiling.of(height=100, width=70, patch=32, stride=16)
    assert (t.rows, t.cols) == (6, 4)   # ceil((100-32)/16)+1, ceil((70-32)/16)+1
    assert t.padded == (112, 80) and t.cells == (7, 5)
    x = torch.arange(3 * 100 * 70, dtype=torch.float32).reshape(3, 100, 70)
    bag = tile(x, t)
    assert bag.shape == (24, 3, 32, 32)
    torch.testing.assert_close(bag[5], x[:, 16:48, 16:48])   # row 1, col 1
    assert float(bag[-1][:, -8:].abs().sum()) == 0.0          # padded rows at the bottom
    with pytest.raises(ValueError):
        Tiling.of(height=10, width=10, patch=32, stride=12)  # stride must divide the patch


def test_patch_map_averages_overlapping_patches():
    t = Tiling.of(height=48, width=32, patch=32, stride=16)     # 2 x 1 patches
    m = patch_map(torch.tensor([[1.0, 3.0]]), t)
    assert m.shape == (1, 3, 2)
    torch.testing.assert_close(m[0], torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    t1 = Tiling.of(height=64, width=64, patch=32, stride=32)
    v = torch.arange(4.0)[None]
    torch.testing.assert_close(patch_map(v, t1)[0], v.reshape(2, 2))


def test_mil_outputs_checks_the_protocol():
    logits, att = torch.zeros(2, 3), torch.ones(2, 5) / 5
    out = mil_outputs((logits, att), 2, 5)
    assert isinstance(out, MILOutput) and out.attention.shape == (2, 1, 5) and out.patch_logits is None
    with pytest.raises(ModelExecutionError, match="attention"):
        mil_outputs({"logits": logits, "attention": torch.ones(2, 4)}, 2, 5)
    with pytest.raises(ModelExecutionError, match="patch_logits"):
        mil_outputs((logits, att, torch.zeros(2, 5, 2)), 2, 5)
    with pytest.raises(ModelExecutionError):
        mil_outputs(logits, 2, 5)


@pytest.fixture(scope="module")
def bags():
    torch.manual_seed(3)
    t = Tiling.of(height=64, width=96, patch=32, stride=32)
    return torch.randn(3, t.count, 3, 32, 32), t


def test_attention_map_is_the_pooling_weights(bags):
    x, t = bags
    model = TinyMIL().eval()
    ex = get_method("attention-mil").explain_bags(model, x, [TargetRequest((ClassLogit(1),))] * 3, tiling=t)
    with torch.no_grad():
        out = model(x)
    assert ex.maps.shape == (3, 2, 3)
    torch.testing.assert_close(ex.maps.reshape(3, -1), out["attention"][:, 0])
    torch.testing.assert_close(ex.scores, torch.softmax(out["logits"], 1)[:, 1])


def test_confidence_and_per_class_branches(bags):
    x, t = bags
    model = TinyMIL(branches=3).eval()
    method = get_method("attention-mil")
    reqs = [TargetRequest((ClassLogit(0), ClassLogit(2)))]
    with torch.no_grad():
        out = model(x[:1])
    att = method.explain_bags(model, x[:1], reqs, tiling=t)
    torch.testing.assert_close(att.maps.reshape(2, -1), out["attention"][0, [0, 2]])
    conf = method.explain_bags(model, x[:1], reqs, tiling=t, weights="confidence")
    torch.testing.assert_close(conf.maps.reshape(2, -1), torch.softmax(out["patch_logits"][0], 1)[:, [0, 2]].T)
    prod = method.explain_bags(model, x[:1], reqs, tiling=t, weights="product")
    torch.testing.assert_close(prod.maps, att.maps * conf.maps)


def test_top_k_rows_and_no_patch_logits(bags):
    x, t = bags

    class NoPatches(TinyMIL):
        def forward(self, b):
            out = super().forward(b)
            return out["logits"], out["attention"][:, 0]

    model = NoPatches().eval()
    ex = get_method("attention-mil").explain_bags(model, x, [TargetRequest(top_k=2)] * 3, tiling=t)
    assert len(ex.rows) == 6
    with pytest.raises(InvalidOption, match="patch_logits"):
        get_method("attention-mil").explain_bags(model, x, [TargetRequest()] * 3, tiling=t, weights="confidence")


def test_map_is_independent_of_other_bags_and_model_untouched(bags):
    x, t = bags
    model = TinyMIL().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    method = get_method("attention-mil")
    req = TargetRequest((ClassLogit(2),))
    alone = method.explain_bags(model, x[1:2], [req], tiling=t).maps
    together = method.explain_bags(model, x, [req] * 3, tiling=t).maps
    other = x.clone()
    other[0] = torch.randn_like(other[0]) * 5
    changed = method.explain_bags(model, other, [req] * 3, tiling=t).maps
    torch.testing.assert_close(together[1:2], alone)
    torch.testing.assert_close(changed[1:2], alone)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert grads == [p.requires_grad for p in model.parameters()]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert model.training is False


def test_method_declares_mil_only():
    m = METHODS["attention-mil"]
    assert m.tasks == ("mil",) and get_method("mil") is m
    with pytest.raises(InvalidOption):
        next(m.steps(TinyMIL(), torch.zeros(1, 3, 32, 32), [TargetRequest()], task="multiclass"))
