"""Gradient methods: explanations built from ``\\partial y^c / \\partial x`` (input gradients only).

Each row's score is its own target logit ``y^c`` (pre-softmax for multiclass, the class's own logit for
multilabel), and ``torch.autograd.grad(sum_b y_b^{c_b}, x)`` yields every row's gradient in one backward pass.

Colour gradients ``[B, C, H, W]`` become one grey map ``[B, H, W]`` as in Simonyan et al.: ``max_c |g_c|`` for
saliency, SmoothGrad, guided backprop and guided Grad-CAM (non-negative); Integrated Gradients sums its signed
attributions over channels so that the map itself satisfies completeness.

Guided backprop never touches the shared model: :class:`GuidedReLUMode` is a thread-local
``TorchFunctionMode`` active for one forward pass that routes ``torch.relu``/``relu_``, ``Tensor.relu``/``relu_`` and
``F.relu`` (hence ``nn.ReLU`` modules, ``inplace=True`` included, and DenseNet's functional ``F.relu``) through an
autograd function with the guided backward rule. Other activations (SiLU, GELU, Hardswish) keep their gradients, as
in captum; a model with no interceptable ReLU at all (EfficientNet, ConvNeXt, TorchScript) is refused.

Example::

    maps = METHODS["saliency"].explain(model, x, targets, layer=None, task="multiclass")   # [B, H, W]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import FieldError, InvalidOption
from .base import (
    Explainer,
    ParamSpec,
    check_targets,
    chunks,
    grad_enabled,
    logits_of,
    prepare_batch,
    probe_batch,
    target_scores,
)
from .baselines import BASELINES, make_baseline
from .cam import GradCAM

__all__ = [
    "GuidedBackprop",
    "GuidedGradCAM",
    "GuidedReLUMode",
    "IntegratedGradients",
    "Saliency",
    "SmoothGrad",
    "input_gradients",
    "integration_rule",
    "smoothgrad_noise",
]


# --------------------------------------------------------------------------------------------------- guided ReLU


def _guided_backward(grad: Tensor, out: Tensor) -> Tensor:
    # threshold_backward is ReLU's own backward kernel (grad where out > 0, else 0); clamping its fresh result in
    # place adds the guided condition with one extra pass and no extra allocation.
    return torch.ops.aten.threshold_backward(grad, out, 0).clamp_min_(0)


class _GuidedReLU(torch.autograd.Function):
    """ReLU forward; backward ``R_l = 1[f_l > 0] · 1[R_{l+1} > 0] · R_{l+1}`` (Springenberg et al., 2015)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return _guided_backward(grad, out)


class _GuidedReLUInplace(torch.autograd.Function):
    """In-place twin of :class:`_GuidedReLU`, so ``relu_`` keeps its aliasing semantics (callers may ignore the
    return value and keep using the input tensor)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.mark_dirty(x)
        x.clamp_min_(0)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return _guided_backward(grad, out)


_RELU = frozenset({F.relu, torch.relu, Tensor.relu})
_RELU_INPLACE = frozenset({torch.relu_, Tensor.relu_, F.relu_})


class GuidedReLUMode(TorchFunctionMode):
    """While active (in this thread only: torch-function modes are thread-local), every ReLU that takes part in
    autograd uses the guided backward rule. ``count`` says how many ReLU calls were guided.

    Example::

        with GuidedReLUMode() as mode:
            logits = model(x.requires_grad_())
        assert mode.count > 0
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _RELU or func in _RELU_INPLACE:
            x = args[0] if args else kwargs.get("input")
            inplace = func in _RELU_INPLACE or (
                func is F.relu and bool(kwargs.get("inplace", args[1] if len(args) > 1 else False)))
            if isinstance(x, Tensor) and x.requires_grad and torch.is_grad_enabled():
                self.count += 1
                return (_GuidedReLUInplace if inplace else _GuidedReLU).apply(x)
        return func(*args, **kwargs)


# --------------------------------------------------------------------------------------------------- helpers


def input_gradients(model: nn.Module, x: Tensor, targets: Tensor, *, guided: bool = False) -> Tensor:
    """``d y_b^{c_b} / d x_b`` for every row, ``[B, C, H, W]`` in ``x``'s dtype. Parameters stay frozen: only the
    input requires grad, so the backward computes no weight gradients."""
    xg = x.detach().requires_grad_()
    with grad_enabled():
        if guided:
            with GuidedReLUMode() as mode:
                logits = logits_of(model(xg), x.shape[0])
            if mode.count == 0:
                raise InvalidOption(
                    "guided backpropagation needs ReLU activations called through torch (nn.ReLU, F.relu, "
                    "torch.relu); this model has none that could be intercepted (e.g. SiLU/GELU networks or "
                    "TorchScript); use saliency or gradcam",
                    errors=[FieldError("method", "no ReLU")])
        else:
            logits = logits_of(model(xg), x.shape[0])
        check_targets(logits, targets)
        score = target_scores(logits, targets).sum()
        if not score.requires_grad:
            raise InvalidOption("the model's logits do not depend on its input through autograd")
        (grad,) = torch.autograd.grad(score, xg)
    return grad


def _grey(grad: Tensor) -> Tensor:
    """Simonyan et al.: the maximum absolute value over colour channels."""
    return grad.abs().amax(1).float()


def smoothgrad_noise(seed: int, sample: int, shape: Sequence[int], *, device: torch.device | str,
                     dtype: torch.dtype) -> Tensor:
    """Standard normal noise for SmoothGrad sample ``sample``: a function of (seed, sample) only, so every row gets
    the same draws wherever it sits in the batch (batch independence) and results are reproducible."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 0x9E3779B1 + int(sample)) % (2**63 - 1))
    return torch.randn(tuple(shape), generator=gen, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------- explainers


class Saliency(Explainer):
    r"""Vanilla gradient saliency (Simonyan et al., 2014).

        M_{ij} = \max_c | \partial y^c / \partial x_{c,ij} |

    Example::

        Saliency().explain(model, x, targets, layer=None, task="multiclass")   # [B, H, W], >= 0
    """

    name = "saliency"
    sanity = ("fails the logit-layer randomisation check (Adebayo et al., 2018) on the demo model: rank correlation "
              "0.70 with the maps of a model whose classifier is re-initialised (bench/quality.py)")
    family = "gradient"
    description = "Saliency: maximum over colour channels of the absolute input gradient of the class score."

    def forwards_per_row(self, params: Mapping[str, Any], input_shape: Sequence[int]) -> int:
        return 2

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        self._bind(params)
        x, t = prepare_batch(model, inputs, targets, task)
        return _grey(input_gradients(model, x, t))


class GuidedBackprop(Explainer):
    r"""Guided backpropagation (Springenberg et al., ICLR-W 2015): at every ReLU only positive gradients flowing
    into positive activations pass back,

        R_l = 1[f_l > 0] \cdot 1[R_{l+1} > 0] \cdot R_{l+1},

    and the resulting colour gradient ``G`` becomes ``M_{ij} = \max_c |G_{c,ij}|``. Known to fail the
    model-randomisation sanity check (Adebayo et al., 2018).

    Example::

        GuidedBackprop().explain(model, x, targets, layer=None, task="multiclass")
    """

    name = "guided-backprop"
    family = "gradient"
    description = ("Guided backpropagation: input gradient where ReLUs pass back only positive gradients; max |·| "
                   "over colour channels. Needs ReLU activations.")
    sanity = ("fails the model-parameter randomisation sanity check (Adebayo et al., 2018): on the demo model the "
              "map's rank correlation with the map of a model whose logit layer is re-initialised is 0.78 "
              "(bench/quality.py); it shows image edges more than what the model learnt")

    def forwards_per_row(self, params: Mapping[str, Any], input_shape: Sequence[int]) -> int:
        return 2

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        self._bind(params)
        x, t = prepare_batch(model, inputs, targets, task)
        return _grey(input_gradients(model, x, t, guided=True))

    def check_model(self, model: nn.Module, input_shape: Sequence[int], *, layer: str | None = None,
                    task: str = "multiclass") -> None:
        x, t = probe_batch(model, input_shape)
        self.explain(model, x, t, layer=layer, task=task)


class GuidedGradCAM(GuidedBackprop):
    r"""Guided Grad-CAM (Selvaraju et al., 2017): guided backpropagation times the bilinearly upsampled Grad-CAM,
    fused before any normalisation,

        M_{ij} = \max_c | G_{c,ij} \cdot Up(L^c)_{ij} | = Up(L^c)_{ij} \cdot \max_c |G_{c,ij}|    (L^c >= 0)

    ``Up`` is bilinear with ``align_corners=False``. Output at the input size. Unlike guided backprop alone it
    passes the randomisation sanity check on the demo model (the Grad-CAM factor carries the weights).

    Example::

        GuidedGradCAM().explain(model, x, targets, layer="layer4", task="multiclass")
    """

    name = "guided-gradcam"
    family = "gradient"
    uses_layer = True
    # The Grad-CAM factor makes the product depend on the learnt weights: measured on the demo model, rank
    # correlation with randomised models is 0.19 (all layers) / 0.06 (logit layer), so it passes where guided
    # backprop alone fails.
    sanity = None
    description = "Guided Grad-CAM: guided backpropagation multiplied by the upsampled Grad-CAM (before normalising)."

    def forwards_per_row(self, params: Mapping[str, Any], input_shape: Sequence[int]) -> int:
        return 3

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        self._bind(params)
        x, t = prepare_batch(model, inputs, targets, task)
        cam = GradCAM().explain(model, x, t, layer=layer, task=task)
        up = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return up * _grey(input_gradients(model, x, t, guided=True))


class SmoothGrad(Explainer):
    r"""SmoothGrad (Smilkov et al., 2017): the saliency map averaged over noisy copies of the input,

        \hat M(x) = \frac{1}{n} \sum_{s=1}^{n} M(x + \epsilon_s),   \epsilon_s \sim N(0, \sigma^2),
        \sigma = noise \cdot (\max x - \min x)   (per row),

    where ``M`` is the saliency map ``\max_c |\partial y^c / \partial x_c|`` (so ``noise = 0`` gives saliency exactly).
    Noise draws depend on ``(seed, s)`` only (:func:`smoothgrad_noise`). Cost: ``samples`` forward+backward passes
    per row, in chunks of ``BACKWARD_CHUNK`` images.

    Example::

        SmoothGrad().explain(model, x, targets, layer=None, task="multiclass", samples=25, noise=0.15)
    """

    name = "smoothgrad"
    family = "gradient"
    description = "SmoothGrad: saliency maps averaged over Gaussian-noised copies of the input."
    params = (
        ParamSpec("samples", int, 25, 1, 500, description="number of noisy samples averaged"),
        ParamSpec("noise", float, 0.15, 0.0, 1.0,
                  description="noise standard deviation as a fraction of the input's range (max - min)"),
        ParamSpec("seed", int, 0, 0, 2**31 - 1, description="seed of the noise (same seed, same map)"),
    )

    def forwards_per_row(self, params: Mapping[str, Any], input_shape: Sequence[int]) -> int:
        return 2 * int(params.get("samples", 25))

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        p, _ = self._bind(params)
        x, t = prepare_batch(model, inputs, targets, task)
        b, n = x.shape[0], p["samples"]
        sigma = p["noise"] * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))
        total = torch.zeros((b, *x.shape[-2:]), device=x.device, dtype=torch.float32)
        for start, stop in chunks(b * n, self._backward_chunk()):
            idx = torch.arange(start, stop, device=x.device)
            rows = idx // n
            eps = torch.stack([smoothgrad_noise(p["seed"], i % n, x.shape[1:], device=x.device, dtype=x.dtype)
                               for i in range(start, stop)])
            noisy = x[rows] + sigma[rows].view(-1, 1, 1, 1) * eps
            total.index_add_(0, rows, _grey(input_gradients(model, noisy, t[rows])))
        return total / n


def integration_rule(rule: str, steps: int) -> tuple[list[float], list[float]]:
    """``(alphas, weights)`` of a quadrature of ``\\int_0^1 f(\\alpha) d\\alpha`` with ``steps`` nodes.

    ``riemann-left|right|middle`` use nodes ``k/m``, ``(k+1)/m``, ``(k+1/2)/m`` with weight ``1/m``; ``trapezoid``
    uses ``m`` equally spaced nodes including both ends, spacing ``1/(m-1)`` and halved end weights (the weights sum
    to 1; captum's ``riemann_trapezoid`` uses ``1/m`` and sums to ``(m-1)/m``)."""
    m = int(steps)
    if rule == "riemann-left":
        return [k / m for k in range(m)], [1 / m] * m
    if rule == "riemann-right":
        return [(k + 1) / m for k in range(m)], [1 / m] * m
    if rule == "riemann-middle":
        return [(k + 0.5) / m for k in range(m)], [1 / m] * m
    if rule == "trapezoid":
        if m < 2:
            raise InvalidOption("steps must be >= 2 for the trapezoid rule",
                                errors=[FieldError("steps", "trapezoid needs both end points")])
        w = [1 / (m - 1)] * m
        w[0] = w[-1] = 0.5 / (m - 1)
        return [k / (m - 1) for k in range(m)], w
    raise InvalidOption(f"rule must be one of {', '.join(IG_RULES)}, got {rule!r}")


IG_RULES = ("riemann-middle", "riemann-left", "riemann-right", "trapezoid")


class IntegratedGradients(Explainer):
    r"""Integrated Gradients (Sundararajan et al., ICML 2017) from a baseline ``x'``:

        IG_c(x) = (x_c - x'_c) \int_0^1 \partial y / \partial x_c (x' + \alpha (x - x')) d\alpha
                \approx (x_c - x'_c) \sum_k w_k \, \partial y / \partial x_c (x' + \alpha_k (x - x'))
        M_{ij} = \sum_c IG_{c,ij}     (``sign``: ``all`` as is, ``positive`` ReLU, ``absolute`` |.|)

    With ``sign=all`` the map satisfies completeness: ``\sum_{ij} M_{ij} \approx y(x) - y(x')`` (exact as the
    number of steps grows). The quadrature (``rule``) defaults to the midpoint Riemann sum; see
    :func:`integration_rule`. Baselines: :mod:`service.engine.baselines`. Signed by default. Cost: ``steps``
    forward+backward passes per row, in chunks of ``BACKWARD_CHUNK`` images.

    Example::

        IntegratedGradients().explain(model, x, targets, layer=None, task="multiclass", steps=64, baseline="blur")
    """

    name = "integrated-gradients"
    family = "gradient"
    signed = True
    description = ("Integrated Gradients: input-minus-baseline times the path-averaged gradient, summed over colour "
                   "channels; the map sums to score(x) - score(baseline).")
    params = (
        ParamSpec("steps", int, 32, 1, 1024, description="number of points on the straight path"),
        ParamSpec("baseline", str, "zero", choices=BASELINES,
                  description="reference input: zero (model-space zeros = mean colour when normalised), black, "
                              "mean (flat average colour), blur (Gaussian-blurred image)"),
        ParamSpec("blur_sigma", float, 0.05, 0.001, 1.0,
                  description="Gaussian sigma of the blur baseline as a fraction of the shorter input side"),
        ParamSpec("rule", str, "riemann-middle", choices=IG_RULES, description="quadrature rule along the path"),
        ParamSpec("sign", str, "all", choices=("all", "positive", "absolute"),
                  description="all: signed attributions (completeness holds); positive: ReLU; absolute: |.|"),
    )

    def forwards_per_row(self, params: Mapping[str, Any], input_shape: Sequence[int]) -> int:
        return 2 * int(params.get("steps", 32))

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        p, ctx = self._bind(params)
        x, t = prepare_batch(model, inputs, targets, task)
        alphas_l, weights_l = integration_rule(p["rule"], p["steps"])
        base = make_baseline(x, p["baseline"], blur_sigma=p["blur_sigma"], input_range=ctx.get("input_range"))
        delta = x - base
        m = len(alphas_l)
        alphas = torch.tensor(alphas_l, device=x.device, dtype=x.dtype)
        weights = torch.tensor(weights_l, device=x.device, dtype=torch.float32)
        total = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
        for start, stop in chunks(x.shape[0] * m, self._backward_chunk()):
            idx = torch.arange(start, stop, device=x.device)
            rows, ks = idx // m, idx % m
            path = base[rows] + alphas[ks].view(-1, 1, 1, 1) * delta[rows]
            grad = input_gradients(model, path, t[rows]).float()
            total.index_add_(0, rows, grad * weights[ks].view(-1, 1, 1, 1))
        attribution = (delta.float() * total).sum(1)
        if p["sign"] == "positive":
            return attribution.relu()
        if p["sign"] == "absolute":
            return attribution.abs()
        return attribution
