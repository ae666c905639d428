"""Batch independence: a row's map does not depend on the other rows of its batch, for every method.

The batching layer mixes rows of different requests (and several targets of one image) in one call, so explaining
``[x1 (target a), x2 (target b), x1 (target c)]`` must give exactly what each row gives alone.
"""

from __future__ import annotations

import pytest
import torch
from engine_support import TinyNet, frozen, randomise_bn

from service.engine import METHODS

CHEAP = {
    "smoothgrad": {"samples": 5, "noise": 0.1},
    "integrated-gradients": {"steps": 6},
    "occlusion": {"window": 6, "stride": 4},
    "rise": {"masks": 11, "cells": 4},
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = frozen(randomise_bn(TinyNet(classes=6, width=8)))
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(3, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g)
    return model, torch.stack([x1, x2, x1]), torch.tensor([1, 4, 5])


# attention methods: transformers only; task-specific ones (D-RISE: detectors) have their own tests
CNN_METHODS = [m for m in METHODS if METHODS[m].family != "attention" and METHODS[m].tasks is None]


@pytest.mark.parametrize("name", CNN_METHODS)
def test_rows_are_independent(name, tiny, monkeypatch):
    # Small chunks so that perturbation/noise chunks straddle rows.
    monkeypatch.setattr("service.engine.base.FORWARD_CHUNK", 5)
    monkeypatch.setattr("service.engine.base.BACKWARD_CHUNK", 4)
    model, x, t = tiny
    method = METHODS[name]
    params = CHEAP.get(name, {})
    together = method.explain(model, x, t, layer=None, task="multiclass", **params)
    alone = torch.cat([method.explain(model, x[i:i + 1], t[i:i + 1], layer=None, task="multiclass", **params)
                       for i in range(3)])
    assert together.shape == alone.shape and together.dtype == torch.float32
    scale = float(alone.abs().max())
    assert scale > 0, f"{name}: degenerate map on the test net"
    # Float32 rounding only (occlusion subtracts two logits, so its error scales with the logit, not the map).
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5 * scale)
    # Same image, different targets: different maps (the rows really are per-target).
    assert not torch.allclose(together[0], together[2])


@pytest.mark.parametrize("name", ["gradcam", "guided-backprop", "gradcam-pp", "integrated-gradients"])
def test_rows_are_independent_on_resnet18(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = frozen(torchvision.models.resnet18(weights=None))
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(3, 64, 64, generator=g), torch.randn(3, 64, 64, generator=g)
    x, t = torch.stack([x1, x2, x1]), torch.tensor([3, 500, 999])
    params = {"steps": 4} if name == "integrated-gradients" else {}
    method = METHODS[name]
    together = method.explain(model, x, t, layer=None, task="multiclass", **params)
    alone = torch.cat([method.explain(model, x[i:i + 1], t[i:i + 1], layer=None, task="multiclass", **params)
                       for i in range(3)])
    scale = float(alone.abs().max())
    assert scale > 0
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5 * scale)


def tiny_vit():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=6)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises the head
    return frozen(model)


@pytest.mark.parametrize("name", ["attention-rollout", "attention-gradients", "gradcam"])
def test_rows_are_independent_on_a_vision_transformer(name):
    model = tiny_vit()
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(3, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g)
    x, t = torch.stack([x1, x2, x1]), torch.tensor([1, 4, 5])
    together = METHODS[name].explain(model, x, t, layer=None, task="multiclass")
    alone = torch.cat([METHODS[name].explain(model, x[i:i + 1], t[i:i + 1], layer=None, task="multiclass")
                       for i in range(3)])
    assert together.shape == (3, 4, 4) and float(alone.abs().max()) > 0
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-6)
    if name == "attention-rollout":   # class-agnostic by definition
        torch.testing.assert_close(together[0], together[2])
    else:
        assert not torch.allclose(together[0], together[2])
