"""Class-activation-map methods: a weighted sum of the target layer's feature maps ``A`` (``[B, K, h, w]``).

Notation: ``A^k`` is channel ``k`` of the target layer's output, ``y^c`` the pre-softmax logit of class ``c``
(multiclass) or the class's own logit (multilabel), ``g^k = dy^c / dA^k`` and ``Z = h * w``.

Gradients stop at the target layer: a forward hook replaces the layer's output by a detached leaf that requires
grad, so ``torch.autograd.grad(sum_b y_b^{c_b}, A)`` walks only the head (layer → logits). With frozen parameters
the trunk records no graph at all, which is why Grad-CAM costs about one forward pass.

Every map is returned at the layer's native ``h x w`` resolution, raw (not normalised); upsampling (bilinear) is
the renderer's job. All maps are ReLU'd and therefore non-negative.

Example::

    maps = METHODS["gradcam"].explain(model, x, targets, layer="layer4", task="multiclass")   # [B, h, w]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .base import (
    Explainer,
    Hooks,
    check_targets,
    chunks,
    class_probability,
    grad_enabled,
    logits_of,
    prepare_batch,
    probe_batch,
    target_scores,
)
from .layers import resolve_layer

__all__ = [
    "CAM",
    "GradCAM",
    "GradCAMCounterfactual",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
    "layer_activation",
]


# --------------------------------------------------------------------------------------------------- capture


@dataclass
class _Capture:
    name: str
    activation: Tensor | None = None
    calls: int = 0
    after: list[str] = field(default_factory=list)      # leaf modules that ran after the layer (head description)
    last_linear: nn.Linear | None = None                # last nn.Linear that ran after the layer


@contextlib.contextmanager
def _capture(model: nn.Module, name: str, module: nn.Module, *, leaf: bool, watch_head: bool = False
             ) -> Iterator[_Capture]:
    cap = _Capture(name)

    def on_layer(mod: nn.Module, args: tuple, out: Any) -> Tensor:
        if not isinstance(out, Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InvalidOption(f"layer {name!r} outputs {shape}, not a [B, C, h, w] spatial map",
                                errors=[FieldError("layer", "not spatial")])
        cap.calls += 1
        cap.after.clear()
        cap.last_linear = None
        act = out.detach()
        if leaf:
            act.requires_grad_()
        cap.activation = act
        # Downstream code gets a copy: in-place ops after the layer (VGG's ReLU(inplace=True), DenseNet's
        # F.relu(features, inplace=True)) would otherwise fail on the leaf or silently change the captured map.
        return act.clone()

    with Hooks() as hooks:
        hooks.forward(module, on_layer)
        if watch_head:
            names = {m: n for n, m in model.named_modules()}

            def on_leaf(mod: nn.Module, args: tuple, out: Any) -> None:
                if cap.calls:
                    cap.after.append(f"{names[mod]} ({type(mod).__name__})")
                    if isinstance(mod, nn.Linear):
                        cap.last_linear = mod

            for mod in model.modules():
                if mod is not module and not any(True for _ in mod.children()):
                    hooks.forward(mod, on_leaf)
        yield cap


def _check_single_call(cap: _Capture) -> Tensor:
    if cap.calls == 0 or cap.activation is None:
        raise InvalidOption(f"layer {cap.name!r} did not run in the model's forward pass",
                            errors=[FieldError("layer", "not executed")])
    if cap.calls > 1:
        raise InvalidOption(f"layer {cap.name!r} runs {cap.calls} times per forward pass, so its map is ambiguous; "
                            "choose a module that runs once (e.g. its parent block)",
                            errors=[FieldError("layer", "runs more than once")])
    return cap.activation


def layer_activation(model: nn.Module, x: Tensor, targets: Tensor, layer: str | None, *, grad: bool,
                     watch_head: bool = False) -> tuple[Tensor, Tensor | None, Tensor, _Capture]:
    """``(A, dA, logits, capture)``: the target layer's activation ``A`` and, with ``grad``, the gradient of each
    row's own target logit with respect to it (the backward pass stops at ``A``)."""
    name, module = resolve_layer(model, layer, x.shape[1:])
    ctx = grad_enabled() if grad else torch.no_grad()
    with ctx:
        with _capture(model, name, module, leaf=grad, watch_head=watch_head) as cap:
            logits = logits_of(model(x), x.shape[0])
        act = _check_single_call(cap)
        check_targets(logits, targets)
        if not grad:
            return act, None, logits, cap
        score = target_scores(logits, targets).sum()
        g = torch.autograd.grad(score, act, allow_unused=True)[0] if score.requires_grad else None
    if g is None:
        raise InvalidOption(f"the model's logits do not depend on layer {name!r}",
                            errors=[FieldError("layer", "not upstream of the logits")])
    return act, g, logits, cap


class _CAMFamily(Explainer):
    family = "cam"
    uses_layer = True
    params = ()

    def check_model(self, model: nn.Module, input_shape: Sequence[int], *, layer: str | None = None,
                    task: str = "multiclass") -> None:
        resolve_layer(model, layer, input_shape)


# --------------------------------------------------------------------------------------------------- CAM


class CAM(_CAMFamily):
    r"""Class Activation Mapping (Zhou et al., CVPR 2016).

    For a network ending in global-average-pooling followed by a linear layer ``y^c = \sum_k w_k^c \frac{1}{Z}
    \sum_{ij} f(A)^k_{ij} + b^c``:

        M^c = ReLU( \sum_k w_k^c f(A)^k )

    ``f`` is what the network applies between the layer and the pool: the identity, or a ReLU for DenseNet, whose
    ``features`` output is pooled after ``F.relu``. The head is verified numerically on the batch itself (the logits
    must equal ``linear(mean_{ij} f(A))``), otherwise InvalidOption: use ``gradcam``, which equals CAM up to the
    positive factor ``1/Z`` on such heads. The ReLU is applied so the map reads like the other heatmaps (the paper
    shows raw ``M^c``; its positive part is what localises the class).

    Example::

        CAM().explain(resnet, x, torch.tensor([281]), layer="layer4", task="multiclass")   # [1, 7, 7]
    """

    name = "cam"
    description = ("Class Activation Mapping: the classifier's weights applied to the feature maps. Needs a global "
                   "average pool followed by one linear layer.")

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        self._bind(params)
        x, t = prepare_batch(model, inputs, targets, task)
        act, _, logits, cap = layer_activation(model, x, t, layer, grad=False, watch_head=True)
        weight, pooled = _gap_linear_head(act, logits, cap)
        cam = torch.einsum("bk,bkhw->bhw", weight[t].float(), pooled.float())
        return cam.relu()

    def check_model(self, model: nn.Module, input_shape: Sequence[int], *, layer: str | None = None,
                    task: str = "multiclass") -> None:
        x, t = probe_batch(model, input_shape)
        self.explain(model, x, t, layer=layer, task=task)


def _gap_linear_head(act: Tensor, logits: Tensor, cap: _Capture) -> tuple[Tensor, Tensor]:
    """``(W, f(A))`` when ``logits == W · mean_{ij} f(A) + b`` for ``f`` in (identity, ReLU), else InvalidOption."""
    lin = cap.last_linear
    k, c = logits.shape[1], act.shape[1]
    if lin is not None and tuple(lin.weight.shape) == (k, c):
        tol = 1e-3 if lin.weight.dtype in (torch.float32, torch.float64) else 2e-2
        for pooled in (act, act.relu()):
            pred = F.linear(pooled.mean((2, 3)).to(lin.weight.dtype), lin.weight, lin.bias)
            err = (pred.float() - logits.float()).abs().max()
            scale = logits.float().abs().max().clamp_min(1e-12)
            if bool(err <= tol * scale):
                return lin.weight, pooled
    head = " → ".join(cap.after[:6]) + (" → ..." if len(cap.after) > 6 else "")
    raise InvalidOption(
        f"cam needs a global-average-pool → linear head on layer {cap.name!r} ({c} channels → {k} classes); this "
        f"model's head is {head or 'empty'}; use gradcam instead",
        errors=[FieldError("method", "no GAP→linear head")],
    )


# --------------------------------------------------------------------------------------------------- gradient CAMs


class _GradientCAM(_CAMFamily):
    negate_gradients = False

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        self._bind(params)
        x, t = prepare_batch(model, inputs, targets, task)
        act, grad, _, _ = layer_activation(model, x, t, layer, grad=True)
        assert grad is not None
        act, grad = act.detach().float(), grad.float()
        if self.negate_gradients:
            grad = -grad
        return self.combine(act, grad)

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class GradCAM(_GradientCAM):
    r"""Grad-CAM (Selvaraju et al., ICCV 2017).

        \alpha_k^c = \frac{1}{Z} \sum_{ij} \frac{\partial y^c}{\partial A^k_{ij}},
        L^c = ReLU( \sum_k \alpha_k^c A^k )

    Example::

        GradCAM().explain(model, x, targets, layer="layer4", task="multiclass")
    """

    name = "gradcam"
    description = "Grad-CAM: feature maps weighted by their spatially averaged gradients, ReLU'd."

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:
        alpha = grad.mean((2, 3))
        return torch.einsum("bk,bkhw->bhw", alpha, act).relu()


class GradCAMCounterfactual(GradCAM):
    r"""Counterfactual Grad-CAM (Selvaraju et al., 2017, §"Counterfactual explanations"): Grad-CAM with negated
    gradients, i.e. the regions whose removal would make the network *more* confident in class ``c``.

        \alpha_k^c = \frac{1}{Z} \sum_{ij} -\frac{\partial y^c}{\partial A^k_{ij}},
        L^c = ReLU( \sum_k \alpha_k^c A^k )

    Example::

        GradCAMCounterfactual().explain(model, x, targets, layer=None, task="multiclass")
    """

    name = "gradcam-counterfactual"
    description = "Counterfactual Grad-CAM: Grad-CAM with negated gradients (evidence against the class)."
    negate_gradients = True


class HiResCAM(_GradientCAM):
    r"""HiResCAM (Draelos & Carin, 2020): the element-wise product of gradient and activation, summed over channels.

        L^c = ReLU( \sum_k \frac{\partial y^c}{\partial A^k} \odot A^k )

    Example::

        HiResCAM().explain(model, x, targets, layer=None, task="multiclass")
    """

    name = "hirescam"
    description = "HiResCAM: gradient ⊙ activation summed over channels (faithful for GAP heads), ReLU'd."

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:
        return (grad * act).sum(1).relu()


class XGradCAM(_GradientCAM):
    r"""XGrad-CAM (Fu et al., BMVC 2020): axiom-derived channel weights.

        \alpha_k^c = \sum_{ij} \frac{A^k_{ij}}{\sum_{ab} A^k_{ab}} \frac{\partial y^c}{\partial A^k_{ij}},
        L^c = ReLU( \sum_k \alpha_k^c A^k )

    Channels with ``\sum_{ab} A^k_{ab} = 0`` get weight 0.

    Example::

        XGradCAM().explain(model, x, targets, layer=None, task="multiclass")
    """

    name = "xgradcam"
    description = "XGrad-CAM: channel weights = activation-weighted average gradient, ReLU'd."

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:
        total = act.sum((2, 3))
        num = (grad * act).sum((2, 3))
        alpha = torch.where(total != 0, num / torch.where(total != 0, total, torch.ones_like(total)), 0.0)
        return torch.einsum("bk,bkhw->bhw", alpha, act).relu()


class GradCAMPlusPlus(_GradientCAM):
    r"""Grad-CAM++ (Chattopadhyay et al., WACV 2018), with the paper's exponential-free closed form in which the 2nd
    and 3rd derivatives are approximated by powers of the first (as in the grad-cam package):

        g = \partial y^c / \partial A^k_{ij},
        \alpha^{kc}_{ij} = \frac{g^2}{2 g^2 + \sum_{ab} A^k_{ab} \, g^3}      (0 where g = 0 or the denominator is 0)
        w_k^c = \sum_{ij} \alpha^{kc}_{ij} ReLU(g),
        L^c = ReLU( \sum_k w_k^c A^k )

    Unlike grad-cam's implementation no ``eps`` is added to the denominator: it would bias ``\alpha`` when
    gradients are small (``g^2`` comparable to 1e-6), which is common with wide heads.

    Example::

        GradCAMPlusPlus().explain(model, x, targets, layer=None, task="multiclass")
    """

    name = "gradcam-pp"
    sanity = ("fails the model-parameter randomisation check (Adebayo et al., 2018) on the demo model: rank "
              "correlation with the maps of a re-initialised model 0.60 (all layers re-initialised) / 0.66 "
              "(logit layer only) (bench/quality.py)")
    description = "Grad-CAM++: pixel-wise weighted positive gradients (closed-form alpha), ReLU'd."

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:
        g2 = grad * grad
        g3 = g2 * grad
        denom = 2 * g2 + act.sum((2, 3), keepdim=True) * g3
        ok = (grad != 0) & (denom != 0)
        alpha = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
        weights = (alpha * grad.relu()).sum((2, 3))
        return torch.einsum("bk,bkhw->bhw", weights, act).relu()


class LayerCAM(_GradientCAM):
    r"""LayerCAM (Jiang et al., IEEE TIP 2021): each location weighted by its own positive gradient.

        L^c = ReLU( \sum_k ReLU(\partial y^c / \partial A^k) \odot A^k )

    Example::

        LayerCAM().explain(model, x, targets, layer="layer3", task="multiclass")
    """

    name = "layercam"
    sanity = ("fails the model-parameter randomisation check (Adebayo et al., 2018) on the demo model: rank "
              "correlation with the maps of a re-initialised model 0.59 (all layers re-initialised) / 0.65 "
              "(logit layer only) (bench/quality.py)")
    description = "LayerCAM: activations weighted element-wise by their positive gradients; works on early layers."

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:
        return (grad.relu() * act).sum(1).relu()


# --------------------------------------------------------------------------------------------------- Score-CAM


class ScoreCAM(_CAMFamily):
    r"""Score-CAM (Wang et al., CVPR-W 2020): gradient-free channel weights from masked forward passes.

        H^k = s( Up(A^k) ),  s(M) = \frac{M - \min M}{\max M - \min M}   (0 for a constant map)
        \alpha_k^c = softmax(f(X \odot H^k))_c   (multiclass) | \sigma(f(X \odot H^k)_c)   (multilabel)
        L^c = ReLU( \sum_k \alpha_k^c A^k )

    ``Up`` is bilinear (``align_corners=False``) to the input size; ``X`` is the model input as given (so masked-out
    pixels become 0 in the model's normalised space). Cost: one forward per channel per row (512 for resnet18's
    ``layer4``, 2048 for resnet50), in no-grad chunks of ``FORWARD_CHUNK`` images.

    Example::

        ScoreCAM().explain(model, x, targets, layer=None, task="multiclass")
    """

    name = "scorecam"
    sanity = ("fails the model-parameter randomisation check (Adebayo et al., 2018) on the demo model: rank "
              "correlation with the maps of a re-initialised model 0.66 (all layers re-initialised) / 0.74 "
              "(logit layer only) (bench/quality.py)")
    description = ("Score-CAM: each feature map, upsampled and min-max normalised, masks the input; the class "
                   "probability of the masked input weights the map. One forward pass per channel.")

    def forwards_per_row(self, params: Mapping[str, Any], input_shape: Sequence[int]) -> int:
        return 512  # channels of the target layer; a typical figure, the real one needs the model

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        self._bind(params)
        x, t = prepare_batch(model, inputs, targets, task)
        act, _, _, _ = layer_activation(model, x, t, layer, grad=False)
        b, k = act.shape[:2]
        size = x.shape[-2:]
        weights = torch.empty(b * k, device=x.device, dtype=torch.float32)
        with torch.no_grad():
            for start, stop in chunks(b * k, self._forward_chunk()):
                idx = torch.arange(start, stop, device=x.device)
                rows, chans = idx // k, idx % k
                up = F.interpolate(act[rows, chans][:, None].float(), size=size, mode="bilinear",
                                   align_corners=False)
                lo = up.amin((2, 3), keepdim=True)
                span = up.amax((2, 3), keepdim=True) - lo
                masks = torch.where(span > 0, (up - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
                out = logits_of(model(x[rows] * masks.to(x.dtype)), stop - start)
                weights[start:stop] = class_probability(out, t[rows], task).float()
        return torch.einsum("bk,bkhw->bhw", weights.view(b, k), act.float()).relu()
