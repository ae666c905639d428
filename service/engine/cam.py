"""Class-activation-map methods: a weighted sum of the target layer's feature maps ``A`` (``[B, K, h, w]``).

Notation: ``A^k`` is channel ``k`` of the target layer's output, ``y^c`` the explained score — the pre-softmax logit
of class ``c`` (multiclass) or the class's own logit (multilabel) — ``g^k = dy^c / dA^k`` and ``Z = h * w``.

One pass: a forward hook replaces the layer's output by a detached leaf that requires grad, so the forward yields
the logits (hence the reported scores and the top-k targets) and ``torch.autograd.grad(sum_b y_b^{c_b}, A)`` walks
only the head (layer → logits). With frozen parameters the trunk records no graph at all, which is why Grad-CAM
costs about one forward pass. When an image has several targets the activation is shared and only the head's
backward repeats, once per target slot.

Every map is returned at the layer's native ``h x w`` resolution, raw (not normalised); upsampling (bilinear) is
the renderer's job. All maps are ReLU'd and therefore non-negative.

Example::

    maps = METHODS["gradcam"].explain(model, x, targets, layer="layer4", task="multiclass")   # [B, h, w]
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .augment import AUGMENT_PARAMS
from .base import (
    Explained,
    Explainer,
    ParamSpec,
    forward_chunk_size,
    grad_enabled,
    logits_of,
    probe_batch,
    spatial_dims,
    weighted_maps,
)
from .layers import resolve_layer
from .passes import Capture, Steps, capture, row_gradients, rows_of_samples, run_in_chunks, single_pass
from .targets import ClassLogit, Rows, TargetRequest, plan_rows, reported_scores

__all__ = [
    "CAM",
    "GradCAM",
    "GradCAMCounterfactual",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
    "layer_pass",
]


def layer_pass(model: nn.Module, x: Tensor, requests: Sequence[TargetRequest], layer: str | None, task: str, *,
               grad: bool, watch_head: bool = False) -> tuple[Tensor, Tensor, Rows, Capture]:
    """``(A, logits, rows, capture)``: one forward with the target layer hooked (a leaf that requires grad when
    ``grad``), the logits, and the rows its requests resolve to. ``A`` is the output in its own layout; the
    capture's ``spatial`` views it (and gradients with respect to it) as ``[B, C, h, w]``."""
    name, _ = resolve_layer(model, layer, x.shape[1:])
    ctx = grad_enabled() if grad else torch.no_grad()
    leaf = name if grad else None
    with ctx, capture(model, [name], input_shape=x.shape[1:], leaf=leaf, watch_head=watch_head) as cap:
        logits = logits_of(model(x), x.shape[0])
    act = cap.activation(name)
    if grad and not logits.requires_grad:
        raise InvalidOption(f"the model's logits do not depend on layer {name!r}",
                            errors=[FieldError("layer", "not upstream of the logits")])
    return act, logits, plan_rows(logits, requests, task), cap


def class_indices(rows: Rows, method: str) -> Tensor:
    """The class of every row, for methods defined on a classifier's weights (CAM)."""
    if not all(isinstance(t, ClassLogit) for t in rows.targets):
        raise InvalidOption(f"{method} explains classes only", errors=[FieldError("target", "not a class")])
    return torch.tensor([t.index for t in rows.targets], dtype=torch.long,  # type: ignore[attr-defined]
                        device=rows.image.device)


class _CAMFamily(Explainer):
    family = "cam"
    uses_layer = True
    augmentable = True
    params = AUGMENT_PARAMS

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
    volumes = True
    description = ("Class Activation Mapping: the classifier's weights applied to the feature maps. Needs a global "
                   "average pool followed by one linear layer.")

    @single_pass
    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Explained:
        self._bind(params)
        act, logits, rows, cap = layer_pass(model, inputs, requests, layer, task, grad=False, watch_head=True)
        weight, pooled = _gap_linear_head(cap.spatial(next(iter(cap.layers)), act), logits, cap)
        classes = class_indices(rows, self.name)
        cam = weighted_maps(weight[classes].float(), pooled[rows.image].float())
        return Explained(rows, cam.relu(), reported_scores(logits, rows, task))

    def check_model(self, model: nn.Module, input_shape: Sequence[int], *, layer: str | None = None,
                    task: str = "multiclass") -> None:
        if task == "detection":
            raise InvalidOption("cam reads a classifier's global-average-pool → linear head; a detector has none "
                                "(gradcam weighs the maps by gradients instead)")
        x, t = probe_batch(model, input_shape)
        self.explain(model, x, t, layer=layer, task=task)


def _require_nonnegative(method: str, layer: str, act: Tensor) -> None:
    low = float(act.min()) if act.numel() else 0.0
    if low < 0:
        raise InvalidOption(
            f"{method} assumes non-negative (ReLU'd) activations, but layer {layer!r} has negative values (min "
            f"{low:.3g}: a normalisation or pre-activation layer); its weights then point at the wrong regions. Use "
            "gradcam, or a layer after a ReLU", errors=[FieldError("layer", "negative activations")])


def _gap_linear_head(act: Tensor, logits: Tensor, cap: Capture) -> tuple[Tensor, Tensor]:
    """``(W, f(A))`` when ``logits == W · mean_{ij} f(A) + b`` for ``f`` in (identity, ReLU), else InvalidOption."""
    lin = cap.last_linear
    k, c = logits.shape[1], act.shape[1]
    # an all-zero head (e.g. a freshly initialised ViT head) matches any pooling: it proves nothing
    if lin is not None and tuple(lin.weight.shape) == (k, c) and bool(lin.weight.detach().abs().amax() > 0):
        tol = 1e-3 if lin.weight.dtype in (torch.float32, torch.float64) else 2e-2
        for pooled in (act, act.relu()):
            pred = F.linear(pooled.mean(spatial_dims(pooled)).to(lin.weight.dtype), lin.weight,
                            getattr(lin, "bias", None))
            err = (pred.float() - logits.float()).abs().max()
            scale = logits.float().abs().max().clamp_min(1e-12)
            if bool(err <= tol * scale):
                return lin.weight, pooled
    head = " → ".join(cap.after[:6]) + (" → ..." if len(cap.after) > 6 else "")
    raise InvalidOption(
        f"cam needs a global-average-pool → linear head on layer {next(iter(cap.layers))!r} ({c} channels → {k} "
        f"classes); this "
        f"model's head is {head or 'empty'}; use gradcam instead",
        errors=[FieldError("method", "no GAP→linear head")],
    )


# --------------------------------------------------------------------------------------------------- gradient CAMs


class _GradientCAM(_CAMFamily):
    volumes = True
    negate_gradients = False
    #: The weighting assumes ReLU'd (non-negative) activations; a layer with negative values is refused.
    needs_nonnegative = False

    def check_model(self, model: nn.Module, input_shape: Sequence[int], *, layer: str | None = None,
                    task: str = "multiclass") -> None:
        if not self.needs_nonnegative:
            return super().check_model(model, input_shape, layer=layer, task=task)
        x, t = probe_batch(model, input_shape)   # run it: whether activations go negative needs a forward
        self.explain(model, x, t, layer=layer, task=task)
        return None

    @single_pass
    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Explained:
        self._bind(params)
        act, logits, rows, cap = layer_pass(model, inputs, requests, layer, task, grad=True)
        name = next(iter(cap.layers))
        (grad,) = row_gradients(logits, rows, [act], task)
        grad = cap.spatial(name, -grad.float() if self.negate_gradients else grad.float())
        spatial = cap.spatial(name, act.detach()).float()
        if self.needs_nonnegative:
            _require_nonnegative(self.name, name, spatial)
        maps = self.combine(spatial[rows.image], grad)
        return Explained(rows, maps, reported_scores(logits, rows, task))

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
        alpha = grad.mean(spatial_dims(grad))
        return weighted_maps(alpha, act).relu()


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
    needs_nonnegative = True
    description = "XGrad-CAM: channel weights = activation-weighted average gradient, ReLU'd."

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:
        total = act.sum(spatial_dims(act))
        num = (grad * act).sum(spatial_dims(act))
        alpha = torch.where(total != 0, num / torch.where(total != 0, total, torch.ones_like(total)), 0.0)
        return weighted_maps(alpha, act).relu()


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
              "correlation with the maps of a re-initialised model 0.60 (all layers re-initialised) / 0.66 (logit "
              "layer only) (bench/quality.py)")
    description = "Grad-CAM++: pixel-wise weighted positive gradients (closed-form alpha), ReLU'd."

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:
        g2 = grad * grad
        g3 = g2 * grad
        denom = 2 * g2 + act.sum(spatial_dims(act), keepdim=True) * g3
        ok = (grad != 0) & (denom != 0)
        alpha = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
        weights = (alpha * grad.relu()).sum(spatial_dims(act))
        return weighted_maps(weights, act).relu()


class LayerCAM(_GradientCAM):
    r"""LayerCAM (Jiang et al., IEEE TIP 2021): each location weighted by its own positive gradient.

        L^c = ReLU( \sum_k ReLU(\partial y^c / \partial A^k) \odot A^k )

    Example::

        LayerCAM().explain(model, x, targets, layer="layer3", task="multiclass")
    """

    name = "layercam"
    sanity = ("fails the model-parameter randomisation check (Adebayo et al., 2018) on the demo model: rank "
              "correlation with the maps of a re-initialised model 0.59 (all layers re-initialised) / 0.65 (logit "
              "layer only) (bench/quality.py)")
    description = "LayerCAM: activations weighted element-wise by their positive gradients; works on early layers."

    def combine(self, act: Tensor, grad: Tensor) -> Tensor:
        return (grad.relu() * act).sum(1).relu()


# --------------------------------------------------------------------------------------------------- Score-CAM


class ScoreCAM(_CAMFamily):
    r"""Score-CAM (Wang et al., CVPR-W 2020): gradient-free channel weights from masked forward passes.

        H^k = s( Up(A^k) ),  s(M) = \frac{M - \min M}{\max M - \min M}
        \alpha_k^c = softmax(f(X \odot H^k))_c   (multiclass) | \sigma(f(X \odot H^k)_c)   (multilabel)
        L^c = ReLU( \sum_k \alpha_k^c A^k )

    ``Up`` is bilinear (``align_corners=False``) to the input size; ``X`` is the model input as given (so masked-out
    pixels become 0 in the model's normalised space). A channel whose map is constant has no normalised mask (``s``
    divides by zero): it is skipped, i.e. weighted 0, and costs no forward.

    Cost: one forward per (image, non-constant channel) — 512 for resnet18's ``layer4``, 1280 for EfficientNet's
    last layer — shared by all targets of the image, batched at the largest chunk that fits (``FORWARD_CHUNK``,
    halved on out-of-memory), in half precision on CUDA. ``channels=N`` trades fidelity for time explicitly: only
    the N channels with the largest Grad-CAM weight of each target are scored ("Faster Score-CAM"), the rest weigh
    0; it costs one backward through the head more. Progress counts masked forwards.

    Example::

        ScoreCAM().explain(model, x, targets, layer=None, task="multiclass", channels=64)
    """

    name = "scorecam"
    sanity = ("fails the model-parameter randomisation check (Adebayo et al., 2018) on the demo model: rank "
              "correlation with the maps of a re-initialised model 0.66 (all layers re-initialised) / 0.74 (logit "
              "layer only) (bench/quality.py)")
    description = ("Score-CAM: each feature map, upsampled and min-max normalised, masks the input; the class "
                   "probability of the masked input weights the map. One forward pass per channel (channels=N: only "
                   "the N with the largest Grad-CAM weight).")
    params = (
        ParamSpec("channels", int, 0, 0, 100_000,
                  description="0: every channel; N: only the N channels with the largest Grad-CAM weight per target "
                              "(Faster Score-CAM: faster, less faithful)"),
        *AUGMENT_PARAMS,
    )

    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Steps[Explained]:
        p, ctx = self._bind(params)
        x = inputs
        top = p["channels"]
        leaf, logits, rows, cap = layer_pass(model, x, requests, layer, task, grad=top > 0)
        act = cap.spatial(next(iter(cap.layers)), leaf.detach())
        n, k = act.shape[:2]
        flat = act.flatten(2)
        varying = flat.amax(2) > flat.amin(2)                                   # [N, K]: a mask is defined
        wanted = varying.clone()
        if top > 0 and len(rows):
            (grad,) = row_gradients(logits, rows, [leaf], task)
            alpha = cap.spatial(next(iter(cap.layers)), grad).float().mean((2, 3))  # Grad-CAM weights [R, K]
            alpha = alpha.masked_fill(~varying[rows.image], float("-inf"))
            keep = torch.zeros_like(alpha, dtype=torch.bool)
            keep.scatter_(1, alpha.topk(min(top, k), dim=1).indices, True)
            row_keep = keep & varying[rows.image]                                 # [R, K]
            wanted = torch.zeros((n, k), dtype=torch.long, device=x.device).index_add_(0, rows.image,
                                                                                    row_keep.long()) > 0
        else:
            row_keep = varying[rows.image] if len(rows) else varying.new_zeros((0, k))
        pairs = torch.nonzero(wanted)                                            # [P, 2]: (image, channel)
        weights = torch.zeros((len(rows), k), device=x.device, dtype=torch.float32)
        size = x.shape[-2:]

        def score(start: int, stop: int) -> None:
            with torch.no_grad(), _half_on_cuda(x):
                img, ch = pairs[start:stop, 0], pairs[start:stop, 1]
                up = F.interpolate(act[img, ch][:, None].float(), size=size, mode="bilinear", align_corners=False)
                lo = up.amin((2, 3), keepdim=True)
                masks = (up - lo) / (up.amax((2, 3), keepdim=True) - lo)
                out = logits_of(model(x[img] * masks.to(x.dtype)), stop - start)
                sample_rows = rows_of_samples(rows, img)
                weights[sample_rows.slot, ch[sample_rows.image]] = reported_scores(out, sample_rows, task)

        yield from run_in_chunks(len(pairs), forward_chunk_size(self, x, ctx), score, "masked forwards")
        weights = weights * row_keep
        maps = torch.einsum("rk,rkhw->rhw", weights, act[rows.image].float()).relu()
        return Explained(rows, maps, reported_scores(logits, rows, task))


def _half_on_cuda(x: Tensor) -> Any:
    """fp16 autocast for no-grad masked forwards on CUDA (maps weighted by probabilities tolerate it); a no-op on
    the CPU."""
    if x.is_cuda:
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
