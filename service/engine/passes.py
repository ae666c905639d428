"""One pass: the shared machinery that lets every method explain from its own forward.

* :func:`capture` — a context that hooks one or more layers for one forward: each layer's output is recorded, the
  earliest can be made a detached *leaf* (so a backward pass stops there and the trunk records no graph), and the
  next modules receive a copy (in-place ops downstream, VGG's ``ReLU(inplace=True)`` or DenseNet's
  ``F.relu(..., inplace=True)``, would otherwise change the captured map or fail on the leaf).
* :func:`slot_gradients` — per-row gradients when an image has several targets: one backward per *slot* (the j-th
  target of every image), the graph kept between slots, so the forward is shared and only the backward repeats.
* :class:`Progress` and :func:`complete` — methods are generators that yield progress between chunks of work and
  return their result; the synchronous path runs them to the end, the job system in slices. Nothing a method sets up
  (hooks, grad modes, torch-function modes) may be active across a ``yield``: other requests use the model between
  two slices.

Example::

    with capture(model, ["layer4"], leaf="layer4", input_shape=x.shape[1:]) as cap:
        logits = logits_of(model(x), x.shape[0])
    act = cap.activation("layer4")                 # [N, C, h, w], a leaf that requires grad
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .base import Hooks
from .layers import Layout, layer_layout, resolve_layer, trace_layers
from .targets import Rows, target_scores

__all__ = ["FIRST", "Capture", "Progress", "Steps", "capture", "complete", "row_gradients", "rows_of_samples",
           "run_in_chunks", "single_pass",
           "slot_gradients"]

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """How far a method is: ``done`` of ``total`` units (channels, masks, windows, steps...)."""

    done: int
    total: int
    unit: str


Steps = Generator[Progress, None, T]
"""What ``Explainer.run`` returns: a generator of :class:`Progress` whose return value is the result."""


def complete(steps: Steps[T]) -> T:
    """Run a method's steps to the end and return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------------- capture


@dataclass
class _Layer:
    name: str
    module: nn.Module
    leaf: bool
    layout: Layout
    activation: Tensor | None = None
    calls: int = 0


@dataclass
class Capture:
    """What one hooked forward recorded: each layer's activation, and (``watch_head``) the leaf modules that ran
    after the last captured layer, for describing and checking a CAM head."""

    layers: dict[str, _Layer]
    after: list[str] = field(default_factory=list)
    last_linear: nn.Linear | None = None
    _last: str | None = None

    def activation(self, name: str) -> Tensor:
        layer = self.layers[name]
        if layer.calls == 0 or layer.activation is None:
            raise InvalidOption(f"layer {name!r} did not run in the model's forward pass",
                                errors=[FieldError("layer", "not executed")])
        if layer.calls > 1:
            raise InvalidOption(f"layer {name!r} runs {layer.calls} times per forward pass, so its map is "
                                "ambiguous; choose a module that runs once (e.g. its parent block)",
                                errors=[FieldError("layer", "runs more than once")])
        return layer.activation

    def layout(self, name: str) -> Layout:
        """How the layer's output (and its gradient) maps onto ``[B, C, h, w]``."""
        return self.layers[name].layout

    def spatial(self, name: str, t: Tensor | None = None) -> Tensor:
        """``t`` (default: the captured activation) viewed as ``[B, C, h, w]`` in the layer's layout."""
        return self.layers[name].layout.spatial(self.activation(name) if t is None else t)


FIRST = "<first>"
"""``capture(..., leaf=FIRST)``: the earliest captured layer (in execution order) becomes the leaf."""


@contextlib.contextmanager
def capture(model: nn.Module, layers: Sequence[str | None], *, input_shape: Sequence[int], leaf: str | None = None,
            watch_head: bool = False) -> Iterator[Capture]:
    """Hook ``layers`` (``None`` = the model's automatic target layer) for the forwards inside the block.

    ``leaf`` (a name among ``layers``, after resolution, or ``FIRST``: whichever captured layer runs first) becomes a
    detached leaf that requires grad; other layers are recorded as they are (part of whatever graph the forward
    builds, so gradients with respect to them flow through the leaf). The capture's keys are the resolved names, in
    the order given.
    """
    resolved = [resolve_layer(model, name, input_shape) for name in layers]
    cap = Capture({name: _Layer(name, module, leaf=(name == leaf), layout=_layout_of(model, name, input_shape))
                   for name, module in resolved})
    if leaf is not None and leaf != FIRST and leaf not in cap.layers:
        raise ValueError(f"leaf {leaf!r} is not among the captured layers {list(cap.layers)}")

    def recorder(entry: _Layer) -> Any:
        def on_layer(mod: nn.Module, args: tuple, out: Any) -> Tensor:
            want = {"tokens": 3, "ncdhw": 5}.get(entry.layout.kind, 4)
            if not isinstance(out, Tensor) or out.dim() != want:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise InvalidOption(f"layer {entry.name!r} outputs {shape}, not a map in its {entry.layout.kind} "
                                    "layout", errors=[FieldError("layer", "not spatial")])
            if leaf == FIRST and cap._last is None:
                entry.leaf = True
            entry.calls += 1
            cap.after.clear()
            cap.last_linear = None
            cap._last = entry.name
            act = out.detach().requires_grad_() if entry.leaf else out
            entry.activation = act
            return act.clone()

        return on_layer

    with Hooks() as hooks:
        for entry in cap.layers.values():
            hooks.forward(entry.module, recorder(entry))
        if watch_head:
            names = {m: n for n, m in model.named_modules()}
            captured = {id(e.module) for e in cap.layers.values()}

            def on_leaf(mod: nn.Module, args: tuple, out: Any) -> None:
                if cap._last is not None:
                    cap.after.append(f"{names[mod]} ({type(mod).__name__})")
                    weight = getattr(mod, "weight", None)
                    # nn.Linear, or a module acting as one (torch.export's unflattened InterpreterModule): CAM checks
                    # numerically that the head really is W · mean(A) + b before it uses W
                    if isinstance(mod, nn.Linear) or (isinstance(weight, Tensor) and weight.dim() == 2):
                        cap.last_linear = mod  # type: ignore[assignment]

            for mod in model.modules():
                if id(mod) not in captured and not any(True for _ in mod.children()):
                    hooks.forward(mod, on_leaf)
        yield cap


def _layout_of(model: nn.Module, name: str, input_shape: Sequence[int]) -> Layout:
    layout = layer_layout(model, name, input_shape)
    if layout is None:
        info = next((i for i in trace_layers(model, input_shape) if i.name == name), None)
        if info is None:
            raise InvalidOption(f"layer {name!r} did not run in the model's forward pass",
                                errors=[FieldError("layer", "not executed")])
        shape = info.shape
        raise InvalidOption(f"layer {name!r} outputs {shape}, not a [B, C, h, w] spatial map (nor a channels-last map "
                            "or a token grid [B, prefix + h*w, C])", errors=[FieldError("layer", "not spatial")])
    return layout


# --------------------------------------------------------------------------------------------------- gradients


def slot_gradients(output: Tensor, rows: Rows, wrt: Sequence[Tensor], task: str, *,
                   sample_image: Tensor | None = None, retain: bool = False
                   ) -> Iterator[tuple[int, Tensor, list[Tensor]]]:
    """For each slot ``j``: ``(j, samples, grads)`` where ``grads[k][b]`` is the gradient, with respect to
    ``wrt[k][b]``, of the ``j``-th target of sample ``b``'s image, for the samples in ``samples`` (a bool mask).

    ``output`` is the model's output for a batch of samples; ``sample_image[b]`` says which image of ``rows`` sample
    ``b`` is a copy of (default: sample ``b`` is image ``b``; SmoothGrad and IG pass several noisy or scaled copies
    per image). The graph is kept between slots (and after the last one with ``retain``)."""
    n_samples = output.shape[0]
    images = sample_image if sample_image is not None else torch.arange(n_samples, device=output.device)
    slots = rows.slots
    for j in range(slots):
        chosen: list[int] = []
        targets = []
        for b, i in enumerate(images.tolist()):
            mine = rows.per_image[i]
            if j < len(mine):
                chosen.append(b)
                targets.append(rows.targets[mine[j]])
        if not chosen:
            continue
        picked = torch.tensor(chosen, dtype=torch.long, device=output.device)
        score = target_scores(output, Rows(picked, torch.zeros_like(picked), targets), task).sum()
        if not score.requires_grad:
            raise InvalidOption("the model's output does not depend on what is explained through autograd")
        grads = torch.autograd.grad(score, list(wrt), retain_graph=retain or j < slots - 1, allow_unused=True)
        mask = torch.zeros(n_samples, dtype=torch.bool, device=output.device)
        mask[picked] = True
        yield j, mask, list(grads)


def rows_of_samples(rows: Rows, sample_image: Tensor) -> Rows:
    """Rows pairing each sample (a perturbed copy of image ``sample_image[b]``) with every target of its image:
    ``image`` indexes the samples and ``slot`` holds the original row index, for scattering results back (occlusion,
    RISE and Score-CAM score all targets of an image on the same perturbed forward)."""
    sample, origin, targets = [], [], []
    for b, i in enumerate(sample_image.tolist()):
        for r in rows.per_image[i]:
            sample.append(b)
            origin.append(r)
            targets.append(rows.targets[r])
    device = sample_image.device
    return Rows(torch.tensor(sample, dtype=torch.long, device=device),
                torch.tensor(origin, dtype=torch.long, device=device), targets)


def run_in_chunks(total: int, size: int, work: Callable[[int, int], None], unit: str) -> Steps[None]:
    """Call ``work(start, stop)`` over ``range(total)`` in chunks of ``size``, yielding progress after each. A chunk
    that runs out of GPU memory is retried at half the size (down to one item): the largest chunk that fits."""
    start = 0
    while start < total:
        stop = min(total, start + size)
        try:
            work(start, stop)
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start = stop
        yield Progress(stop, total, unit)


def single_pass(fn: Callable[..., T]) -> Callable[..., Steps[T]]:
    """Turn a method body without intermediate progress into ``run``'s generator form."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Steps[T]:
        return fn(*args, **kwargs)
        yield  # pragma: no cover - unreachable: makes ``run`` a generator function

    return run


def row_gradients(output: Tensor, rows: Rows, wrt: Sequence[Tensor], task: str, *, retain: bool = False
                  ) -> list[Tensor]:
    """``[R, ...]`` per row: the gradient of the row's target with respect to its own image's slice of each ``wrt``
    tensor (``wrt[k]`` is batched like ``output``: one entry per image)."""
    out: list[Tensor | None] = [None] * len(wrt)
    for j, _samples, grads in slot_gradients(output, rows, wrt, task, retain=retain):
        in_slot = torch.nonzero(rows.slot == j).flatten()
        for k, g in enumerate(grads):
            if g is None:
                raise InvalidOption("the model's output does not depend on the captured layer",
                                    errors=[FieldError("layer", "not upstream of the output")])
            if out[k] is None:
                out[k] = g.new_zeros((len(rows), *g.shape[1:]))
            out[k][in_slot] = g[rows.image[in_slot]]  # type: ignore[index]
    if len(rows) == 0:
        return [w.new_zeros((0, *w.shape[1:])) for w in wrt]
    return [g for g in out]  # type: ignore[misc]
