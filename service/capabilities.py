"""What a loaded model can be asked: the applicability probe run once at load, and the one place requests are
checked against it.

At load the registry asks every explainer whether it can run on the model (``Explainer.check_model``: hooks, ReLUs
for guided backprop, a GAP→linear head for CAM ...) and keeps the reason of each refusal; it also records the layers
a request may name. Requests are then validated against this object before any model work, so an inapplicable method
is refused with the probe's reason (422) and an unknown layer with the list of valid ones, in one wording.

Example::

    caps = probe(module, input_shape=(3, 224, 224), task="multiclass", target_layer="layer4")
    caps.check_method("resnet", "cam", layer=None)    # MethodNotApplicable when the probe refused it
    caps.check_layer("resnet", "layer3")              # 'layer3', or UnknownLayer listing caps.layers
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn

from .errors import InvalidOption, MethodNotApplicable, UnknownLayer

__all__ = ["HOOKLESS_METHODS", "Capabilities", "probe"]

HOOKLESS_METHODS = ("saliency", "smoothgrad", "integrated-gradients", "occlusion", "rise")
"""Methods that need neither forward hooks nor Python-level ReLU interception: all a TorchScript model allows."""

_UNHOOKABLE = ("TorchScript models cannot be hooked (no layer maps, no guided ReLUs); serve it from a python: or "
               "torchvision: source")


@dataclass(frozen=True)
class Capabilities:
    """The probe's findings for one model: each method's refusal reason (``None`` = usable) and the layers a request
    may name (modules with a spatial output that run once per forward), in execution order."""

    methods: Mapping[str, str | None]
    layers: tuple[str, ...] = ()
    target_layer: str | None = None
    hookable: bool = True
    _layer_set: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", MappingProxyType(dict(self.methods)))
        object.__setattr__(self, "_layer_set", frozenset(self.layers))

    @property
    def usable_methods(self) -> list[str]:
        return [name for name, reason in self.methods.items() if reason is None]

    def check_method(self, model: str, method: str, *, layer: str | None = None) -> None:
        """Refuse a method the probe found inapplicable. With an explicit ``layer`` the probe's verdict (made at the
        default layer) may not hold, so only the engine can tell; hook-free models are refused regardless."""
        reason = self.methods.get(method)
        if reason is not None and (layer is None or not self.hookable):
            raise MethodNotApplicable(method, model, reason)

    def check_layer(self, model: str, layer: str | None, *, field: str = "layer") -> str:
        """``layer`` (or the model's target layer when ``None``) if a request may name it, else ``UnknownLayer``."""
        name = layer or self.target_layer
        if name is None or name not in self._layer_set:
            raise UnknownLayer(name, model, self.layers, field=field)
        return name


def probe(module: nn.Module, *, input_shape: Sequence[int], task: str, target_layer: str | None) -> Capabilities:
    """Ask every registered explainer whether it can explain ``module`` (runs a few dummy passes)."""
    from .engine import METHODS, spatial_layers

    if isinstance(module, torch.jit.ScriptModule):
        methods = {name: (None if name in HOOKLESS_METHODS else _UNHOOKABLE) for name in METHODS}
        return Capabilities(methods, (), None, hookable=False)
    verdicts: dict[str, str | None] = {}
    for name, method in METHODS.items():
        try:
            method.check_model(module, input_shape, layer=target_layer, task=task)
            verdicts[name] = None
        except InvalidOption as exc:
            verdicts[name] = exc.detail
    return Capabilities(verdicts, tuple(spatial_layers(module, input_shape)), target_layer)
