"""Gradient methods: explanations built from ``\\partial y^c / \\partial x`` (input gradients only).

Each row's score is its own target's score ``y^c`` (the pre-softmax logit for multiclass, the class's own logit for
multilabel), and ``torch.autograd.grad(sum_b y_b^{c_b}, x)`` yields every row's gradient in one backward pass. One
pass: the forward that the gradient needs also yields the reported scores and resolves top-k targets; an image with
several targets shares that forward and repeats only the backward (once per target slot). SmoothGrad and Integrated
Gradients put the clean image into their first chunk of noisy or scaled copies, so scoring costs no forward of
its own.

Colour gradients ``[B, C, H, W]`` become one grey map ``[B, H, W]`` as in Simonyan et al.: ``max_c |g_c|`` for
saliency, SmoothGrad, guided backprop and guided Grad-CAM (non-negative); Integrated Gradients sums its signed
attributions over channels so that the map itself satisfies completeness.

Guided backprop never touches the shared model: :class:`GuidedReLUMode` is a thread-local
``TorchFunctionMode`` active for one forward pass that routes ``torch.relu``/``relu_``, ``Tensor.relu``/``relu_`` and
``F.relu`` (hence ``nn.ReLU`` modules, ``inplace=True`` included, and DenseNet's functional ``F.relu``), ReLU6
(``F.relu6``, ``F.hardtanh(0, 6)``: MobileNetV2, EfficientNet-Lite), LeakyReLU and the ATen ops of exported programs
through an autograd function with the guided backward rule. Other activations (SiLU, GELU, Hardswish) keep their
gradients, as in captum; a model with no interceptable ReLU at all (EfficientNet, ConvNeXt, TorchScript) is refused.

(Longer than our usual ~500 lines on purpose: the guided rule's interception and the four methods that use it share
one forward/backward plumbing, and splitting them would put the rule and its only callers in different rooms.)

Example::

    maps = METHODS["saliency"].explain(model, x, targets, layer=None, task="multiclass")   # [B, H, W]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import FieldError, InvalidOption
from .augment import AUGMENT_PARAMS
from .base import (
    Explained,
    Explainer,
    ParamSpec,
    backward_chunk_size,
    grad_enabled,
    logits_of,
    probe_batch,
)
from .baselines import BASELINES, make_baseline
from .layers import resolve_layer
from .passes import Progress, Steps, capture, row_gradients, run_in_chunks, single_pass, slot_gradients
from .targets import Rows, TargetRequest, plan_rows, reported_scores

__all__ = [
    "GuidedBackprop",
    "GuidedGradCAM",
    "GuidedReLUMode",
    "IntegratedGradients",
    "Saliency",
    "SmoothGrad",
    "integration_rule",
    "smoothgrad_noise",
]


# --------------------------------------------------------------------------------------------------- guided ReLU


@dataclass
class GuideSwitch:
    """Whether the ReLUs recorded under one :class:`GuidedReLUMode` pass gradients back guided (the default) or as
    a plain ReLU does. It is read at backward time, so one forward serves both: Guided Grad-CAM takes the Grad-CAM
    gradient at the layer with the plain rule and the input gradient with the guided rule, from the same graph. The
    backward of a CUDA graph runs on autograd's device thread, hence an object, not a thread-local flag."""

    guided: bool = True


@dataclass(frozen=True)
class _Rule:
    """A ReLU-family activation: ``min(max(x, 0), high)`` for x >= 0 and ``slope * x`` below (ReLU: high inf, slope 0;
    ReLU6: high 6; LeakyReLU: slope > 0)."""

    high: float = float("inf")
    slope: float = 0.0

    def forward(self, x: Tensor, *, inplace: bool = False) -> Tensor:
        if self.slope:
            y = torch.where(x > 0, x, x * self.slope)
            return x.copy_(y) if inplace else y
        return x.clamp_(0, self.high) if inplace else x.clamp(0, self.high)

    def derivative(self, out: Tensor) -> Tensor:
        """The activation's own derivative, read from its output (valid for in-place calls too)."""
        inside = (out > 0) & (out < self.high) if self.high != float("inf") else out > 0
        if self.slope:
            return torch.where(inside, 1.0, self.slope).to(out.dtype)
        return inside.to(out.dtype)


def _activation_backward(grad: Tensor, out: Tensor, rule: _Rule, switch: GuideSwitch) -> Tensor:
    if rule == _RELU_RULE:
        # threshold_backward is ReLU's own backward kernel (grad where out > 0, else 0); clamping its fresh result
        # in place adds the guided condition with one extra pass and no extra allocation.
        plain = torch.ops.aten.threshold_backward(grad, out, 0)
        return plain.clamp_min_(0) if switch.guided else plain
    # Guided rule for the rest of the family: the activation's derivative times the positive part of the gradient.
    return rule.derivative(out) * (grad.clamp_min(0) if switch.guided else grad)


class _GuidedReLU(torch.autograd.Function):
    """A ReLU-family activation forward; backward ``R_l = f'(x_l) · 1[R_{l+1} > 0] · R_{l+1}`` (Springenberg et
    al., 2015, for ReLU: ``1[f_l > 0] · 1[R_{l+1} > 0] · R_{l+1}``), or the plain ``f'(x_l) · R_{l+1}`` while its
    switch is off."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: _Rule, switch: GuideSwitch) -> Tensor:
        out = rule.forward(x)
        ctx.save_for_backward(out)
        ctx.rule, ctx.switch = rule, switch
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (out,) = ctx.saved_tensors
        return _activation_backward(grad, out, ctx.rule, ctx.switch), None, None


class _GuidedReLUInplace(torch.autograd.Function):
    """In-place twin of :class:`_GuidedReLU`, so ``relu_`` and ``inplace=True`` keep their aliasing semantics
    (callers may ignore the return value and keep using the input tensor)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: _Rule, switch: GuideSwitch) -> Tensor:
        ctx.mark_dirty(x)
        rule.forward(x, inplace=True)
        ctx.save_for_backward(x)
        ctx.rule, ctx.switch = rule, switch
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (out,) = ctx.saved_tensors
        return _activation_backward(grad, out, ctx.rule, ctx.switch), None, None


_RELU_RULE = _Rule()
# The functions eager models call, and the ATen ops that exported programs (torch.export) call.
_RELU = frozenset({F.relu, torch.relu, Tensor.relu, torch.ops.aten.relu.default})
_RELU_INPLACE = frozenset({torch.relu_, Tensor.relu_, F.relu_, torch.ops.aten.relu_.default})


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _rule_of(func: Any, args: tuple, kwargs: dict) -> tuple[_Rule, bool] | None:
    """``(rule, inplace)`` when ``func(*args, **kwargs)`` is a ReLU-family activation, else None."""
    if func in _RELU_INPLACE:
        return _RELU_RULE, True
    if func in _RELU:
        return _RELU_RULE, func is F.relu and bool(_arg(args, kwargs, 1, "inplace", False))
    if func in (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default):
        low, high = float(_arg(args, kwargs, 1, "min_val", -1.0)), float(_arg(args, kwargs, 2, "max_val", 1.0))
        inplace = func is torch.ops.aten.hardtanh_.default
        return (_Rule(high=high), inplace) if low == 0.0 and high > 0 else None
    if func is F.relu6:
        return _Rule(high=6.0), bool(_arg(args, kwargs, 1, "inplace", False))
    if func is F.hardtanh:  # nn.ReLU6 is hardtanh(0, 6); other clips are not ReLUs
        low, high = float(_arg(args, kwargs, 1, "min_val", -1.0)), float(_arg(args, kwargs, 2, "max_val", 1.0))
        if low == 0.0 and high > 0:
            return _Rule(high=high), bool(_arg(args, kwargs, 3, "inplace", False))
        return None
    if func is F.leaky_relu:
        slope = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
        return (_Rule(slope=slope), bool(_arg(args, kwargs, 2, "inplace", False))) if slope > 0 else None
    return None


class GuidedReLUMode(TorchFunctionMode):
    """While active (in this thread only: torch-function modes are thread-local), every ReLU-family activation that
    takes part in autograd — ReLU, ReLU6, LeakyReLU, as modules or functions, in-place or not — uses the guided
    backward rule (as long as ``switch.guided``). ``count`` says how many calls were guided. Active for one forward
    only: never across a ``yield`` of a method.

    Example::

        with GuidedReLUMode() as mode:
            logits = model(x.requires_grad_())
        assert mode.count > 0
    """

    def __init__(self, switch: GuideSwitch | None = None) -> None:
        super().__init__()
        self.count = 0
        self.switch = switch or GuideSwitch()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        found = _rule_of(func, args, kwargs)
        if found is not None:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, Tensor) and x.requires_grad and torch.is_grad_enabled():
                rule, inplace = found
                self.count += 1
                return (_GuidedReLUInplace if inplace else _GuidedReLU).apply(x, rule, self.switch)
        return func(*args, **kwargs)


_NO_RELU = ("guided backpropagation needs ReLU-family activations called through torch (nn.ReLU, ReLU6, LeakyReLU, "
            "F.relu ...); this model has none that could be intercepted (e.g. SiLU/GELU networks or TorchScript); "
            "use saliency or gradcam")


# --------------------------------------------------------------------------------------------------- helpers


def input_pass(model: nn.Module, x: Tensor, requests: Sequence[TargetRequest], task: str, *, guided: bool = False
               ) -> tuple[Tensor, Tensor, Rows]:
    """``(dx, logits, rows)``: one forward with the input requiring grad, and each row's input gradient
    ``d y^{c} / d x`` of its own image (``[R, C, H, W]``). Parameters stay frozen: the backward computes no weight
    gradients."""
    xg = x.detach().requires_grad_()
    with grad_enabled():
        if guided:
            with GuidedReLUMode() as mode:
                logits = logits_of(model(xg), x.shape[0])
            if mode.count == 0:
                raise InvalidOption(_NO_RELU, errors=[FieldError("method", "no ReLU")])
        else:
            logits = logits_of(model(xg), x.shape[0])
        rows = plan_rows(logits, requests, task)
        (grad,) = row_gradients(logits, rows, [xg], task)
    return grad, logits, rows


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
    volumes = True
    sanity = ("fails the logit-layer randomisation check (Adebayo et al., 2018) on the demo model: rank correlation "
              "0.70 with the maps of a model whose classifier is re-initialised (bench/quality.py)")
    family = "gradient"
    description = "Saliency: maximum over colour channels of the absolute input gradient of the class score."

    augmentable = True
    params = AUGMENT_PARAMS

    @single_pass
    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Explained:
        self._bind(params)
        grad, logits, rows = input_pass(model, inputs, requests, task)
        return Explained(rows, _grey(grad), reported_scores(logits, rows, task))


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

    augmentable = True
    params = AUGMENT_PARAMS

    @single_pass
    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Explained:
        self._bind(params)
        grad, logits, rows = input_pass(model, inputs, requests, task, guided=True)
        return Explained(rows, _grey(grad), reported_scores(logits, rows, task))

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

    @single_pass
    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Explained:
        self._bind(params)
        x = inputs.detach().requires_grad_()
        name, _ = resolve_layer(model, layer, x.shape[1:])
        switch = GuideSwitch()
        with grad_enabled():
            # One forward: the layer's map stays in the graph (not a leaf: the input gradient must pass through it).
            with capture(model, [name], input_shape=x.shape[1:]) as cap, GuidedReLUMode(switch) as mode:
                logits = logits_of(model(x), x.shape[0])
            if mode.count == 0:
                raise InvalidOption(_NO_RELU, errors=[FieldError("method", "no ReLU")])
            act = cap.activation(name)
            spatial = cap.spatial(name, act.detach()).float()
            rows = plan_rows(logits, requests, task)
            cam = torch.empty((len(rows), *spatial.shape[-2:]), device=x.device, dtype=torch.float32)
            guided = torch.empty((len(rows), *x.shape[1:]), device=x.device, dtype=x.dtype)
            for j in range(rows.slots):
                in_slot = torch.nonzero(rows.slot == j).flatten()
                score = _slot_score(logits, rows, in_slot, task)
                switch.guided = False   # Grad-CAM's gradient at the layer: the plain chain rule through the head
                (d_act,) = torch.autograd.grad(score, act, retain_graph=True)
                switch.guided = True    # guided backpropagation to the input, on the same graph
                (d_x,) = torch.autograd.grad(score, x, retain_graph=j < rows.slots - 1)
                img = rows.image[in_slot]
                alpha = cap.spatial(name, d_act[img]).float().mean((2, 3))
                cam[in_slot] = torch.einsum("bk,bkhw->bhw", alpha, spatial[img]).relu()
                guided[in_slot] = d_x[img]
        up = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return Explained(rows, up * _grey(guided), reported_scores(logits, rows, task))


def _slot_score(output: Tensor, rows: Rows, in_slot: Tensor, task: str) -> Tensor:
    """The summed score of one slot's rows (each image at most once, so its gradient is every row's own)."""
    from .targets import target_scores

    picked = Rows(rows.image[in_slot], torch.zeros_like(in_slot), [rows.targets[int(r)] for r in in_slot])
    return target_scores(output, picked, task).sum()


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
    volumes = True
    family = "gradient"
    description = "SmoothGrad: saliency maps averaged over Gaussian-noised copies of the input."
    params = (
        ParamSpec("samples", int, 25, 1, 500, description="number of noisy samples averaged"),
        ParamSpec("noise", float, 0.15, 0.0, 1.0,
                  description="noise standard deviation as a fraction of the input's range (max - min)"),
        ParamSpec("seed", int, 0, 0, 2**31 - 1, description="seed of the noise (same seed, same map)"),
        *AUGMENT_PARAMS,
    )
    augmentable = True

    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Steps[Explained]:
        p, ctx = self._bind(params)
        x, n = inputs, p["samples"]
        per_image = tuple(range(1, x.dim()))
        sigma = p["noise"] * (x.amax(per_image) - x.amin(per_image))

        def noisy(image: Tensor, sample: Tensor) -> Tensor:
            eps = torch.stack([smoothgrad_noise(p["seed"], int(k), x.shape[1:], device=x.device, dtype=x.dtype)
                               for k in sample.tolist()])
            return x[image] + sigma[image].view(-1, *[1] * (x.dim() - 1)) * eps

        total, logits, rows = yield from copies_pass(self, model, x, requests, task, copies=n, make=noisy,
                                                     contribution=lambda grad, _: _grey(grad), unit="samples",
                                                     context=ctx)
        maps = total / n if total is not None else x.new_zeros((0, *x.shape[2:]), dtype=torch.float32)
        return Explained(rows, maps, reported_scores(logits, rows, task))


def copies_pass(method: Explainer, model: nn.Module, x: Tensor, requests: Sequence[TargetRequest], task: str, *,
                copies: int, make: Any, contribution: Any, unit: str, context: dict[str, Any] | None = None
                ) -> Steps[tuple[Tensor, Tensor, Rows]]:
    """Sum, per row, ``contribution(grad, copy)`` over ``copies`` copies of its image (SmoothGrad's noisy inputs,
    IG's path points), where ``grad`` is the input gradient of the row's target at the copy.

    Samples are laid out ``[clean images..., copies of image 0..., copies of image 1..., ...]`` and run in chunks of
    ``BACKWARD_CHUNK``: the clean images ride in the first chunk, and their logits give the reported scores and the
    top-k targets before the first backward, so scoring costs no forward of its own. Yields progress after each
    chunk; nothing is held across a yield but tensors."""
    n = x.shape[0]
    total_samples = n + n * copies
    chunk = backward_chunk_size(method, context)
    state: dict[str, Any] = {"rows": None, "total": None, "logits": None}

    def work(start: int, stop: int) -> None:
        s = torch.arange(start, stop, device=x.device)
        is_copy = s >= n
        copy_index = (s[is_copy] - n)
        image = torch.where(is_copy, (s - n).clamp_min(0) // copies, s)
        copy_image, copy_number = image[is_copy], copy_index % copies
        parts = [x[s[~is_copy]]] if bool((~is_copy).any()) else []
        if bool(is_copy.any()):
            parts.append(make(copy_image, copy_number))
        batch = torch.cat(parts).detach().requires_grad_(bool(is_copy.any()))
        ctx = grad_enabled() if bool(is_copy.any()) else torch.no_grad()
        with ctx:
            out = logits_of(model(batch), stop - start)
            if bool((~is_copy).any()):
                state["logits"] = out[: int((~is_copy).sum())].detach() if state["logits"] is None \
                    else torch.cat([state["logits"], out[: int((~is_copy).sum())].detach()])
            if not bool(is_copy.any()):
                return
            if state["rows"] is None:
                state["rows"] = plan_rows(state["logits"], requests, task)
            rows: Rows = state["rows"]
            first_copy = int((~is_copy).sum())
            copies_out = out[first_copy:]
            for j, samples, (grad,) in slot_gradients(copies_out, rows, [batch], task, sample_image=copy_image):
                grad = grad[first_copy:]
                picked = torch.nonzero(samples).flatten()
                row_of = torch.tensor([rows.per_image[int(i)][j] for i in copy_image[picked].tolist()],
                                      dtype=torch.long, device=x.device)
                value = contribution(grad[picked], copy_number[picked])
                if state["total"] is None:
                    state["total"] = value.new_zeros((len(rows), *value.shape[1:]))
                state["total"].index_add_(0, row_of, value)

    for progress in run_in_chunks(total_samples, chunk, work, unit):
        yield Progress(max(0, progress.done - n), n * copies, unit)  # the copies done; the clean images are free
    rows = state["rows"] if state["rows"] is not None else plan_rows(state["logits"], requests, task)
    return state["total"], state["logits"], rows


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
    volumes = True
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
        *AUGMENT_PARAMS,
    )
    augmentable = True

    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Steps[Explained]:
        p, ctx = self._bind(params)
        x = inputs
        alphas_l, weights_l = integration_rule(p["rule"], p["steps"])
        base = make_baseline(x, p["baseline"], blur_sigma=p["blur_sigma"], input_range=ctx.get("input_range"))
        delta = x - base
        alphas = torch.tensor(alphas_l, device=x.device, dtype=x.dtype)
        weights = torch.tensor(weights_l, device=x.device, dtype=torch.float32)

        def point(image: Tensor, step: Tensor) -> Tensor:
            return base[image] + alphas[step].view(-1, *[1] * (x.dim() - 1)) * delta[image]

        def weighted(grad: Tensor, step: Tensor) -> Tensor:
            return grad.float() * weights[step].view(-1, *[1] * (grad.dim() - 1))

        total, logits, rows = yield from copies_pass(self, model, x, requests, task, copies=len(alphas_l),
                                                     make=point, contribution=weighted, unit="steps", context=ctx)
        if total is None:
            return Explained(rows, x.new_zeros((0, *x.shape[2:]), dtype=torch.float32), reported_scores(logits, rows,
                                                                                                          task))
        attribution = (delta.float()[rows.image] * total).sum(1)
        if p["sign"] == "positive":
            attribution = attribution.relu()
        elif p["sign"] == "absolute":
            attribution = attribution.abs()
        return Explained(rows, attribution, reported_scores(logits, rows, task))
