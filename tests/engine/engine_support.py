"""Small networks and checks shared by the engine tests (imported as ``engine_support``)."""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def frozen(model: nn.Module) -> nn.Module:
    """As the registry serves models: eval mode, parameters frozen."""
    return model.eval().requires_grad_(False)


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics so eval-mode BatchNorm is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


class TinyNet(nn.Module):
    """conv-BN-ReLU(inplace) → conv → F.relu → GAP → linear; ``features`` is the CAM layer (post-ReLU)."""

    def __init__(self, classes: int = 5, width: int = 6, in_ch: int = 3, bias: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class DenseLikeNet(nn.Module):
    """DenseNet's pattern: ``features`` ends pre-ReLU, ``forward`` applies a functional in-place ReLU, then GAP."""

    def __init__(self, classes: int = 4, width: int = 6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1))
        self.classifier = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class MLPHead(nn.Module):
    """conv → ReLU → flatten → linear: no GAP, so CAM must refuse it."""

    def __init__(self, classes: int = 3, size: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * size * size, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.act(self.conv(x)), 1))


class SlowNet(TinyNet):
    """TinyNet that sleeps inside its forward, so that two threads' passes interleave."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.features[:3](x)
        time.sleep(0.002)
        h = self.features[3:](h)
        return self.fc(torch.flatten(self.pool(h), 1))


def trainable_copy(model: nn.Module) -> nn.Module:
    """A non-frozen copy for hand-written reference computations (full backward is fine there)."""
    return copy.deepcopy(model).requires_grad_(True).eval()


def hook_free(model: nn.Module) -> bool:
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called"):
            if getattr(m, attr, None):
                return False
    return True


def snapshot(model: nn.Module) -> dict:
    """Everything a call must leave untouched: tensors (bytes), requires_grad flags, training flags, modules."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "modules": {k: id(m) for k, m in model.named_modules()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["modules"] == before["modules"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        w = after["state"][k]
        assert v.dtype == w.dtype and v.shape == w.shape
        assert torch.equal(_bytes(v), _bytes(w)), k
    assert hook_free(model)
    assert torch._C._len_torch_function_stack() == 0
    assert torch.is_grad_enabled()


def _bytes(t: Tensor) -> Tensor:
    t = t.detach().reshape(-1)
    return t.view(torch.uint8) if t.is_floating_point() else t


def pearson(a: Tensor, b: Tensor) -> float:
    a = a.detach().double().flatten()
    b = b.detach().double().flatten()
    a = a - a.mean()
    b = b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def resize_like_gradcam_pkg(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """grad-cam's post-processing: min-max normalise each map, then bilinear (half-pixel, like cv2) resize."""
    lo = maps.amin((1, 2), keepdim=True)
    m = maps - lo
    m = m / (1e-7 + m.amax((1, 2), keepdim=True))
    return F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
