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

_BAGS = ("{name} explains models of one image input; a mil model takes bags of patches [B, N, C, p, p] and is "
         "explained by its attention over them (use attention-mil) or by Grad-CAM of its patch encoder (mil-gradcam)")
_UNHOOKABLE = ("TorchScript models cannot be hooked (no layer maps, no guided ReLUs); serve it from a python: or "
               "torchvision: source")


@dataclass(frozen=True)
class LayerDetail:
    """A layer a request may name: its output's layout, map size and channels."""

    name: str
    layout: str            # nchw | nhwc | tokens
    grid: tuple[int, ...]
    channels: int
    prefix: int = 0


@dataclass(frozen=True)
class Capabilities:
    """The probe's findings for one model: each method's refusal reason (``None`` = usable) and the layers a request
    may name (modules with a spatial output that run once per forward), in execution order."""

    methods: Mapping[str, str | None]
    layers: tuple[str, ...] = ()
    target_layer: str | None = None
    hookable: bool = True
    target_layer_reason: str | None = None
    layer_details: tuple[LayerDetail, ...] = ()
    caveats: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Methods made for other tasks (D-RISE for detectors), with the reason: refused, but not listed as refusals.
    other_tasks: Mapping[str, str] = field(default_factory=dict)
    #: A mil model's layers with one 4-D map per patch (``mil-gradcam``'s ``layer``), in execution order.
    patch_layers: tuple[str, ...] = ()
    _layer_set: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", MappingProxyType(dict(self.methods)))
        object.__setattr__(self, "caveats", MappingProxyType(dict(self.caveats)))
        object.__setattr__(self, "other_tasks", MappingProxyType(dict(self.other_tasks)))
        object.__setattr__(self, "_layer_set", frozenset(self.layers))

    @property
    def usable_methods(self) -> list[str]:
        return [name for name, reason in self.methods.items() if reason is None]

    def check_method(self, model: str, method: str, *, layer: str | None = None) -> None:
        """Refuse a method the probe found inapplicable. With an explicit ``layer`` the probe's verdict (made at the
        default layer) may not hold, so only the engine can tell; hook-free models are refused regardless."""
        if method in self.other_tasks:
            raise MethodNotApplicable(method, model, self.other_tasks[method])
        reason = self.methods.get(method)
        if reason is not None and (layer is None or not self.hookable):
            raise MethodNotApplicable(method, model, reason)

    def check_layer(self, model: str, layer: str | None, *, field: str = "layer", patches: bool = False) -> str:
        """``layer`` (or the model's target layer when ``None``) if a request may name it, else ``UnknownLayer``.
        ``patches``: a mil model's per-patch layers (:attr:`patch_layers`) instead of the image layers."""
        name = layer or self.target_layer
        if name is None or name not in (self.patch_layers if patches else self._layer_set):
            raise UnknownLayer(name, model, self.patch_layers if patches else self.layers, field=field)
        return name


def probe(module: nn.Module, *, input_shape: Sequence[int], task: str, target_layer: str | None,
          target_layer_reason: str | None = None) -> Capabilities:
    """Ask every registered explainer whether it can explain ``module`` (runs a few dummy passes), and gather the
    caveats that hold where a method applies."""
    from .engine import METHODS
    from .engine.layers import trace_layers

    mine = {name: m for name, m in METHODS.items() if m.tasks is None or task in m.tasks}
    other_tasks = {name: f"{name} explains {' and '.join(m.tasks or ())} models; this one's task is {task}"
                   for name, m in METHODS.items() if name not in mine}
    if task == "mil":
        # A mil model takes bags of patches ([B, N, C, p, p]), not one image: it is explained by its own pooling
        # weights; the image methods would perturb or differentiate an input layout the model does not have.
        # Methods made for mil (attention-mil, mil-gradcam) run their own check on a two-patch bag.
        from .engine.mil_cam import patch_layers

        methods: dict[str, str | None] = {}
        for name, m in mine.items():
            if not (m.tasks and "mil" in m.tasks):
                methods[name] = _BAGS.format(name=name)
                continue
            try:
                m.check_model(module, input_shape, layer=target_layer, task=task)
                methods[name] = None
            except InvalidOption as exc:
                methods[name] = exc.detail
        patches = tuple(n for n, _ in patch_layers(module, input_shape))
        return Capabilities(methods, (), target_layer, hookable=False, target_layer_reason=target_layer_reason,
                            other_tasks=other_tasks, patch_layers=patches)
    if isinstance(module, torch.jit.ScriptModule):
        methods = {name: (None if name in HOOKLESS_METHODS else _UNHOOKABLE) for name in mine}
        return Capabilities(methods, (), None, hookable=False, target_layer_reason=target_layer_reason,
                            other_tasks=other_tasks)
    verdicts: dict[str, str | None] = {}
    caveats: dict[str, tuple[str, ...]] = {}
    volume = len(input_shape) == 4   # (C, D, H, W)
    for name, method in mine.items():
        if volume and not method.volumes:
            verdicts[name] = f"{name} does not explain volumes (3-D inputs)"
            continue
        if target_layer is None and method.uses_layer:
            verdicts[name] = f"{name} needs a layer map and this model has none ({target_layer_reason})"
            continue
        try:
            method.check_model(module, input_shape, layer=target_layer, task=task)
            verdicts[name] = None
        except InvalidOption as exc:
            verdicts[name] = exc.detail
            continue
        notes = list(method.caveats) + _model_caveats(name, module, input_shape, target_layer)
        if notes:
            caveats[name] = tuple(notes)
    details = tuple(LayerDetail(i.name, i.layout.kind, i.layout.grid, _channels(i), i.layout.prefix)
                    for i in trace_layers(module, input_shape)
                    if i.explainable and i.layout is not None and not i.identity)  # Dropout: its input's map
    return Capabilities(verdicts, tuple(d.name for d in details), target_layer, target_layer_reason=target_layer_reason,
                        layer_details=details, caveats=caveats, other_tasks=other_tasks)


_NON_RELU = (nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.ELU, nn.SELU, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh)


def _model_caveats(method: str, module: nn.Module, input_shape: Sequence[int], layer: str | None) -> list[str]:
    """What holds for this model in particular."""
    from .engine.layers import layer_layout

    notes: list[str] = []
    if method in ("guided-backprop", "guided-gradcam"):
        others = sorted({type(m).__name__ for m in module.modules() if isinstance(m, _NON_RELU)})
        if others:
            notes.append(f"the guided rule applies to the ReLU-family activations only; {', '.join(others)} keep "
                         "their gradients (as in captum)")
    layout = layer_layout(module, layer, input_shape) if layer else None
    if layout is not None and layout.kind == "tokens" and method in ("gradcam", "gradcam-pp", "layercam", "hirescam",
                                                                    "gradcam-counterfactual", "scorecam"):
        h, w = layout.grid
        notes.append(f"on a token layer: the patch tokens as a {h}x{w} map (the {layout.prefix} prefix token(s) are "
                     "left out)")
    return notes


def _channels(info: object) -> int:
    shape = info.shape  # type: ignore[attr-defined]
    return int(shape[3] if info.layout.kind == "nhwc" else shape[2] if info.layout.kind == "tokens"  # type: ignore
               else shape[1])
