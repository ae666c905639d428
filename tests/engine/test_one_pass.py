"""One pass per served explanation: the method's own forward scores the images (no separate scoring forward), an
image with several targets shares its forward, results equal the row-wise computation, and a method's steps leave
nothing set up (hooks, grad modes, torch-function modes) across a ``yield``."""

from __future__ import annotations

import math

import pytest
import torch
from engine_support import TinyNet, frozen, randomise_bn
from torch import nn

from service.engine import METHODS, get_method, validate_params
from service.engine.base import FORWARD_CHUNK
from service.engine.layers import trace_layers
from service.engine.passes import Progress, complete
from service.engine.targets import ClassLogit, TargetRequest
from service.inference import ExplainWork, run_explain

SINGLE_FORWARD = ("cam", "gradcam", "gradcam-counterfactual", "gradcam-pp", "layercam", "hirescam", "xgradcam",
                  "saliency", "guided-backprop", "guided-gradcam", "fused-cam")
LIGHT = {"smoothgrad": {"samples": 5}, "integrated-gradients": {"steps": 6}, "occlusion": {"window": 8, "stride": 8},
         "rise": {"masks": 40, "cells": 4}, "fused-cam": {"fine_layer": "net.features.2"}}


class Counted(nn.Module):
    """TinyNet wrapper that counts its forwards (what the worker would run)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = frozen(randomise_bn(TinyNet(classes=5, width=6)))
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        return self.net(x)


@pytest.fixture()
def counted():
    model = frozen(Counted())
    trace_layers(model, (3, 16, 16))  # what the registry does at load: later forwards are the requests' own
    model.forwards = 0
    return model


class _Loaded:
    """The parts of a ``LoadedModel`` that ``run_explain`` reads."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.device = torch.device("cpu")
        self.task = "multiclass"
        self.target_layer = "net.features"
        self.input_range = ([-2.0] * 3, [2.0] * 3)


def _items(method: str, n: int, *, targets=(), top_k: int = 1) -> list[ExplainWork]:
    g = torch.Generator().manual_seed(3)
    params = tuple(sorted(validate_params(get_method(method), LIGHT.get(method, {})).items()))
    return [ExplainWork(torch.randn(3, 16, 16, generator=g), method, params, None, tuple(targets), top_k)
            for _ in range(n)]


@pytest.mark.parametrize("method", SINGLE_FORWARD)
@pytest.mark.parametrize(("targets", "top_k"), [((), 1), ((), 3), ((1, 4), 1)])
def test_single_pass_methods_run_exactly_one_forward_per_batch(counted, method, targets, top_k):
    items = _items(method, 3, targets=targets, top_k=top_k)
    counted.forwards = 0
    results = run_explain(_Loaded(counted), items)
    assert counted.forwards == 1, f"{method}: {counted.forwards} forwards for one batch"
    assert [len(r) for r in results] == [len(targets) or top_k] * 3


# attention methods refuse CNNs; their batching and one-forward rows are tested on a tiny ViT (test_engine_batching)
CNN_METHODS = [m for m in METHODS if METHODS[m].family != "attention" and METHODS[m].tasks is None]


@pytest.mark.parametrize("method", [m for m in CNN_METHODS if m not in SINGLE_FORWARD])
def test_multi_pass_methods_make_no_scoring_forward(counted, method):
    """The served batch (top-k, scores resolved inside) costs exactly the forwards of the engine's own computation
    with the classes given explicitly — nothing is added for scoring."""
    items = _items(method, 2, top_k=2)
    counted.forwards = 0
    served = run_explain(_Loaded(counted), items)
    served_forwards = counted.forwards
    explicit = [ExplainWork(it.inputs, it.method, it.params, it.layer, tuple(t.index for t in res), 1)
                for it, res in zip(items, served)]
    counted.forwards = 0
    again = run_explain(_Loaded(counted), explicit)
    assert served_forwards == counted.forwards
    for a, b in zip(served, again):
        for ta, tb in zip(a, b):
            assert ta.index == tb.index and ta.score == pytest.approx(tb.score)
            torch.testing.assert_close(torch.from_numpy(ta.heatmap), torch.from_numpy(tb.heatmap))


def test_expected_forward_counts_of_the_chunked_methods(counted):
    """The chunk arithmetic, spelled out: clean images ride in the first chunk of SmoothGrad/IG/RISE."""
    chunk = FORWARD_CHUNK
    counted.forwards = 0
    run_explain(_Loaded(counted), _items("smoothgrad", 2))        # 2 clean + 2 x 5 noisy, chunks of 16
    assert counted.forwards == math.ceil((2 + 2 * 5) / 16)
    counted.forwards = 0
    run_explain(_Loaded(counted), _items("rise", 1))              # 1 clean rides along with 40 masks
    assert counted.forwards == math.ceil(40 / (chunk - 1))
    counted.forwards = 0
    run_explain(_Loaded(counted), _items("occlusion", 1))         # reference + 4 windows (16 px, window 8)
    assert counted.forwards == 1 + 1


@pytest.mark.parametrize("method", CNN_METHODS)
def test_multi_target_rows_equal_the_row_wise_maps(counted, method):
    """Top-3 of one image (one shared forward, per-target backward) == each class explained on its own."""
    items = _items(method, 1, top_k=3)
    (rows,) = run_explain(_Loaded(counted), items)
    x = items[0].inputs[None].expand(3, -1, -1, -1)
    classes = torch.tensor([r.index for r in rows])
    alone = get_method(method).explain(counted, x, classes, layer="net.features", task="multiclass",
                                       input_range=_Loaded(counted).input_range, **dict(items[0].params))
    probs = torch.softmax(counted(x[:1]), 1)[0]
    for k, row in enumerate(rows):
        torch.testing.assert_close(torch.from_numpy(row.heatmap), alone[k], rtol=1e-4, atol=1e-6)
        assert row.score == pytest.approx(float(probs[row.index]), rel=1e-5)
    assert classes.tolist() == probs.topk(3).indices.tolist()


def _nothing_set_up(model: nn.Module) -> bool:
    hooks = any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    return not hooks and not torch.is_grad_enabled() and not torch._C._is_torch_function_mode_enabled()


@pytest.mark.parametrize("method", ["scorecam", "rise", "occlusion", "smoothgrad", "integrated-gradients"])
def test_steps_yield_progress_with_nothing_left_set_up(counted, method):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    requests = [TargetRequest(top_k=2), TargetRequest((ClassLogit(3),))]
    params = dict(LIGHT.get(method, {}))
    explainer = get_method(method)
    explainer.forward_chunk = explainer.backward_chunk = 4
    try:
        with torch.no_grad():  # the caller's mode: each slice must hand it back untouched
            steps = get_method(method).steps(counted, x, requests, layer="net.features", task="multiclass", **params)
            seen: list[Progress] = []
            while True:
                try:
                    seen.append(next(steps))
                except StopIteration as done:
                    result = done.value
                    break
                assert _nothing_set_up(counted), f"{method} left something set up across a yield"
    finally:
        explainer.forward_chunk = explainer.backward_chunk = None
    assert len(seen) >= 2 and seen[-1].done == seen[-1].total
    assert all(a.done <= b.done for a, b in zip(seen, seen[1:])) and len({p.total for p in seen}) == 1
    assert result.rows.image.tolist() == [0, 0, 1] and result.maps.shape[0] == 3


def test_scorecam_skips_constant_channels_and_channels_option_scores_fewer(counted):
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    scorecam = get_method("scorecam")
    counted.net.features[3].weight.data[0] = 0.0   # channel 0 of the last conv: constant (bias only) ...
    counted.net.features[3].bias.data[0] = -1.0    # ... and ReLU'd to exactly 0
    scorecam.forward_chunk = 1
    try:
        counted.forwards = 0
        full = complete(scorecam.steps(counted, x, [TargetRequest((ClassLogit(1),))], layer="net.features"))
        assert counted.forwards == 1 + 11           # the hooked pass + the 11 non-constant channels
        counted.forwards = 0
        fast = complete(scorecam.steps(counted, x, [TargetRequest((ClassLogit(1),))], layer="net.features", channels=4))
        assert counted.forwards == 1 + 4
    finally:
        scorecam.forward_chunk = None
    assert torch.isfinite(full.maps).all() and torch.isfinite(fast.maps).all()
    # By hand: the 4 channels with the largest Grad-CAM weight, each weighted by the probability of its masked input.
    store = {}
    handle = counted.net.features.register_forward_hook(lambda m, a, out: store.setdefault("a", out))
    with torch.enable_grad():
        x_grad = x.clone().requires_grad_()
        logits = counted(x_grad)
        act = store["a"]
        (grad,) = torch.autograd.grad(logits[0, 1], act)
    handle.remove()
    act = act.detach()[0]
    alpha = grad[0].mean((1, 2))
    varying = act.flatten(1).amax(1) > act.flatten(1).amin(1)
    alpha[~varying] = float("-inf")
    expected = torch.zeros(act.shape[1:])
    for k in alpha.topk(4).indices.tolist():
        up = torch.nn.functional.interpolate(act[k][None, None], size=(16, 16), mode="bilinear", align_corners=False)
        mask = (up - up.min()) / (up.max() - up.min())
        with torch.no_grad():
            w = torch.softmax(counted(x * mask), 1)[0, 1]
        expected += w * act[k]
    torch.testing.assert_close(fast.maps[0], expected.relu(), rtol=1e-4, atol=1e-6)


def test_a_multilabel_image_below_the_floor_has_no_rows(counted):
    items = [ExplainWork(torch.randn(3, 16, 16), "gradcam", (), None, (), 5, 1.01)]
    model = _Loaded(counted)
    model.task = "multilabel"
    assert run_explain(model, items) == [[]]


@pytest.mark.parametrize("method", ["attention-rollout", "attention-gradients"])
def test_attention_methods_serve_top_k_from_one_forward(method):
    """On a ViT: top-2 of two images is one forward (rollout reads the attention of the same pass that scores)."""
    from test_engine_batching import tiny_vit

    vit = tiny_vit()
    model = frozen(Counted())
    model.net = vit
    trace_layers(model, (3, 16, 16))
    model.forwards = 0
    g = torch.Generator().manual_seed(3)
    items = [ExplainWork(torch.randn(3, 16, 16, generator=g), method, (), None, (), 2) for _ in range(2)]
    loaded = _Loaded(model)
    loaded.target_layer = None
    served = run_explain(loaded, items)
    assert model.forwards == 1
    with torch.no_grad():
        probs = torch.softmax(vit(torch.stack([w.inputs for w in items])), 1)
    for i, rows in enumerate(served):
        assert [r.index for r in rows] == probs[i].topk(2).indices.tolist()
        assert [r.score for r in rows] == pytest.approx(probs[i].topk(2).values.tolist(), rel=1e-5)
