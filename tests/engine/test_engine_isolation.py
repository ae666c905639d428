"""No shared state: after any call (successful or not) the model is byte-for-byte unchanged, hook-free, keeps its
``requires_grad`` flags and gives the same outputs; guided backprop's ReLU rule stays in its own thread."""

from __future__ import annotations

import threading

import pytest
import torch
from engine_support import SlowNet, TinyNet, assert_unchanged, frozen, hook_free, randomise_bn, snapshot

from service.engine import METHODS
from service.errors import InvalidOption

CHEAP = {
    "smoothgrad": {"samples": 3},
    "integrated-gradients": {"steps": 3},
    "occlusion": {"window": 8, "stride": 8},
    "rise": {"masks": 4},
}


class Boom(TinyNet):
    """Raises inside its forward, after the CAM layer has run (hooks are live, the guided mode is active)."""

    fail = False

    def forward(self, x):
        h = self.features(x)
        if self.fail:
            raise RuntimeError("boom")
        return self.fc(torch.flatten(self.pool(h), 1))


def make(frozen_params: bool = True) -> Boom:
    torch.manual_seed(0)
    model = randomise_bn(Boom()).eval()
    return frozen(model) if frozen_params else model


@pytest.mark.parametrize("name", [m for m in METHODS if METHODS[m].family != "attention" and METHODS[m].tasks is None])
@pytest.mark.parametrize("frozen_params", [True, False])
def test_a_call_leaves_the_model_untouched(name, frozen_params):
    model = make(frozen_params)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before_out = model(x)
    before = snapshot(model)
    METHODS[name].explain(model, x, torch.tensor([0, 1]), layer=None, task="multiclass", **CHEAP.get(name, {}))
    assert_unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), before_out)


@pytest.mark.parametrize("name", [m for m in METHODS if METHODS[m].family != "attention" and METHODS[m].tasks is None])
def test_an_exception_mid_call_leaves_the_model_untouched(name):
    model = make()
    x = torch.randn(1, 3, 16, 16)
    before = snapshot(model)
    model.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        METHODS[name].explain(model, x, torch.tensor([0]), layer=None, task="multiclass", **CHEAP.get(name, {}))
    model.fail = False
    assert_unchanged(model, before)
    # A bad target fails after the forward pass, with hooks registered: the client error is a 422, state is clean.
    with pytest.raises(InvalidOption, match="target class 99 is out of range"):
        METHODS[name].explain(model, x, torch.tensor([99]), layer=None, task="multiclass", **CHEAP.get(name, {}))
    assert_unchanged(model, before)


def test_inputs_from_inference_mode_and_callers_in_no_grad_are_fine():
    model = make()
    with torch.inference_mode():
        x = torch.randn(1, 3, 16, 16)
        for name in ("gradcam", "guided-backprop", "integrated-gradients"):
            out = METHODS[name].explain(model, x, torch.tensor([2]), layer=None, task="multiclass",
                                        **CHEAP.get(name, {}))
            assert out.shape[0] == 1
    with torch.no_grad():
        METHODS["saliency"].explain(model, x, torch.tensor([2]), layer=None, task="multiclass")
        assert not torch.is_grad_enabled()
    assert hook_free(model)


def test_threads_on_two_models_get_their_single_thread_answers():
    torch.manual_seed(0)
    model_a, model_b = frozen(randomise_bn(SlowNet())), frozen(randomise_bn(SlowNet(), seed=1))
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([1, 3])
    guided, saliency = METHODS["guided-backprop"], METHODS["saliency"]
    expected_a = guided.explain(model_a, x, t, layer=None, task="multiclass")
    expected_b = saliency.explain(model_b, x, t, layer=None, task="multiclass")
    # Guided and plain gradients must differ on this net, or the test could not see a leak.
    assert not torch.allclose(expected_b, guided.explain(model_b, x, t, layer=None, task="multiclass"))
    results: dict[str, list] = {"a": [], "b": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(key, method, model):
        try:
            barrier.wait()
            for _ in range(12):
                results[key].append(method.explain(model, x, t, layer=None, task="multiclass"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("a", guided, model_a)),
               threading.Thread(target=run, args=("b", saliency, model_b))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for got in results["a"]:
        torch.testing.assert_close(got, expected_a, rtol=1e-6, atol=0)
    for got in results["b"]:
        torch.testing.assert_close(got, expected_b, rtol=1e-6, atol=0)
    assert hook_free(model_a) and hook_free(model_b)


def test_cam_hooks_do_not_touch_a_concurrent_plain_forward_of_the_same_model():
    torch.manual_seed(0)
    model = frozen(randomise_bn(SlowNet()))
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([1, 3])
    expected_map = METHODS["gradcam"].explain(model, x, t, layer="features.4", task="multiclass")
    with torch.no_grad():
        expected_out = model(x)
    maps, outs, errors = [], [], []
    barrier = threading.Barrier(2)

    def explain():
        try:
            barrier.wait()
            for _ in range(12):
                maps.append(METHODS["gradcam"].explain(model, x, t, layer="features.4", task="multiclass"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def predict():
        try:
            barrier.wait()
            for _ in range(12):
                with torch.no_grad():
                    outs.append(model(x))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=explain), threading.Thread(target=predict)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for m in maps:
        torch.testing.assert_close(m, expected_map, rtol=1e-6, atol=0)
    for o in outs:
        torch.testing.assert_close(o, expected_out, rtol=1e-6, atol=0)
    assert hook_free(model)


@pytest.mark.parametrize("name", ["guided-backprop", "guided-gradcam", "gradcam", "cam"])
def test_torchvision_model_with_inplace_relus_is_untouched(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = frozen(torchvision.models.resnet18(weights=None))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before_out = model(x)
    before = snapshot(model)
    METHODS[name].explain(model, x, torch.tensor([3, 9]), layer=None, task="multiclass")
    assert_unchanged(model, before)
    assert all(isinstance(m, torch.nn.ReLU) and m.inplace for m in model.modules()
               if "relu" in type(m).__name__.lower())
    with torch.no_grad():
        assert torch.equal(model(x), before_out)


@pytest.mark.parametrize("name", ["attention-rollout", "attention-gradients"])
def test_attention_methods_leave_a_transformer_untouched(name):
    from test_engine_batching import tiny_vit

    model = tiny_vit()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before_out = model(x)
    before = snapshot(model)
    METHODS[name].explain(model, x, torch.tensor([0, 1]), layer=None, task="multiclass")
    assert_unchanged(model, before)
    assert all(not m._forward_pre_hooks for m in model.modules())   # need_weights was asked for one call only
    assert not torch._C._is_torch_function_mode_enabled()
    with torch.no_grad():
        assert torch.equal(model(x), before_out)
