"""The explainer protocol and the plumbing every method shares.

An :class:`Explainer` turns a batch of model inputs plus one target class per row into one float32 map per row.
Everything here is pure tensor code on the model's device: no HTTP types, no ``.cpu()``, no numpy.
(Just over ~500 lines: the protocol, parameter validation and the hook registry are one contract that every
method reads; kept together on purpose.)

Contract (the batching layer relies on it):

* ``inputs`` ``[B, C, H, W]`` on the model's device, ``targets`` ``LongTensor [B]`` (one class per row; rows of
  different requests share a batch), ``task`` ``"multiclass" | "multilabel"``.
* Returns float32 ``[B, h, w]`` on the same device: the target layer's spatial size for CAM-family methods, the
  input size for gradient and perturbation methods. Larger = more important. Raw values, never normalised.
* Row ``i`` of the result depends only on row ``i`` of the batch (exactly, up to float rounding), in eval mode.
* The shared model is never mutated: hooks live for one call (:class:`Hooks`), parameters keep their
  ``requires_grad``, modules are never swapped.

Example::

    from service.engine import get_method, validate_params
    method = get_method("gradcam")
    params = validate_params(method, {})
    maps = method.explain(model, x, torch.tensor([3]), layer="layer4", task="multiclass", **params)
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import BadOption, FieldError, InvalidOption, ModelExecutionError
from .targets import ClassLogit, ClassRegion, Region, Rows, Target, TargetRequest

if TYPE_CHECKING:
    from .passes import Steps

__all__ = [
    "BACKWARD_CHUNK",
    "FORWARD_CHUNK",
    "TASKS",
    "Explainer",
    "Hooks",
    "ParamSpec",
    "coerce_params",
    "grad_enabled",
    "logits_of",
    "outside_inference_mode",
    "prepare_batch",
    "target_scores",
]

#: Images per forward pass for no-grad perturbation work (occlusion, Score-CAM, RISE). Read at call time, so a
#: deployment may lower it (``service.engine.base.FORWARD_CHUNK = 16``); an explainer instance may also carry its own
#: ``forward_chunk``.
FORWARD_CHUNK = 64
#: Starting chunk on CUDA, where more fits: perturbation loops halve it on out-of-memory until it does.
FORWARD_CHUNK_CUDA = 256
#: Images per forward+backward pass (SmoothGrad noise samples, Integrated-Gradients steps). Smaller than
#: :data:`FORWARD_CHUNK` because a backward keeps every activation alive (resnet50 at 224 px: ~0.1 GB per image).
BACKWARD_CHUNK = 16

TASKS = ("multiclass", "multilabel", "segmentation", "detection", "mil")

# Engine-level keyword arguments that ``explain`` accepts besides the validated method parameters. They describe the
# model rather than the request, so the HTTP layer passes them and clients never see them.
# ``chunk`` caps the images per forward of chunked methods for this call: the job system asks for small chunks so that
# one step of a slow method stays short and live requests wait for at most one of them.
CONTEXT_KEYS = ("input_range", "chunk", "tiling")


# --------------------------------------------------------------------------------------------------- parameters


@dataclass
class Explained:
    """What a method returns for a batch: its rows (image, target), one map per row and the reported scores."""

    rows: Rows
    maps: Tensor      # [R, h, w] float32 on the model's device, raw
    scores: Tensor    # [R] float32: what clients see as ``score`` (a probability for classes)


@dataclass(frozen=True)
class ParamSpec:
    """One method parameter: its type, default and admissible values (bounds inclusive)."""

    name: str
    type: type
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": _TYPE_NAMES[self.type], "default": self.default}
        if self.minimum is not None:
            doc["minimum"] = self.minimum
        if self.maximum is not None:
            doc["maximum"] = self.maximum
        if self.choices is not None:
            doc["choices"] = list(self.choices)
        if self.description:
            doc["description"] = self.description
        return doc

    def bounds_text(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"between {_fmt(self.minimum)} and {_fmt(self.maximum)}"
        if self.minimum is not None:
            return f">= {_fmt(self.minimum)}"
        if self.maximum is not None:
            return f"<= {_fmt(self.maximum)}"
        return "any value"


_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# ASCII only: Python's int()/float() also read other scripts' digits ("١٢", "¹" is refused only by int()), and a
# number that only some parsers understand is a malformed option, not a value.
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity|nan)",
                     re.ASCII | re.I)


def _quoted(value: Any, limit: int = 40) -> str:
    """A client value for an error message: repr'd and cut, so a megabyte option does not come back as one."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class _Malformed(Exception):
    pass


def _coerce_one(spec: ParamSpec, value: Any) -> Any:
    """Coerce ``value`` to ``spec.type``; raise _Malformed (wrong type) or ValueError (bad value)."""
    if isinstance(value, (list, tuple)):
        # Form fields arrive as lists when repeated; one value is fine, several are ambiguous.
        if len(value) != 1:
            raise _Malformed(f"expected a single {_TYPE_NAMES[spec.type]}, got {len(value)} values")
        value = value[0]
    if spec.type is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Malformed(f"expected a boolean (true/false), got {_quoted(value)}")
    if spec.type is int:
        if isinstance(value, bool):
            raise _Malformed(f"expected an integer, got {_quoted(value)}")
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()) and len(value.strip()) <= 40:
            out = int(value.strip())
        elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()) and float(value).is_integer():
            out = int(float(value))  # "16.0" and "1e3" are integers written as numbers
        else:
            raise _Malformed(f"expected an integer, got {_quoted(value)}")
    elif spec.type is float:
        if isinstance(value, bool):
            raise _Malformed(f"expected a number, got {_quoted(value)}")
        if isinstance(value, (int, float)) or isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            out = float(value)
        else:
            raise _Malformed(f"expected a number, got {_quoted(value)}")
        if not math.isfinite(out):
            raise ValueError(f"must be a finite number, got {_quoted(value)}")
    elif spec.type is str:
        if not isinstance(value, str):
            raise _Malformed(f"expected a string, got {_quoted(value)}")
        out = value.strip()
        if spec.choices is not None:
            for choice in spec.choices:
                if out.lower() == str(choice).lower():
                    return choice
            raise ValueError(f"must be {spec.bounds_text()}, got {_quoted(value)}")
        return out
    else:  # pragma: no cover - specs are written by us
        raise TypeError(f"unsupported parameter type {spec.type!r}")
    if spec.choices is not None and out not in spec.choices:
        raise ValueError(f"must be {spec.bounds_text()}, got {_quoted(value)}")
    if (spec.minimum is not None and out < spec.minimum) or (spec.maximum is not None and out > spec.maximum):
        raise ValueError(f"must be {spec.bounds_text()}, got {_quoted(value)}")
    return out


def coerce_params(method: Explainer, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` against ``method.params``: coerce, apply defaults, check bounds/choices.

    Unknown names and wrongly typed values raise :class:`BadOption` (400); well-formed values outside the bounds or
    choices raise :class:`InvalidOption` (422). Every problem is listed in ``errors`` and named in ``detail``.
    A ``None`` value means "use the default".
    """
    specs = {p.name: p for p in method.params}
    malformed: list[FieldError] = []
    invalid: list[FieldError] = []
    unknown = [k for k in raw if k not in specs]
    if unknown:
        valid = ", ".join(specs) or "none"
        for k in unknown:
            malformed.append(FieldError(k, f"unknown parameter for method {method.name!r} (valid: {valid})"))
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        value = raw.get(name)
        if value is None:
            out[name] = spec.default
            continue
        try:
            out[name] = _coerce_one(spec, value)
        except _Malformed as exc:
            malformed.append(FieldError(name, str(exc)))
        except ValueError as exc:
            invalid.append(FieldError(name, str(exc)))
    if malformed:
        detail = "; ".join(f"{e.field!r}: {e.message}" for e in malformed + invalid)
        raise BadOption(f"{method.name}: {detail}", errors=malformed + invalid)
    if invalid:
        detail = "; ".join(f"{e.field!r} {e.message}" for e in invalid)
        raise InvalidOption(f"{method.name}: {detail}", errors=invalid)
    return out


# --------------------------------------------------------------------------------------------------- explainer


def outside_inference_mode(gen: Steps[Explained]) -> Steps[Explained]:
    """``gen`` resumed with inference mode off at every step, never across a yield: the worker may hold it on around
    other work between steps, and autograd needs it off while a method runs."""
    while True:
        with torch.inference_mode(False):
            try:
                progress = next(gen)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
        yield progress


class Explainer(ABC):
    """A saliency method. Stateless: one instance serves every model and thread.

    Class attributes describe the method for the catalogue (``GET /methods``) and for the batching layer:

    * ``family``: ``"cam"`` (map at the target layer's resolution), ``"gradient"`` or ``"perturbation"`` (input size).
    * ``uses_layer``: whether ``layer`` matters (``None`` = auto, see :func:`service.engine.find_target_layer`).
    * ``signed``: the map may contain negative values (attributions rather than a ReLU'd heatmap).
    * ``sanity``: a warning when the method is known to fail model-randomisation sanity checks.
    * ``tasks``: the model tasks it is made for (D-RISE: detection), ``None`` for all.
    """

    name: ClassVar[str]
    family: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[tuple[ParamSpec, ...]] = ()
    uses_layer: ClassVar[bool] = False
    signed: ClassVar[bool] = False
    sanity: ClassVar[str | None] = None
    #: What a user should know wherever the method applies (e.g. "class-agnostic").
    caveats: ClassVar[tuple[str, ...]] = ()
    #: The model tasks the method is made for (None: every task); the probe leaves the others out.
    tasks: ClassVar[tuple[str, ...] | None] = None
    #: It explains volumes (inputs ``[B, C, D, H, W]``, maps ``[R, d, h, w]``); the probe refuses the others there.
    volumes: ClassVar[bool] = False

    #: Whether the method takes ``augment`` (its params then include :data:`service.engine.augment.AUGMENT_PARAMS`):
    #: :meth:`steps` then averages the maps of flipped and shifted copies, mapped back (:mod:`.augment`).
    augmentable: ClassVar[bool] = False

    #: Per-instance overrides of the module-level chunk sizes (None = use the module default at call time).
    forward_chunk: int | None = None
    backward_chunk: int | None = None

    @abstractmethod
    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Steps[Explained]:
        """The method on a batch of images ``[N, C, H, W]``, each with its :class:`TargetRequest`: a generator of
        :class:`~service.engine.passes.Progress` whose return value is the :class:`Explained` rows.

        One pass: the method's own first forward yields the scores and resolves top-k requests; no other forward
        is made for scoring. Nothing set up inside (hooks, grad modes) may stay active across a ``yield``."""

    def steps(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *,
              layer: str | None = None, task: str = "multiclass", **params: Any) -> Steps[Explained]:
        """:meth:`run`, validated, with inference mode off at every resumption (tensors it builds must work with
        autograd even when the caller sits in ``torch.inference_mode()``), and never across a ``yield``."""
        if task not in TASKS:
            raise InvalidOption(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        with torch.inference_mode(False):
            x = prepare_inputs(inputs)
        if x.dim() == 5 and not self.volumes:
            raise InvalidOption(f"{self.name} does not explain volumes ([B, C, D, H, W] inputs)",
                                errors=[FieldError("method", "not for volumes")])
        if len(requests) != x.shape[0]:
            raise InvalidOption(f"{len(requests)} target requests for a batch of {x.shape[0]} images")
        with torch.inference_mode(False):
            if self.augmentable and self._bind(params)[0].get("augment"):
                from .augment import augmented_run  # augment builds on this module

                gen = augmented_run(self, model, x, list(requests), layer=layer, task=task, **params)
            else:
                gen = self.run(model, x, list(requests), layer=layer, task=task, **params)
        return (yield from outside_inference_mode(gen))

    def explain(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                task: str = "multiclass", **params: Any) -> Tensor:
        """Maps ``[B, h, w]`` (float32, model device), one per row for that row's own class ``targets[b]``: the
        row-wise form of :meth:`run` (each row is its own image with one explicit target)."""
        from .passes import complete

        with torch.inference_mode(False):
            x, t = prepare_batch(model, inputs, targets, task)
        # A segmentation class is explained over every pixel here (the row-wise form has no regions).
        # A detection model's target is a detection id (0: each image's most confident detection).
        requests = [TargetRequest((_row_target(int(c), task),)) for c in t.tolist()]
        return complete(self.steps(model, x, requests, layer=layer, task=task, **params)).maps

    def __call__(self, model: nn.Module, inputs: Tensor, targets: Tensor, *, layer: str | None = None,
                 task: str = "multiclass", **params: Any) -> Tensor:
        return self.explain(model, inputs, targets, layer=layer, task=task, **params)

    def check_model(self, model: nn.Module, input_shape: Sequence[int], *,  # noqa: B027 - a no-op default, not abstract
                    layer: str | None = None, task: str = "multiclass") -> None:
        """Raise :class:`InvalidOption` when this method cannot explain ``model`` (e.g. CAM without a GAP→linear
        head). The default runs nothing: most methods apply to any differentiable classifier."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "params": {p.name: p.to_json() for p in self.params},
            "uses_layer": self.uses_layer,
            "output": "layer" if self.family in ("cam", "attention") else "input",
            "signed": self.signed,
            "sanity": self.sanity,
            "caveats": list(self.caveats),
            "tasks": list(self.tasks) if self.tasks is not None else None,
        }

    # helpers for subclasses -------------------------------------------------------------------------------------

    def _bind(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split engine context (``input_range``, ``chunk``) from method parameters and validate the latter
        (idempotent on already validated values, so direct callers may pass partial or raw parameters)."""
        context = {k: params[k] for k in CONTEXT_KEYS if k in params}
        rest = {k: v for k, v in params.items() if k not in CONTEXT_KEYS}
        return coerce_params(self, rest), context

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# --------------------------------------------------------------------------------------------------- tensors


def forward_chunk_size(method: Explainer, x: Tensor, context: Mapping[str, Any] | None = None) -> int:
    """Images per no-grad forward for ``method`` on ``x``'s device: a call's ``chunk`` context caps it, an
    instance's ``forward_chunk`` sets it, else the module default for the device."""
    size = int(method.forward_chunk) if method.forward_chunk else (
        FORWARD_CHUNK_CUDA if x.is_cuda else int(FORWARD_CHUNK))
    cap = (context or {}).get("chunk")
    return max(1, min(size, int(cap)) if cap else size)


def backward_chunk_size(method: Explainer, context: Mapping[str, Any] | None = None) -> int:
    """Images per forward+backward (SmoothGrad samples, IG steps), capped by a call's ``chunk`` context."""
    size = int(method.backward_chunk or BACKWARD_CHUNK)
    cap = (context or {}).get("chunk")
    return max(1, min(size, int(cap)) if cap else size)


def prepare_inputs(inputs: Tensor) -> Tensor:
    """``inputs`` ``[N, C, H, W]`` (or volumes ``[N, C, D, H, W]``) ready for autograd: detached from any caller graph
    and not an inference tensor (a batch built under ``torch.inference_mode()`` cannot take part in a backward
    pass)."""
    if not isinstance(inputs, Tensor) or inputs.dim() not in (4, 5):
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise InvalidOption(f"inputs must be a [B, C, H, W] (or [B, C, D, H, W]) tensor, got {shape}")
    if not inputs.is_floating_point():
        raise InvalidOption(f"inputs must be floating point, got {inputs.dtype}")
    return inputs.clone() if inputs.is_inference() else inputs.detach()


def spatial_dims(t: Tensor) -> tuple[int, ...]:
    """The spatial dimensions of a ``[B, C, h, w]`` or ``[B, C, d, h, w]`` tensor: ``(2, 3)`` or ``(2, 3, 4)``."""
    return tuple(range(2, t.dim()))


def weighted_maps(weights: Tensor, act: Tensor) -> Tensor:
    """``sum_k w_k A^k``: channel weights ``[B, K]`` applied to maps ``[B, K, ...]`` → ``[B, ...]``."""
    return torch.einsum("bk,bk...->b...", weights, act)


def _row_target(value: int, task: str) -> Target:
    if task == "segmentation":
        return ClassRegion(value, Region("all"))
    if task == "detection":
        from .detection import Detection

        return Detection(value)
    return ClassLogit(value)


def prepare_batch(model: nn.Module, inputs: Tensor, targets: Tensor, task: str) -> tuple[Tensor, Tensor]:
    """Check shapes and return ``(x, targets)`` ready for autograd: ``x`` detached from any caller graph and not an
    inference tensor (a batch built under ``torch.inference_mode()`` cannot take part in a backward pass)."""
    if task not in TASKS:
        raise InvalidOption(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if not isinstance(inputs, Tensor) or inputs.dim() not in (4, 5):
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise InvalidOption(f"inputs must be a [B, C, H, W] (or [B, C, D, H, W]) tensor, got {shape}")
    if not inputs.is_floating_point():
        raise InvalidOption(f"inputs must be floating point, got {inputs.dtype}")
    if not isinstance(targets, Tensor) or targets.dim() != 1 or targets.shape[0] != inputs.shape[0]:
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise InvalidOption(f"targets must be a [B] tensor with B={inputs.shape[0]}, got {shape}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise InvalidOption(f"targets must hold integer class indices, got {targets.dtype}")
    x = inputs.clone() if inputs.is_inference() else inputs.detach()
    t = targets.to(device=x.device, dtype=torch.long)
    if t.is_inference():
        t = t.clone()
    return x, t


def logits_of(output: Any, batch: int | None = None) -> Tensor:
    """The ``[B, K]`` logits in a model's output (a tensor, the first element of a tuple, or ``.logits`` /
    ``["logits"]``), or a segmentation model's ``[B, C, H, W]`` logits (torchvision's ``{"out": ...}``); targets
    refuse the shape that is not theirs."""
    out = output
    if isinstance(out, Mapping):
        out = out.get("logits", out.get("out"))
    elif not isinstance(out, Tensor) and hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor) or out.dim() not in (2, 3, 4) or (batch is not None and out.shape[0] != batch):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(output).__name__
        raise ModelExecutionError("the model must return logits of shape [B, num_classes] (or [B, C, H, W] for "
                                  f"segmentation, [B, N, 6] detections for a wrapped detector), got {shape}")
    return out


def check_targets(logits: Tensor, targets: Tensor) -> None:
    k = logits.shape[1]
    bad = (targets < 0) | (targets >= k)
    if bool(bad.any()):
        first = int(targets[bad][0])
        raise InvalidOption(f"target class {first} is out of range for a model with {k} classes (0..{k - 1})")


def target_scores(logits: Tensor, targets: Tensor) -> Tensor:
    """Each row's own target logit, ``[B]``. Summing it gives per-row gradients exactly (rows do not interact)."""
    return logits.gather(1, targets[:, None]).squeeze(1)


def class_probability(logits: Tensor, targets: Tensor, task: str) -> Tensor:
    """Softmax probability (multiclass) or sigmoid (multilabel) of each row's target, ``[B]``."""
    if task == "multilabel":
        return torch.sigmoid(target_scores(logits, targets))
    return torch.softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1).to(logits.dtype)


@contextlib.contextmanager
def grad_enabled() -> Iterator[None]:
    """Autograd on, even when the caller sits in ``no_grad`` or ``inference_mode``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def model_device(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in model.parameters():
        return t.device, (t.dtype if t.is_floating_point() else torch.float32)
    for t in model.buffers():
        return t.device, (t.dtype if t.is_floating_point() else torch.float32)
    return torch.device("cpu"), torch.float32


def probe_batch(model: nn.Module, input_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
    """One seeded random row (and target 0) on the model's device for applicability checks. Not zeros: a zero image
    can make every activation and logit vanish (ConvNeXt at random init), and any head then "matches" GAP→linear."""
    device, dtype = model_device(model)
    x = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))
    return x.to(device=device, dtype=dtype), torch.zeros(1, dtype=torch.long, device=device)


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


# --------------------------------------------------------------------------------------------------- hooks


class Hooks:
    """The one place forward hooks are registered: for the duration of a ``with`` block, removed on exit even when
    the block raises. A hook acts only in the thread that registered it, so a concurrent forward of the same model in
    another thread (e.g. a plain prediction) neither sees replaced outputs nor overwrites captured ones.

    Example::

        with Hooks() as hooks:
            hooks.forward(model.layer4, lambda m, args, out: captured.append(out))
            model(x)
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._owner = threading.get_ident()

    def forward(self, module: nn.Module, fn: Callable[[nn.Module, tuple, Any], Any]) -> None:
        owner = self._owner

        def hook(mod: nn.Module, args: tuple, out: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            return fn(mod, args, out)

        self._handles.append(module.register_forward_hook(hook))

    def forward_pre(self, module: nn.Module, fn: Callable[[nn.Module, tuple, dict], Any]) -> None:
        """A pre-hook that sees (and may replace, returning ``(args, kwargs)``) the call's arguments, e.g. to ask
        ``nn.MultiheadAttention`` for its weights for this one call."""
        owner = self._owner

        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
            if threading.get_ident() != owner:
                return None
            return fn(mod, args, kwargs)

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
