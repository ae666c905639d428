"""Multi-layer CAM fusion (``fused-cam``): class-discriminative like Grad-CAM, at a finer layer's resolution.

Grad-CAM at the last convolutional map is class-discriminative but coarse (16x16 on the demo model: one cell is
8 px, the smallest objects are ~22 px). LayerCAM at an earlier, finer layer follows object outlines but, alone, also
lights up *other* objects (at 32x32 the features are less class-specific). Fusing the two keeps the class
selectivity of the deep map and the resolution of the shallow one.

:class:`FusedCAM` (``fused-cam``)::

    C = Up( L_coarse / max L_coarse )            # Grad-CAM (or LayerCAM) at the model's target layer
    F = L_fine / max L_fine                      # LayerCAM at a finer layer (``fine_layer``; auto: the earliest
                                                 #   block at the next finer resolution, see auto_fine_layer)
    fusion = product:  M = C * F                 # default: the fine map gated by the class-discriminative one
             mean:     M = (C + F) / 2
             max:      M = max(C, F)

``Up`` is bilinear (``align_corners=False``) to the fine map's size; both maps are ReLU'd (non-negative) and
normalised per row before fusing (a row whose map is all zero stays zero). Output: ``[B, h_fine, w_fine]``, raw
(not renormalised). Cost: one forward pass with both layers hooked and a backward through the head (as Grad-CAM).

On the demo model's benchmark (``bench/quality.py``, 500 images) it reaches MaxBoxAcc 0.742 at the paper's 0.15
threshold (Grad-CAM: 0.001 there, 0.605 at its best threshold) while staying class-discriminative (two-class map
correlation -0.06) and passing the randomisation sanity check.

Example::

    FusedCAM().explain(model, x, targets, layer=None, task="multilabel", fusion="product")
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .base import Explained, Explainer, ParamSpec, grad_enabled, logits_of
from .cam import GradCAM, LayerCAM
from .layers import resolve_layer, trace_layers
from .passes import FIRST, capture, row_gradients, single_pass
from .targets import TargetRequest, plan_rows, reported_scores

__all__ = ["BENCH_METHODS", "FusedCAM", "auto_fine_layer"]

_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def auto_fine_layer(model: nn.Module, coarse: str | None, input_shape: Sequence[int]) -> str:
    """The default ``fine_layer``: the *earliest block* at the next finer resolution level than the ``coarse`` layer
    (the model's target layer when ``None``).

    The level is the smallest map size at least twice the coarse map's height and width (pooling outputs excluded).
    Within it, the first top-most container in execution order (a block such as the demo's ``features.block2``;
    ResNet's whole ``layer3``), else the first ReLU (VGG), else the first module. Early layers of a level have the
    sharpest features; the coarse class-discriminative map supplies the class selectivity. On the demo model this picks
    ``features.block2`` (fused MaxBoxAcc 0.756 on 100 held-out images vs 0.617 for ``features.block3`` and 0.617
    for ``features.block1``).
    """
    key = (coarse, tuple(int(s) for s in input_shape))
    with _lock:
        hit = _cache.get(model, {}).get(key)
    if hit is not None:
        return hit
    name, _ = resolve_layer(model, coarse, input_shape)
    infos = trace_layers(model, input_shape)
    h, w = next(i.layout.grid for i in infos if i.name == name and i.layout is not None)  # patch grid for tokens
    finer = [i for i in infos if i.preferred and i.name != name and i.layout.grid[0] >= 2 * h
             and i.layout.grid[1] >= 2 * w]
    if not finer:
        raise InvalidOption(f"no layer has a map at least twice as fine as {name!r} ({h}x{w}); pass fine_layer",
                            errors=[FieldError("fine_layer", "no finer layer")])
    level = min(i.layout.grid[0] * i.layout.grid[1] for i in finer)
    candidates = [i for i in finer if i.layout.grid[0] * i.layout.grid[1] == level]
    modules = dict(model.named_modules())
    level_names = {i.name for i in candidates}
    # Top-most blocks of the level: containers none of whose ancestors is itself a module of this level (so ResNet's
    # ``layer3`` rather than its shortcut ``layer3.0.downsample``; the demo's ``features.block2``).
    containers = [i for i in candidates if any(True for _ in modules[i.name].children())
                  and not any(i.name.startswith(other + ".") for other in level_names)]
    relus = [i for i in candidates if isinstance(modules[i.name], nn.ReLU)]
    pick = (containers or relus or candidates)[0].name
    with _lock:
        _cache.setdefault(model, {})[key] = pick
    return pick


def _unit(m: Tensor) -> Tensor:
    peak = m.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(peak > 0, m / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(m))


class FusedCAM(Explainer):
    r"""Grad-CAM at the target layer fused with LayerCAM at a finer layer (see the module docstring).

    Example::

        FusedCAM().explain(model, x, targets, layer=None, task="multilabel", fusion="product")
    """

    name = "fused-cam"
    family = "cam"
    uses_layer = True
    description = ("Fused CAM: Grad-CAM at the target layer (class-discriminative, coarse) times LayerCAM at a "
                   "layer twice as fine (sharp), each normalised; 'mean' and 'max' fusions too.")
    params = (
        ParamSpec("fine_layer", str, "", description="finer layer for LayerCAM (empty: the earliest block at the next "
                                                     "finer resolution than the target layer)"),
        ParamSpec("fusion", str, "product", choices=("product", "mean", "max"), description="how the maps combine"),
        ParamSpec("coarse", str, "gradcam", choices=("gradcam", "layercam"), description="method at the target layer"),
    )

    def check_model(self, model: nn.Module, input_shape: Sequence[int], *, layer: str | None = None,
                    task: str = "multiclass") -> None:
        resolve_layer(model, layer, input_shape)
        auto_fine_layer(model, layer, input_shape)

    @single_pass
    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Explained:
        p, _ = self._bind(params)
        x = inputs
        coarse_name, _ = resolve_layer(model, layer, x.shape[1:])
        fine_name = p["fine_layer"] or auto_fine_layer(model, layer, x.shape[1:])
        if fine_name == coarse_name:
            raise InvalidOption(f"fine_layer {fine_name!r} is the target layer itself; choose a finer one",
                                errors=[FieldError("fine_layer", "same as the target layer")])
        with grad_enabled():
            # One forward: both maps are captured; the earlier one is the leaf the backward stops at.
            with capture(model, [coarse_name, fine_name], input_shape=x.shape[1:], leaf=FIRST) as cap:
                logits = logits_of(model(x), x.shape[0])
            coarse_act, fine_act = cap.activation(coarse_name), cap.activation(fine_name)
            rows = plan_rows(logits, requests, task)
            d_coarse, d_fine = row_gradients(logits, rows, [coarse_act, fine_act], task)
        img = rows.image
        coarse_cam = GradCAM if p["coarse"] == "gradcam" else LayerCAM
        coarse = _unit(coarse_cam().combine(cap.spatial(coarse_name, coarse_act.detach())[img].float(),
                                            cap.spatial(coarse_name, d_coarse).float()))
        fine = _unit(LayerCAM().combine(cap.spatial(fine_name, fine_act.detach())[img].float(),
                                        cap.spatial(fine_name, d_fine).float()))
        up = F.interpolate(coarse[:, None], size=fine.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        if p["fusion"] == "product":
            maps = up * fine
        elif p["fusion"] == "mean":
            maps = (up + fine) / 2
        else:
            maps = torch.maximum(up, fine)
        return Explained(rows, maps, reported_scores(logits, rows, task))


#: Methods this module adds, by name (for ``xaas calibrate --methods`` and the quality bench).
#: What ``bench/quality.py`` runs by default besides the engine's methods.
BENCH_METHODS: tuple[str, ...] = ("fused-cam", "fused-cam:fusion=mean", "layercam@features.block2")
