"""Transformer-native methods: attention rollout and gradient-weighted attention, on the patch grid.

Both read the attention probabilities ``A_l`` (``[B, H, T, T]``, softmax over keys) of every layer from one forward.
They are captured without changing the model's computation: :class:`AttentionRecorder` is a per-call
``TorchFunctionMode`` that records the outputs of the attention softmax (a softmax over the last axis of a
``[..., T, T]`` score tensor, T = the model's token count), and ``nn.MultiheadAttention`` modules are asked, for this
one call, to return weights (``need_weights=True``), which makes them take their math path — the same attention,
computed without the fused kernel — and their returned weights' base tensor (the softmax output that multiplies the
values) is recorded. Models that compute attention with ``F.scaled_dot_product_attention`` (timm's
``fused_attn``, PyTorch's own fused kernels) expose no probabilities: the methods refuse them, and the registry
says so.

:class:`AttentionRollout` (Abnar & Zuidema, ACL 2020)::

    Â_l = norm_rows( 0.5 · fuse_h(A_l) + 0.5 · I ),   R = Â_L · ... · Â_1,   map = R[cls, patches]

``fuse_h`` averages the heads (or takes their max/min). Rollout is class-agnostic: the same map for every target.

:class:`AttentionGradients` — gradient-weighted attention (Chefer, Gur & Wolf, ICCV 2021, "Generic
Attention-model Explainability", the self-attention rule)::

    Ā_l = E_h[ (∇_{A_l} y^c ⊙ A_l)^+ ],   R ← R + Ā_l · R   (R = I at the first layer),   map = R[cls, patches]

Without a class token (prefix 0) the relevance of a patch is the mean over rows (every token's view). Maps come at
the patch grid, raw (not normalised).

Example::

    AttentionRollout().explain(vit, x, torch.tensor([3]), layer=None, task="multiclass")   # [1, 14, 14]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import FieldError, InvalidOption
from .base import Explained, Explainer, Hooks, ParamSpec, grad_enabled, logits_of, probe_batch
from .layers import Layout, trace_layers
from .passes import single_pass, slot_gradients
from .targets import Rows, TargetRequest, plan_rows, reported_scores

__all__ = ["AttentionGradients", "AttentionRecorder", "AttentionRollout", "token_layout"]

_SOFTMAX = frozenset({F.softmax, torch.softmax, Tensor.softmax})


def token_layout(model: nn.Module, input_shape: Sequence[int]) -> Layout:
    """The model's token layout (grid and prefix), from its token layers; InvalidOption when it has none."""
    for info in trace_layers(model, input_shape):
        if info.layout is not None and info.layout.kind == "tokens":
            return info.layout
    raise InvalidOption("attention methods explain global-attention vision transformers (ViT, DeiT): this model has "
                        "no token layer [B, prefix + h*w, C] (windowed-attention models such as Swin and MaxViT keep "
                        "maps, not one token sequence); use gradcam", errors=[FieldError("method", "no token layers")])


class AttentionRecorder(TorchFunctionMode):
    """Records every attention softmax output ``[B*H, T, T]`` or ``[B, H, T, T]`` over ``T`` tokens (in this thread,
    for one forward). ``maps`` holds the tensors the model went on with (gradients are taken with respect to them);
    :meth:`view` shows one — or a gradient with respect to one — as ``[B, H, T, T]``."""

    def __init__(self, batch: int, tokens: int) -> None:
        super().__init__()
        self.batch, self.tokens = batch, tokens
        self.maps: list[Tensor] = []

    def view(self, t: Tensor) -> Tensor:
        if t.dim() == 4:
            return t
        return t.view(self.batch, t.shape[0] // self.batch, self.tokens, self.tokens)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _SOFTMAX and isinstance(out, Tensor) and out.dim() in (3, 4):
            dim = (kwargs or {}).get("dim", args[1] if len(args) > 1 else None)
            t = self.tokens
            if dim in (-1, out.dim() - 1) and out.shape[-1] == t and out.shape[-2] == t and (
                    out.dim() == 4 or out.shape[0] % self.batch == 0):
                self.maps.append(out)
        return out


def _with_weights(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """For one call: make ``nn.MultiheadAttention`` compute (and so expose) its probabilities."""
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def _recording(recorder: AttentionRecorder) -> Any:
    def keep(mod: nn.Module, args: tuple, out: Any) -> None:
        weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if isinstance(weights, Tensor):
            # the returned [B, H, T, T] is a view of the softmax output the values were multiplied by: its base is
            # the tensor on the graph (a gradient with respect to the view alone would not exist)
            recorder.maps.append(weights._base if weights._base is not None else weights)
    return keep


def _attention_pass(model: nn.Module, x: Tensor, requests: Sequence[TargetRequest], task: str, *, grad: bool
                    ) -> tuple[AttentionRecorder, Tensor, Layout, Rows]:
    """One forward recording every layer's attention (with a graph through it when ``grad``)."""
    layout = token_layout(model, x.shape[1:])
    tokens = layout.prefix + layout.grid[0] * layout.grid[1]
    ctx = grad_enabled() if grad else torch.no_grad()
    xg = x.detach().requires_grad_(grad)
    with ctx:
        with Hooks() as hooks, AttentionRecorder(x.shape[0], tokens) as recorder:
            for mod in model.modules():
                if isinstance(mod, nn.MultiheadAttention):
                    hooks.forward_pre(mod, _with_weights)
                    hooks.forward(mod, _recording(recorder))
            logits = logits_of(model(xg), x.shape[0])
        rows = plan_rows(logits, requests, task)
    if not recorder.maps:
        raise InvalidOption(
            "no attention probabilities could be read from this model's forward (it computes attention with a fused "
            "kernel such as F.scaled_dot_product_attention, which exposes no weights); use gradcam on a token layer",
            errors=[FieldError("method", "attention not capturable")])
    return recorder, logits, layout, rows


def _relevance(r: Tensor, layout: Layout) -> Tensor:
    """``[N, h, w]`` patch relevance from ``R`` ``[N, T, T]``: the class token's row, or the mean row without one."""
    p = layout.prefix
    row = r[:, 0, p:] if p >= 1 else r.mean(1)[:, p:]
    return row.reshape(r.shape[0], *layout.grid)


class AttentionRollout(Explainer):
    r"""Attention rollout (Abnar & Zuidema, 2020), see the module docstring. Class-agnostic.

    Example::

        AttentionRollout().explain(vit, x, torch.tensor([0]), layer=None, task="multiclass", head_fusion="mean")
    """

    name = "attention-rollout"
    family = "attention"
    description = ("Attention rollout: the attention of every layer (heads fused, plus the residual identity) "
                   "multiplied through the network; the class token's row over the patches. Class-agnostic.")
    params = (ParamSpec("head_fusion", str, "mean", choices=("mean", "max", "min"),
                        description="how the heads of a layer are fused"),)
    caveats = ("class-agnostic: every target gets the same map (attention-gradients is class-specific)",)

    @single_pass
    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Explained:
        p, _ = self._bind(params)
        recorder, logits, layout, rows = _attention_pass(model, inputs, requests, task, grad=False)
        fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}[p["head_fusion"]]
        t = recorder.tokens
        eye = torch.eye(t, device=inputs.device, dtype=torch.float32)
        r = eye.expand(inputs.shape[0], t, t)
        with torch.no_grad():
            for a in recorder.maps:
                a_hat = 0.5 * fuse(recorder.view(a).float()) + 0.5 * eye
                a_hat = a_hat / a_hat.sum(-1, keepdim=True)
                r = a_hat @ r
        return Explained(rows, _relevance(r, layout)[rows.image], reported_scores(logits, rows, task))

    def check_model(self, model: nn.Module, input_shape: Sequence[int], *, layer: str | None = None,
                    task: str = "multiclass") -> None:
        x, t = probe_batch(model, input_shape)
        self.explain(model, x, t, layer=layer, task=task)


class AttentionGradients(AttentionRollout):
    r"""Gradient-weighted attention relevance (Chefer et al., 2021, generic rule), see the module docstring.

    Example::

        AttentionGradients().explain(vit, x, torch.tensor([281]), layer=None, task="multiclass")   # [1, 14, 14]
    """

    name = "attention-gradients"
    description = ("Gradient-weighted attention (Chefer et al. 2021, generic): each layer's attention times its "
                   "gradient, positive part, heads averaged, accumulated with the residual; the class token's row "
                   "over the patches. Class-specific.")
    params = ()
    caveats = ()

    @single_pass
    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Explained:
        self._bind(params)
        recorder, logits, layout, rows = _attention_pass(model, inputs, requests, task, grad=True)
        maps, t = recorder.maps, recorder.tokens
        # Per row: the gradient of its target with respect to its own image's attention maps, one backward per slot
        # (taken with respect to the tensors the model used, then viewed as [B, H, T, T]).
        grads = [torch.zeros((len(rows), *recorder.view(a).shape[1:]), device=a.device) for a in maps]
        with grad_enabled():
            if not all(a.requires_grad for a in maps):
                raise InvalidOption("the attention probabilities do not reach the logits through autograd",
                                    errors=[FieldError("method", "attention not differentiable")])
            for j, _samples, slot_grads in slot_gradients(logits, rows, maps, task):
                in_slot = torch.nonzero(rows.slot == j).flatten()
                for k, g in enumerate(slot_grads):
                    if g is not None:
                        grads[k][in_slot] = recorder.view(g)[rows.image[in_slot]].float()
        eye = torch.eye(t, device=inputs.device, dtype=torch.float32)
        r = eye.expand(len(rows), t, t).clone()
        with torch.no_grad():
            for a, g in zip(maps, grads):
                attention = recorder.view(a.detach())[rows.image].float()
                a_bar = (g * attention).clamp_min(0).mean(1)
                r = r + a_bar @ r
        return Explained(rows, _relevance(r, layout), reported_scores(logits, rows, task))
