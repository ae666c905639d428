"""The explanation engine: saliency methods as pure, batched tensor code (no HTTP, no numpy).

Public surface used by the HTTP/batching layer::

    METHODS: dict[str, Explainer]                       # API name -> stateless instance
    get_method(name) -> Explainer                       # UnknownMethod (404) listing valid names
    validate_params(method, raw) -> dict                # coerce/check form or JSON values; BadOption/InvalidOption
    find_target_layer(model, input_shape) -> str        # default CAM layer
    spatial_layers(model, input_shape) -> list[str]     # valid ``layer`` values
    describe() -> list[dict]                            # the ``GET /methods`` catalogue
    usable_methods(model, input_shape, layer=None) -> list[str]   # methods applicable to a model (ModelInfo)

Example::

    from service.engine import get_method, validate_params
    method = get_method("occlusion")
    params = validate_params(method, {"window": "16", "stride": "8"})     # form fields arrive as strings
    maps = method.explain(model, x, targets, layer=None, task="multiclass", **params)   # [B, H, W] float32

Methods: see each class's docstring for its formula. Family ``cam`` returns maps at the target layer's resolution,
``gradient`` and ``perturbation`` at the input resolution.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import InvalidOption, UnknownMethod
from .attention import AttentionGradients, AttentionRollout
from .base import BACKWARD_CHUNK, FORWARD_CHUNK, Explainer, ParamSpec, coerce_params
from .cam import CAM, GradCAM, GradCAMCounterfactual, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from .fusion import FusedCAM
from .gradients import GuidedBackprop, GuidedGradCAM, IntegratedGradients, Saliency, SmoothGrad
from .layers import find_target_layer, spatial_layers
from .mil import AttentionMIL
from .mil_cam import MILGradCAM
from .perturbation import DRISE, RISE, Occlusion

__all__ = [
    "BACKWARD_CHUNK",
    "FORWARD_CHUNK",
    "METHODS",
    "Explainer",
    "ParamSpec",
    "describe",
    "find_target_layer",
    "get_method",
    "spatial_layers",
    "usable_methods",
    "validate_params",
]

METHODS: dict[str, Explainer] = {
    m.name: m
    for m in (
        CAM(),
        GradCAM(),
        GradCAMCounterfactual(),
        GuidedBackprop(),
        GuidedGradCAM(),
        Saliency(),
        SmoothGrad(),
        Occlusion(),
        GradCAMPlusPlus(),
        ScoreCAM(),
        LayerCAM(),
        IntegratedGradients(),
        HiResCAM(),
        XGradCAM(),
        RISE(),
        DRISE(),
        FusedCAM(),
        AttentionRollout(),
        AttentionGradients(),
        AttentionMIL(),
        MILGradCAM(),
    )
}

_ALIASES = {
    "gradcampp": "gradcam-pp",
    "gradcam++": "gradcam-pp",
    "gradcamplusplus": "gradcam-pp",
    "ig": "integrated-gradients",
    "mil": "attention-mil",
    "abmil": "attention-mil",
    "integratedgradients": "integrated-gradients",
    "guidedbackprop": "guided-backprop",
    "guidedgradcam": "guided-gradcam",
    "gradcamcounterfactual": "gradcam-counterfactual",
    "vanilla-gradient": "saliency",
}


def get_method(name: str) -> Explainer:
    """The explainer registered as ``name`` (case, ``_`` and a few spellings such as ``gradcam++`` tolerated)."""
    key = str(name).strip().lower().replace("_", "-")
    if key in METHODS:
        return METHODS[key]
    alias = _ALIASES.get(key) or _ALIASES.get(re.sub(r"[-\s]", "", key))
    if alias is None:
        squeezed = re.sub(r"[-\s]", "", key)
        alias = next((n for n in METHODS if n.replace("-", "") == squeezed), None)
    if alias is not None:
        return METHODS[alias]
    raise UnknownMethod(name, list(METHODS))


def validate_params(method: Explainer, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Method parameters from ``raw`` (strings from form fields are coerced to each spec's type), with defaults.

    Unknown names or wrongly typed values → :class:`~service.errors.BadOption` (400); out-of-bounds values or
    unknown choices → :class:`~service.errors.InvalidOption` (422). The error names each parameter and its bounds.
    ``layer`` is not a method parameter: pass it to ``explain`` separately.
    """
    return coerce_params(method, raw)


def describe() -> list[dict[str, Any]]:
    """JSON-able catalogue of every method: name, family, description, params (type/default/bounds/choices),
    uses_layer, output (``layer`` | ``input``), signed, sanity."""
    return [m.describe() for m in METHODS.values()]


def usable_methods(model: nn.Module, input_shape: Sequence[int], *, layer: str | None = None,
                   task: str = "multiclass") -> list[str]:
    """Names of the methods that can explain ``model`` (runs a dummy forward/backward for the methods with
    structural requirements: CAM's GAP→linear head, guided backprop's ReLUs, a spatial layer for CAM methods)."""
    usable = []
    for name, method in METHODS.items():
        if method.tasks is not None and task not in method.tasks:
            continue
        try:
            method.check_model(model, input_shape, layer=layer, task=task)
        except InvalidOption:
            continue
        usable.append(name)
    return usable
