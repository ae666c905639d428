"""Target layers: which modules output a spatial map, and which one CAM methods use by default.

The automatic choice is *the last module, in execution order, whose output is a 4-D spatial map*, with three
refinements learnt from torchvision:

1. Maps produced by a pooling layer are skipped: VGG's ``features`` ends in a max-pool (7x7 at 224 px) and
   ``avgpool`` re-expands it to 7x7, yet the Grad-CAM paper uses the last conv/ReLU (14x14): ``features.29``.
   A container whose output *is* its last child's tensor inherits the child's producer, so ``features`` is skipped
   with its pool, while ResNet's ``layer4`` (its output is produced by a ReLU) is kept.
2. Among modules returning the same tensor (``layer4`` / ``layer4.1`` / ``layer4.1.relu``), the outermost one
   wins (it completes last), which is the conventional name.
3. Modules that run more than once per forward (ResNet's shared ``relu`` in a block) are never chosen: their
   output is ambiguous. Maps with ``h, w > 1`` are preferred over 1x1 maps.

Auto layers (random init, 224 px): resnet18/50 ``layer4``; vgg11 ``features.19``, vgg16 ``features.29`` (ReLU after
the last conv); densenet121 ``features`` (= ``features.norm5``: DenseNet applies ``F.relu`` after ``features`` in
its ``forward``, so the hooked map is *pre*-ReLU; Grad-CAM takes gradients at that map like grad-cam/captum do with
``model.features``, and CAM detects the ReLU between map and pooling, see :mod:`service.engine.cam`);
mobilenet_v3_small, efficientnet_b0, convnext_tiny ``features``.

Example::

    find_target_layer(torchvision.models.resnet18(), (3, 224, 224))   # 'layer4'
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .base import Hooks, model_device

__all__ = ["LayerInfo", "find_target_layer", "get_module", "resolve_layer", "spatial_layers", "trace_layers"]

_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool2d,
)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str          # module class name
    shape: tuple[int, ...]  # output shape for a batch of one
    calls: int         # times it ran in one forward
    pooled: bool       # its output tensor was produced by a pooling layer

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 4

    @property
    def preferred(self) -> bool:
        return self.spatial and self.calls == 1 and not self.pooled and self.shape[2] > 1 and self.shape[3] > 1


def get_module(model: nn.Module, name: str, input_shape: Sequence[int] | None = None) -> nn.Module:
    """The submodule called ``name``; InvalidOption listing spatial layers (when ``input_shape`` is known)."""
    if isinstance(name, str) and name:
        try:
            return model.get_submodule(name)
        except AttributeError:
            pass
    hint = ""
    if input_shape is not None:
        names = spatial_layers(model, input_shape)
        shown = names[-12:]
        more = f" (and {len(names) - len(shown)} earlier ones)" if len(names) > len(shown) else ""
        hint = f"; valid layers include {', '.join(shown)}{more}"
    raise InvalidOption(f"unknown layer {name!r} for this model{hint}", errors=[FieldError("layer", "unknown")])


def trace_layers(model: nn.Module, input_shape: Sequence[int]) -> list[LayerInfo]:
    """Run one dummy forward (batch of one, zeros) and describe every named module's output, in completion order."""
    if len(input_shape) != 3:
        raise InvalidOption(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    device, dtype = model_device(model)
    names = {m: n for n, m in model.named_modules() if n}
    events: list[tuple[str, nn.Module, object]] = []
    calls: dict[str, int] = {}

    def record(mod: nn.Module, args: tuple, out: object) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        events.append((name, mod, out))

    with Hooks() as hooks:
        for mod in names:
            hooks.forward(mod, record)
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))

    # The first module to emit a tensor object is its producer; containers and in-place ops re-emit it.
    # (``events`` keeps every output alive, so ids stay unique.)
    producer: dict[int, nn.Module] = {}
    for _, mod, out in events:
        if isinstance(out, Tensor):
            producer.setdefault(id(out), mod)
    infos: dict[str, LayerInfo] = {}
    order: list[str] = []
    for name, mod, out in events:
        if not isinstance(out, Tensor):
            continue
        info = LayerInfo(name, type(mod).__name__, tuple(out.shape), calls[name],
                         isinstance(producer[id(out)], _POOLS))
        if name in infos:
            order.remove(name)
        infos[name] = info
        order.append(name)
    return [infos[n] for n in order]


def spatial_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Names usable as ``layer``: modules that run once per forward and output a ``[B, C, h, w]`` map, in
    execution (completion) order."""
    return [i.name for i in trace_layers(model, input_shape) if i.spatial and i.calls == 1]


def find_target_layer(model: nn.Module, input_shape: Sequence[int]) -> str:
    """The default CAM layer: the last module whose output is a spatial map, see the module docstring."""
    infos = trace_layers(model, input_shape)
    for pick in (
        lambda i: i.preferred,
        lambda i: i.spatial and i.calls == 1 and not i.pooled,
        lambda i: i.spatial and i.calls == 1,
    ):
        found = [i for i in infos if pick(i)]
        if found:
            return found[-1].name
    hint = (" (TorchScript inlines submodules, so forward hooks cannot see them; serve the eager model for CAM "
            "methods)" if isinstance(model, torch.jit.ScriptModule) else "")
    raise InvalidOption(f"this model has no layer with a spatial [B, C, h, w] output; CAM methods need one{hint}")


_auto_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str]] = weakref.WeakKeyDictionary()
_auto_lock = threading.Lock()


def resolve_layer(model: nn.Module, layer: str | None, input_shape: Sequence[int]) -> tuple[str, nn.Module]:
    """``(name, module)`` for an explicit layer name, or the automatic one (cached per model and input shape: the
    dummy forward would otherwise double the cost of a one-image Grad-CAM)."""
    if layer is None or layer == "":
        key = tuple(int(s) for s in input_shape)
        with _auto_lock:
            name = _auto_cache.get(model, {}).get(key)
        if name is None:
            name = find_target_layer(model, key)
            with _auto_lock:
                _auto_cache.setdefault(model, {})[key] = name
        layer = name
    return layer, get_module(model, layer, input_shape)
