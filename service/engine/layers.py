"""Target layers: which modules output a map a CAM method can use, in which layout, and which one is the default.

A layer's output is explainable in one of three layouts (:class:`Layout`), each viewed as ``[B, C, h, w]`` by the
methods (:meth:`Layout.spatial`):

* ``nchw`` — a convolutional map ``[B, C, h, w]``;
* ``nhwc`` — a channels-last map ``[B, h, w, C]`` (Swin's stages): square ``h == w`` smaller than ``C``;
* ``tokens`` — a token sequence ``[B, prefix + h*w, C]`` (vision transformers): ``prefix`` class/distillation/register
  tokens, then the patch grid in row-major order. The grid and prefix are inferred from the token count and the
  input's aspect (the smallest prefix ≤ 8 that leaves an ``h x w`` grid of the input's shape: 197 = 1 + 14x14 at
  224 px), or set per model (``tokens: {grid: [14, 14], prefix: 1}`` in models.yaml, :func:`set_token_layout`).

The default layer (:func:`choose_target_layer`, with the reason it gives):

1. *Token models* — some token layer runs after the last convolutional map (ViT, DeiT, hybrids): the last token
   layer whose patch tokens receive gradient from the logits, found by one probe backward at load. After it only
   the class token reaches the head (ViT: ``encoder.layers.encoder_layer_11.ln_1``, the last block's input norm;
   after its attention the patch tokens no longer influence the class token).
2. Otherwise *the last module, in execution order, whose output is a spatial map*, with refinements learnt from
   torchvision: maps produced by a pooling layer are skipped (VGG's ``features`` ends in a max-pool; the Grad-CAM
   paper uses the last conv/ReLU, ``features.29``; a container whose output *is* its last child's tensor inherits
   the child's producer); class-score maps (as many channels as the model has classes, e.g. SqueezeNet's
   ``classifier`` conv) are skipped, since they are the head itself; among modules returning the same tensor the
   outermost wins (``layer4`` rather than ``layer4.1.relu``); modules that run more than once per forward are
   never chosen (ambiguous); maps with ``h, w > 1`` are preferred.

Example::

    choose_target_layer(torchvision.models.resnet18(), (3, 224, 224))   # ('layer4', 'the last ... map')
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .base import Hooks, logits_of, model_device

__all__ = ["LayerInfo", "Layout", "choose_target_layer", "explainable_layers", "find_target_layer", "get_module",
           "layer_layout", "resolve_layer", "set_token_layout", "spatial_layers", "trace_layers"]

_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool2d,
)
MAX_PREFIX_TOKENS = 8


@dataclass(frozen=True)
class Layout:
    """How a layer's output maps onto a spatial grid."""

    kind: str                      # "nchw" | "nhwc" | "tokens" | "ncdhw" (a volume's map)
    grid: tuple[int, ...]          # (h, w) of the map; (d, h, w) for ncdhw
    prefix: int = 0                # tokens: leading non-patch tokens

    def spatial(self, t: Tensor) -> Tensor:
        """``[B, C, h, w]`` (``[B, C, d, h, w]`` for a volume) view of an output (or of its gradient) in this layout."""
        if self.kind in ("nchw", "ncdhw"):
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        h, w = self.grid
        return t[:, self.prefix:, :].transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"layout": self.kind, "grid": list(self.grid)}
        if self.kind == "tokens":
            doc["prefix"] = self.prefix
        return doc


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str                 # module class name
    shape: tuple[int, ...]    # output shape for a batch of one
    calls: int                # times it ran in one forward
    pooled: bool              # its output tensor was produced by a pooling layer
    layout: Layout | None     # None: not an explainable map
    identity: bool = False    # it returned its input unchanged (Dropout in eval, Identity): never the default

    @property
    def spatial(self) -> bool:
        return self.layout is not None and self.layout.kind != "tokens"

    @property
    def explainable(self) -> bool:
        return self.layout is not None and self.calls == 1

    @property
    def preferred(self) -> bool:
        return (self.spatial and self.calls == 1 and not self.pooled and not self.identity and self.layout is not None
                and all(g > 1 for g in self.layout.grid))


# --------------------------------------------------------------------------------------------------- layouts

_token_overrides: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, int], int]] = weakref.WeakKeyDictionary()


def set_token_layout(model: nn.Module, grid: Sequence[int], prefix: int) -> None:
    """Declare the token layout of ``model``'s token layers (the registry's ``tokens:`` entry) instead of inferring
    it; a token layer whose length is not ``prefix + h*w`` is then not explainable."""
    _token_overrides[model] = ((int(grid[0]), int(grid[1])), int(prefix))
    with _lock:
        _traces.pop(model, None)
        _auto_cache.pop(model, None)


def _token_layout(model: nn.Module, tokens: int, input_hw: tuple[int, int]) -> Layout | None:
    override = _token_overrides.get(model)
    if override is not None:
        (h, w), prefix = override
        return Layout("tokens", (h, w), prefix) if prefix + h * w == tokens else None
    height, width = input_hw
    for prefix in range(0, MAX_PREFIX_TOKENS + 1):
        n = tokens - prefix
        if n < 4:
            break
        # a grid (h, w) with h*w = n and the input's aspect: h / w == height / width
        h = round(math.sqrt(n * height / width))
        if h > 0 and n % h == 0 and (n // h) * height == h * width:
            return Layout("tokens", (h, n // h), prefix)
    return None


def _layout(model: nn.Module, shape: tuple[int, ...], input_hw: tuple[int, int]) -> Layout | None:
    if not shape or shape[0] != 1:
        return None   # traced with one image: a tensor of another batch size (per-RoI, per-anchor) is no image map
    if len(shape) == 5:
        return Layout("ncdhw", tuple(int(s) for s in shape[2:]))
    if len(shape) == 4:
        _, a, b, c = shape
        if a == b and c > a and c >= 16:   # [B, h, w, C] channels-last (Swin): a square grid, more channels
            return Layout("nhwc", (a, b))
        return Layout("nchw", (b, c))
    if len(shape) == 3:
        return _token_layout(model, shape[1], input_hw)
    return None


# --------------------------------------------------------------------------------------------------- tracing

_traces: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], list[LayerInfo]]] = weakref.WeakKeyDictionary()
_classes: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()  # the logits' width
_auto_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], tuple[str, str]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def get_module(model: nn.Module, name: str, input_shape: Sequence[int] | None = None) -> nn.Module:
    """The submodule called ``name``; InvalidOption listing explainable layers (when ``input_shape`` is known)."""
    if isinstance(name, str) and name:
        try:
            return model.get_submodule(name)
        except AttributeError:
            pass
    hint = ""
    if input_shape is not None:
        names = explainable_layers(model, input_shape)
        shown = names[-12:]
        more = f" (and {len(names) - len(shown)} earlier ones)" if len(names) > len(shown) else ""
        hint = f"; valid layers include {', '.join(shown)}{more}"
    shown_name = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
    raise InvalidOption(f"unknown layer {shown_name} for this model{hint}", errors=[FieldError("layer", "unknown")])


def trace_layers(model: nn.Module, input_shape: Sequence[int]) -> list[LayerInfo]:
    """Describe every named module's output for one dummy forward (batch of one, zeros), in completion order.
    Cached per model and input shape (models are frozen: their structure does not change)."""
    if len(input_shape) not in (3, 4):
        raise InvalidOption(f"input_shape must be (C, H, W) or a volume's (C, D, H, W), got {tuple(input_shape)}")
    key = tuple(int(s) for s in input_shape)
    with _lock:
        hit = _traces.get(model, {}).get(key)
    if hit is not None:
        return hit
    infos = _trace(model, key)
    with _lock:
        _traces.setdefault(model, {})[key] = infos
    return infos


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerInfo]:
    device, dtype = model_device(model)
    names = {m: n for n, m in model.named_modules() if n}
    events: list[tuple[str, nn.Module, object]] = []
    calls: dict[str, int] = {}
    identities: set[str] = set()

    def record(mod: nn.Module, args: tuple, out: object) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        events.append((name, mod, out))
        passthrough = isinstance(mod, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                                       nn.AlphaDropout))
        if passthrough or (args and out is args[0] and not getattr(mod, "inplace", False)
                           and not any(True for _ in mod.children())):
            identities.add(name)

    with Hooks() as hooks:
        for mod in names:
            hooks.forward(mod, record)
        with torch.no_grad():
            output = model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    if isinstance(output, Tensor) and output.dim() == 2:
        _classes[model] = int(output.shape[1])

    # The first module to emit a tensor object is its producer; containers and in-place ops re-emit it.
    # (``events`` keeps every output alive, so ids stay unique.)
    producer: dict[int, nn.Module] = {}
    for _, mod, out in events:
        if isinstance(out, Tensor):
            producer.setdefault(id(out), mod)
    infos: dict[str, LayerInfo] = {}
    order: list[str] = []
    hw = (int(input_shape[-2]), int(input_shape[-1]))
    for name, mod, out in events:
        if not isinstance(out, Tensor):
            continue
        shape = tuple(out.shape)
        info = LayerInfo(name, type(mod).__name__, shape, calls[name], isinstance(producer[id(out)], _POOLS),
                         _layout(model, shape, hw), name in identities)
        if name in infos:
            order.remove(name)
        infos[name] = info
        order.append(name)
    return [infos[n] for n in order]


def explainable_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Names usable as ``layer``: modules that run once per forward and output a map in one of the layouts, in
    execution (completion) order."""
    return [i.name for i in trace_layers(model, input_shape) if i.explainable]


def spatial_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Alias of :func:`explainable_layers` (its name before token layers were explainable)."""
    return explainable_layers(model, input_shape)


def layer_layout(model: nn.Module, name: str, input_shape: Sequence[int]) -> Layout | None:
    """The layout of ``name``'s output for this input shape (None when it is not an explainable map)."""
    return next((i.layout for i in trace_layers(model, input_shape) if i.name == name), None)


# --------------------------------------------------------------------------------------------------- the default


def choose_target_layer(model: nn.Module, input_shape: Sequence[int], *, num_classes: int | None = None
                        ) -> tuple[str, str]:
    """``(layer, reason)``: the default CAM layer and why (see the module docstring). Cached per model/shape."""
    key = tuple(int(s) for s in input_shape)
    with _lock:
        hit = _auto_cache.get(model, {}).get(key)
    if hit is not None:
        return hit
    chosen = _choose(model, key, num_classes)
    with _lock:
        _auto_cache.setdefault(model, {})[key] = chosen
    return chosen


def find_target_layer(model: nn.Module, input_shape: Sequence[int]) -> str:
    """The default CAM layer's name (:func:`choose_target_layer` without the reason)."""
    return choose_target_layer(model, input_shape)[0]


def _choose(model: nn.Module, input_shape: tuple[int, ...], num_classes: int | None) -> tuple[str, str]:
    infos = trace_layers(model, input_shape)
    classes = num_classes if num_classes is not None else _classes.get(model, _output_classes(infos))
    tokens = [i for i in infos if i.explainable and i.layout is not None and i.layout.kind == "tokens"]
    spatial_last = max((k for k, i in enumerate(infos) if i.preferred), default=-1)
    if tokens and infos.index(tokens[-1]) > spatial_last:
        picked = _last_token_layer_with_patch_gradient(model, input_shape, [t for t in tokens
                                                                             if infos.index(t) > spatial_last])
        if picked is not None:
            return picked, ("the last token layer whose patch tokens receive gradient from the logits (after it only "
                            "the class token reaches the head, so maps there vanish)")
        picked = _input_of_last_attention(model, input_shape, tokens)
        if picked is not None:
            return picked, ("the input of the last attention (no gradient reached the patch tokens on the probe "
                            "image — e.g. a zero-initialised head — so chosen by structure: after the last "
                            "attention only the class token reaches the head)")
    for pick, why in (
        (lambda i: i.preferred, "the last spatial map in execution order that is not a pooling output"),
        (lambda i: i.spatial and i.calls == 1 and not i.pooled, "the last spatial map (1x1: no finer one exists)"),
        (lambda i: i.spatial and i.calls == 1, "the last spatial map (a pooling output: no other exists)"),
    ):
        found = [i for i in infos if pick(i)]
        if not found:
            continue
        maps = [i for i in found if classes is None or _channels(i) != classes]
        if maps and maps[-1] is not found[-1]:
            return maps[-1].name, why + ("; later maps with one channel per class are class-score maps, the head "
                                         "itself, and are skipped")
        return found[-1].name, why
    if tokens:
        return tokens[-1].name, "the last token layer (no patch-token gradient could be measured)"
    hint = (" (TorchScript inlines submodules, so forward hooks cannot see them; serve the eager model for CAM "
            "methods)" if isinstance(model, torch.jit.ScriptModule) else "")
    raise InvalidOption(f"this model has no layer with a spatial [B, C, h, w] or token output; CAM methods need "
                        f"one{hint}")


def _channels(info: LayerInfo) -> int:
    return int(info.shape[3] if info.layout is not None and info.layout.kind == "nhwc" else info.shape[1])


def _output_classes(infos: list[LayerInfo]) -> int | None:
    """The model's class count, from the last 2-D output (the logits)."""
    last = next((i for i in reversed(infos) if len(i.shape) == 2), None)
    return int(last.shape[1]) if last is not None else None


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower() or \
        type(module).__name__ == "Attention"


def _input_of_last_attention(model: nn.Module, input_shape: tuple[int, ...], tokens: list[LayerInfo]) -> str | None:
    """The last token layer completed before the last attention module completes, outside that module (ViT's
    ``ln_1``, timm's ``norm1`` of the last block)."""
    order: list[str] = []
    names = {m: n for n, m in model.named_modules() if n}
    attention = [m for m in names if _is_attention(m)]
    if not attention:
        return None

    def record(mod: nn.Module, args: tuple, out: object) -> None:
        order.append(names[mod])

    device, dtype = model_device(model)
    with Hooks() as hooks:
        for mod in names:
            hooks.forward(mod, record)
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    attention_names = {names[m] for m in attention}
    last = max((k for k, n in enumerate(order) if n in attention_names), default=None)
    if last is None:
        return None
    inside = order[last]
    token_names = {t.name for t in tokens}
    for name in reversed(order[:last]):
        if name in token_names and not name.startswith(inside + "."):
            return name
    return None


def _last_token_layer_with_patch_gradient(model: nn.Module, input_shape: tuple[int, ...],
                                          candidates: list[LayerInfo]) -> str | None:
    """One forward + backward from the first logit with every candidate's output captured (non-leaf): the last
    candidate whose patch tokens get a gradient that is not negligible."""
    device, dtype = model_device(model)
    x = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    x.requires_grad_()
    captured: dict[str, Tensor] = {}
    modules = dict(model.named_modules())

    def keep(name: str):
        def hook(mod: nn.Module, args: tuple, out: object) -> None:
            if isinstance(out, Tensor) and out.requires_grad:
                captured[name] = out
        return hook

    with torch.inference_mode(False), torch.enable_grad(), Hooks() as hooks:
        for info in candidates:
            hooks.forward(modules[info.name], keep(info.name))
        try:
            logits = logits_of(model(x), 1)
        except Exception:  # noqa: BLE001 - an output we cannot read: no token default, the spatial rules apply
            return None
        if not captured:
            return None
        names = [i.name for i in candidates if i.name in captured]
        grads = torch.autograd.grad(logits[0].sum(), [captured[n] for n in names], allow_unused=True)
    norms = []
    for info, g in zip([i for i in candidates if i.name in names], grads):
        prefix = info.layout.prefix if info.layout is not None else 0
        norms.append(0.0 if g is None else float(g[:, prefix:, :].abs().sum()))
    peak = max(norms, default=0.0)
    if peak <= 0:
        return None
    alive = [n for n, v in zip(names, norms) if v > 1e-6 * peak]
    return alive[-1] if alive else None


def resolve_layer(model: nn.Module, layer: str | None, input_shape: Sequence[int]) -> tuple[str, nn.Module]:
    """``(name, module)`` for an explicit layer name, or the automatic one (cached per model and input shape)."""
    if layer is None or layer == "":
        layer = find_target_layer(model, input_shape)
    return layer, get_module(model, layer, input_shape)
