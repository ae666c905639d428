r"""``mil-gradcam``: Grad-CAM of an attention-MIL model's patch encoder, stitched over the image.

The attention (``attention-mil``) says *which* patches a bag's class was read from, at patch resolution. Inside a
patch the encoder's last feature maps say *where*: Grad-CAM (Selvaraju et al., ICCV 2017) of the bag's class taken
at a per-patch layer of the encoder, with the ``N`` patch maps of the bag read as one tiled feature map of the image.

Notation: ``A^k_n`` is channel ``k`` of the layer's output for patch ``n`` (``[K, h, w]`` per patch), ``y^c`` the
bag's pre-softmax logit of class ``c``. With ``Z = N h w``:

    \alpha_k^c = \frac{1}{Z} \sum_{n} \sum_{ij} \frac{\partial y^c}{\partial A^k_{n,ij}},
    \qquad L^c_n = ReLU( \sum_k \alpha_k^c A^k_n )

(the channel weights are shared by all the patches of a bag, as Grad-CAM's are by all the positions of an image; a
bag of one patch covering the whole image is exactly the plain ``gradcam`` of the encoder + head on that image).
The per-patch maps ``L^c_n`` ``[h, w]`` are then stitched into the image grid like :func:`~.mil.patch_map` spreads
patch values: patch ``n`` at row ``r``, column ``q`` of the tiling covers cells ``[r s', r s' + h) x [q s'', q s'' +
w)`` with ``s' = stride h / patch`` (``s'' = stride w / patch``), overlapping cells averaged (``F.fold`` sums, a fold
of ones counts); a stride that does not land on whole cells (``stride h % patch != 0``) is refused. The grid covers the
padded image (``patch / h`` pixels a cell) and is cropped to the image: ``ceil(H h / patch) x ceil(W w / patch)``.

One pass: forward hooks on the layer make *every* call's output a detached leaf that requires grad (the encoder may
run its patches in several chunks: the calls are concatenated in order, and must add up to one ``[K, h, w]`` map per
patch, ``B N`` rows), so one forward gives the logits, the scores and the top-k targets, and the backward walks only
layer → logits; several targets of a bag repeat only that backward (:func:`~.passes.slot_gradients`). The model is
left untouched (hooks live for the call, parameters keep their ``requires_grad``).

The layer: ``layer=`` (a module name, e.g. ``encoder.b4`` of the demo), the registry's ``target_layer``, else the last
module seen with a per-patch 4-D output larger than 1 x 1 (a global pool's ``[B N, K, 1, 1]`` has no "where") in a
probe forward of a two-patch bag (:func:`patch_layers`).

Example::

    tiling = Tiling.of(height=512, width=512, patch=32, stride=32)
    ex = METHODS["mil-gradcam"].explain_bags(model, tile(x, tiling)[None], [TargetRequest()], tiling=tiling,
                                             layer="encoder.b4")    # ex.maps [1, 64, 64] (4 x 4 cells a patch)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .base import Explained, Explainer, Hooks, grad_enabled, model_device, outside_inference_mode, prepare_inputs
from .mil import Tiling, _shape, check_bags, mil_outputs, stitch_patch_maps
from .passes import Steps, complete, single_pass, slot_gradients
from .targets import Rows, TargetRequest, plan_rows, reported_scores

__all__ = ["MILGradCAM", "patch_layers", "stitch_patch_maps"]


def patch_layers(model: nn.Module, patch_shape: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """``[(name, (K, h, w))]``: the modules whose output is one 4-D map per patch (calls adding up to ``B N`` rows of
    one shape) in a probe forward of a seeded two-patch bag, in the order their last call finished."""
    return _layers_seen(model, _probe_bag(model, patch_shape))


def _probe_bag(model: nn.Module, patch_shape: Sequence[int]) -> Tensor:
    """A seeded bag of two patches ``[1, 2, *patch_shape]`` on the model's device and dtype."""
    device, dtype = model_device(model)
    return torch.randn((1, 2, *patch_shape), generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


def _layers_seen(model: nn.Module, bags: Tensor) -> list[tuple[str, tuple[int, ...]]]:
    calls: dict[str, list[tuple[int, ...] | None]] = {}
    last: dict[str, int] = {}   # the order of each module's last finished call
    order = itertools.count()

    def recorder(name: str) -> Any:
        def on_call(mod: nn.Module, args: tuple, out: Any) -> None:
            calls.setdefault(name, []).append(tuple(out.shape) if isinstance(out, Tensor) and out.dim() == 4 else None)
            last[name] = next(order)

        return on_call

    with Hooks() as hooks, torch.no_grad():
        for name, module in model.named_modules():
            if name:
                hooks.forward(module, recorder(name))
        model(bags)
    rows = bags.shape[0] * bags.shape[1]
    found = []
    for name, shapes in calls.items():
        if any(s is None for s in shapes) or len({s[1:] for s in shapes}) != 1:  # type: ignore[index]
            continue
        if sum(s[0] for s in shapes) == rows:  # type: ignore[index]
            found.append((name, shapes[0][1:]))  # type: ignore[index]
    return sorted(found, key=lambda item: last[item[0]])


class MILGradCAM(Explainer):
    r"""Grad-CAM of a MIL model's patch encoder over the bag's tiled feature map (Selvaraju et al., ICCV 2017, on
    the patches of an attention-MIL model, Ilse et al. 2018):

        \alpha_k^c = \frac{1}{N h w} \sum_n \sum_{ij} \frac{\partial y^c}{\partial A^k_{n,ij}},
        \qquad L^c_n = ReLU( \sum_k \alpha_k^c A^k_n ),

    stitched over the image (overlapping patches averaged, cropped to the image). See :mod:`service.engine.mil_cam`.

    Example::

        MILGradCAM().explain_bags(model, bags, [TargetRequest()], tiling=tiling, layer="encoder.b4")
    """

    name = "mil-gradcam"
    family = "mil"
    uses_layer = True
    description = ("MIL Grad-CAM: Grad-CAM of the bag's class at a per-patch layer of a multiple-instance model's "
                   "patch encoder, channel weights averaged over all patches, the patch maps stitched over the image.")
    tasks: ClassVar[tuple[str, ...] | None] = ("mil",)

    def steps(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *,
              layer: str | None = None, task: str = "mil", **params: Any) -> Steps[Explained]:
        """:meth:`run` on bags ``[B, N, C, p, p]`` (``tiling`` in the keyword arguments)."""
        check_bags(self.name, inputs, requests, task)
        with torch.inference_mode(False):
            gen = self.run(model, prepare_inputs(inputs), list(requests), layer=layer, task=task, **params)
        return (yield from outside_inference_mode(gen))

    def check_model(self, model: nn.Module, input_shape: Sequence[int], *, layer: str | None = None,
                    task: str = "mil") -> None:
        """Run on a seeded two-patch bag: the layer must give one map per patch and reach the logits."""
        p = int(input_shape[-1])
        tiling = Tiling.of(height=p, width=2 * p, patch=p, stride=p)
        self.explain_bags(model, _probe_bag(model, input_shape), [TargetRequest()], tiling=tiling, layer=layer)

    @single_pass
    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Explained:
        tiling = params.pop("tiling", None)
        if not isinstance(tiling, Tiling) or tiling.count != inputs.shape[1]:
            raise InvalidOption(f"{self.name} needs the bags' tiling ({inputs.shape[1]} patches)")
        self._bind(params)
        b, n = inputs.shape[:2]
        name = self._layer(model, inputs, layer)
        leaves: list[Tensor] = []

        def on_call(mod: nn.Module, args: tuple, out: Any) -> Tensor:
            if not isinstance(out, Tensor) or out.dim() != 4:
                raise InvalidOption(f"layer {name!r} outputs {_shape(out)}, not a per-patch map [B*N, K, h, w]",
                                    errors=[FieldError("layer", "not a per-patch 4-D map")])
            leaf = out.detach().requires_grad_()
            leaves.append(leaf)
            return leaf.clone()

        with grad_enabled(), Hooks() as hooks:
            hooks.forward(dict(model.named_modules())[name], on_call)
            out = mil_outputs(model(inputs), b, n)
        act = self._stacked(name, leaves, b * n)
        if not out.logits.requires_grad:
            raise InvalidOption(f"the model's logits do not depend on layer {name!r}",
                                errors=[FieldError("layer", "not upstream of the logits")])
        rows = plan_rows(out.logits, requests, task)
        grad = self._row_gradients(out.logits, rows, leaves, task, name).float()        # [R, N, K, h, w]
        spatial = act.detach().float().reshape(b, n, *act.shape[1:])[rows.image]    # [R, N, K, h, w]
        alpha = grad.mean((1, 3, 4))                                                 # [R, K]
        maps = torch.einsum("rk,rnkhw->rnhw", alpha, spatial).relu()
        return Explained(rows, stitch_patch_maps(maps, tiling), reported_scores(out.logits, rows, task))

    def explain_bags(self, model: nn.Module, bags: Tensor, requests: Sequence[TargetRequest], *, tiling: Tiling,
                     layer: str | None = None, **params: Any) -> Explained:
        """The synchronous form of :meth:`steps`."""
        return complete(self.steps(model, bags, requests, layer=layer, task="mil", tiling=tiling, **params))

    # ------------------------------------------------------------------------------------------------- helpers

    def _layer(self, model: nn.Module, inputs: Tensor, layer: str | None) -> str:
        if layer is not None:
            if layer not in dict(model.named_modules()) or not layer:
                found = [name for name, _ in _layers_seen(model, inputs[:1, :2])]
                raise InvalidOption(f"the model has no module {layer!r}; its per-patch maps: "
                                    f"{', '.join(found) or 'none'}", errors=[FieldError("layer", "no such module")])
            return layer
        found = [(n, shape) for n, shape in _layers_seen(model, inputs[:1, :2]) if shape[1] * shape[2] > 1]
        if not found:
            raise InvalidOption(f"{self.name} needs a patch encoder with a per-patch map [B*N, K, h, w] (a conv "
                                "layer's output); no module of this model outputs one",
                                errors=[FieldError("layer", "no per-patch 4-D map")])
        return found[-1][0]

    @staticmethod
    def _stacked(name: str, leaves: Sequence[Tensor], rows: int) -> Tensor:
        if not leaves:
            raise InvalidOption(f"layer {name!r} did not run in the model's forward pass",
                                errors=[FieldError("layer", "not executed")])
        shapes = {tuple(t.shape[1:]) for t in leaves}
        total = sum(t.shape[0] for t in leaves)
        if len(shapes) != 1 or total != rows:
            raise InvalidOption(f"layer {name!r} ran {len(leaves)} time(s) with {total} rows of shapes "
                                f"{sorted(shapes)}, not one [K, h, w] map per patch ({rows} patches in the batch)",
                                errors=[FieldError("layer", "not one map per patch")])
        return torch.cat(list(leaves))

    @staticmethod
    def _row_gradients(logits: Tensor, rows: Rows, leaves: Sequence[Tensor], task: str, name: str) -> Tensor:
        """``[R, N, K, h, w]``: each row's gradient with respect to its own bag's patch maps (every call's leaf)."""
        b = logits.shape[0]
        shape = (b, -1, *leaves[0].shape[1:])
        out = leaves[0].new_zeros((len(rows), sum(t.shape[0] for t in leaves) // b, *leaves[0].shape[1:]))
        for j, _samples, grads in slot_gradients(logits, rows, leaves, task):
            if all(g is None for g in grads):
                raise InvalidOption(f"the model's logits do not depend on layer {name!r}",
                                    errors=[FieldError("layer", "not upstream of the logits")])
            g = torch.cat([torch.zeros_like(t) if gi is None else gi for t, gi in zip(leaves, grads, strict=True)])
            in_slot = torch.nonzero(rows.slot == j).flatten()
            out[in_slot] = g.reshape(shape)[rows.image[in_slot]]
        return out
