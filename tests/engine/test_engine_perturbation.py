"""Occlusion and RISE against explicit loops, and occlusion's exact zeros where the model does not look."""

from __future__ import annotations

import pytest
import torch
from engine_support import TinyNet, frozen, randomise_bn
from torch import nn

from service.engine import METHODS
from service.engine.perturbation import occlusion_starts, rise_masks, rise_upsample
from service.errors import InvalidOption


class LeftHalf(nn.Module):
    """Looks only at the left half of the image."""

    def __init__(self):
        super().__init__()
        self.net = TinyNet(classes=3)

    def forward(self, x):
        return self.net(x[..., : x.shape[-1] // 2])


def explain(method, model, x, targets, **params):
    return METHODS[method].explain(model, x, torch.as_tensor(targets), layer=None, task="multiclass", **params)


def test_occlusion_is_exactly_zero_where_the_model_does_not_look(monkeypatch):
    monkeypatch.setattr("service.engine.base.FORWARD_CHUNK", 7)
    torch.manual_seed(0)
    model = frozen(randomise_bn(LeftHalf()))
    x = torch.randn(2, 3, 16, 16)
    got = explain("occlusion", model, x, [0, 2], window=4, stride=2)
    # Windows starting at column >= 8 touch only ignored pixels; those starting at 6 reach columns 6..9.
    assert float(got[..., :8].abs().max()) > 0
    assert torch.equal(got[..., 10:], torch.zeros_like(got[..., 10:]))


def test_occlusion_matches_an_explicit_loop_with_edge_window(monkeypatch):
    monkeypatch.setattr("service.engine.base.FORWARD_CHUNK", 5)
    torch.manual_seed(0)
    model = frozen(randomise_bn(TinyNet()).double())
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    window, stride, targets = 4, 3, [1, 4]
    starts = occlusion_starts(11, window, stride)
    assert starts == [0, 3, 6, 7]  # the last one is flush with the border
    got = explain("occlusion", model, x, targets, window=window, stride=stride, baseline="mean")
    for b, c in enumerate(targets):
        total = torch.zeros(11, 11, dtype=torch.float64)
        count = torch.zeros(11, 11, dtype=torch.float64)
        fill = x[b].mean((1, 2), keepdim=True)
        with torch.no_grad():
            ref = model(x[b:b + 1])[0, c]
            for y0 in starts:
                for x0 in starts:
                    occluded = x[b:b + 1].clone()
                    occluded[0, :, y0:y0 + window, x0:x0 + window] = fill
                    total[y0:y0 + window, x0:x0 + window] += ref - model(occluded)[0, c]
                    count[y0:y0 + window, x0:x0 + window] += 1
        torch.testing.assert_close(got[b], (total / count).float(), rtol=1e-5, atol=1e-7)


def test_occlusion_parameter_limits_name_the_parameter():
    model = frozen(TinyNet())
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(InvalidOption, match="window 20 exceeds the model input size 16x16"):
        explain("occlusion", model, x, [0], window=20)
    import service.engine.perturbation as pert

    with pytest.raises(InvalidOption, match="increase stride"):
        old = pert.MAX_OCCLUSION_WINDOWS
        pert.MAX_OCCLUSION_WINDOWS = 10
        try:
            explain("occlusion", model, x, [0], window=2, stride=1)
        finally:
            pert.MAX_OCCLUSION_WINDOWS = old


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_rise_matches_its_formula(task, monkeypatch):
    monkeypatch.setattr("service.engine.base.FORWARD_CHUNK", 6)
    torch.manual_seed(0)
    model = frozen(randomise_bn(TinyNet()).double())
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    n, cells, keep = 9, 3, 0.4
    got = METHODS["rise"].explain(model, x, torch.tensor([0, 3]), layer=None, task=task, masks=n, cells=cells,
                                  p=keep, seed=5)
    grids, shifts = rise_masks(5, n, cells, keep, (12, 12), device="cpu")
    masks = rise_upsample(grids, shifts, (12, 12))
    assert masks.shape == (n, 1, 12, 12) and float(masks.min()) >= 0 and float(masks.max()) <= 1
    for b, c in enumerate([0, 3]):
        with torch.no_grad():
            logits = model(x[b:b + 1] * masks.double())
        p = torch.softmax(logits, 1)[:, c] if task == "multiclass" else torch.sigmoid(logits[:, c])
        expected = (p[:, None, None] * masks[:, 0].double()).sum(0) / (n * keep)
        torch.testing.assert_close(got[b], expected.float(), rtol=1e-5, atol=1e-7)
    assert bool((got >= 0).all())
