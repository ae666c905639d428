"""DemoNet architecture: 16x16 last conv map, size budget, GAP -> linear head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from service.demo.model import DEMO_INPUT_SIZE, DEMO_TARGET_LAYER, DemoNet, create_demo_model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_demo_model().eval()


def _last_conv_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    captured: list[torch.Tensor] = []
    handle = convs[-1].register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return captured[0]


def test_factory_returns_demonet(model: nn.Module) -> None:
    assert isinstance(model, DemoNet)
    assert DEMO_INPUT_SIZE == (128, 128)


def test_last_conv_map_is_16x16_at_128px(model: nn.Module) -> None:
    fmap = _last_conv_output(model, torch.rand(2, 3, 128, 128))
    assert fmap.shape[0] == 2
    assert fmap.shape[-2:] == (16, 16)


def test_about_six_conv_layers(model: nn.Module) -> None:
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert 5 <= n_conv <= 7


def test_parameter_count_in_range(model: nn.Module) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    assert 300_000 <= n_params <= 500_000, n_params


def test_gap_linear_head(model: nn.Module) -> None:
    assert isinstance(model.features, nn.Sequential)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d) and model.pool.output_size in (1, (1, 1))
    assert isinstance(model.classifier, nn.Linear)
    x = torch.rand(3, 3, 128, 128)
    with torch.no_grad():
        fmap = model.features(x)
        expected = model.classifier(fmap.mean(dim=(2, 3)))
        logits = model(x)
    assert model.classifier.in_features == fmap.shape[1]
    assert logits.shape == (3, 6)
    # The whole head is GAP followed by the linear layer, nothing else.
    assert torch.allclose(logits, expected, atol=1e-5)


def test_target_layer_is_last_conv_block(model: nn.Module) -> None:
    block = model.get_submodule(DEMO_TARGET_LAYER)
    captured: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 128, 128))
    finally:
        handle.remove()
    out = captured[0]
    assert out.shape[-2:] == (16, 16)
    assert out.shape[1] == model.classifier.in_features
    assert float(out.min()) >= 0.0  # post-ReLU


def test_class_activation_maps_average_to_logits(model: nn.Module) -> None:
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        cams = model.class_activation_maps(x)
        logits = model(x)
    assert cams.shape == (2, 6, 16, 16)
    assert torch.allclose(cams.mean(dim=(2, 3)) + model.classifier.bias, logits, atol=1e-4)


def test_num_classes_configurable() -> None:
    net = create_demo_model(num_classes=4).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 128, 128)).shape == (1, 4)


def test_backward_reaches_first_layer() -> None:
    net = create_demo_model().train()
    loss = nn.BCEWithLogitsLoss()(net(torch.rand(4, 3, 128, 128)), torch.ones(4, 6))
    loss.backward()
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.grad is not None and float(first.weight.grad.abs().sum()) > 0
