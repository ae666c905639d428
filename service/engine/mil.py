r"""Attention-based multiple-instance learning (A-MIL): bags of patches, gated attention pooling, and the
``attention-mil`` explanation.

For large images whose evidence is small and scattered (histopathology slides, Patil et al., "Fast, Interpretable
Histopathology with Attention-MIL", 2019) the image is cut into patches at its native resolution, a patch encoder
embeds each patch ``h_k``, and attention pooling (Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance
Learning", ICML 2018, eq. 9, the *gated* variant) weighs them into one bag embedding that the head classifies:

    a_k = \frac{\exp\{w^\top (\tanh(V h_k) \odot \mathrm{sigm}(U h_k))\}}
               {\sum_j \exp\{w^\top (\tanh(V h_j) \odot \mathrm{sigm}(U h_j))\}},
    \qquad z = \sum_k a_k h_k, \qquad \text{logits} = f(z).

The attention ``a`` *is* the model's localization: it says which patches the bag's class was read from, by
construction rather than by a post-hoc gradient.

Model protocol (``task: mil`` registry entries; any ``python:`` module that follows it plugs in):

* input: ``bags`` ``[B, N, C, p, p]`` — ``B`` bags of ``N`` patches each (all bags of one call have the same ``N``:
  the service batches only bags of the same tiling), normalised like any model input;
* output: a mapping ``{"logits": [B, K], "attention": [B, N] | [B, K, N], "patch_logits": [B, N, K] (optional)}``
  or a tuple ``(logits, attention[, patch_logits])``. ``attention`` holds the pooling weights — one branch shared by
  the classes, or one branch per class (multi-branch heads) — and ``patch_logits`` the head applied to each patch
  embedding (the per-patch class confidences of multi-class heads).

Rows of different bags must not interact (eval mode), as for every model of the service.

Tiling (:class:`Tiling`): a ``H x W`` image becomes ``rows x cols`` patches of ``p`` pixels every ``s`` pixels
(``s`` divides ``p``), the image padded at the bottom and right (with zeros, i.e. the mean colour after
normalisation) up to ``(rows - 1) s + p``; patches are numbered row-major. A patch value is spread over the image by
:func:`patch_map`: each ``s x s`` cell gets the mean of the values of the patches that cover it (overlapping strides
averaged), cropped to the image, so that the map upsamples straight back onto the original pixels.

Example::

    tiling = Tiling.of(height=1000, width=760, patch=64, stride=32)
    bag = tile(x, tiling)                                   # [N, C, 64, 64] from x [C, 1000, 760]
    out = mil_outputs(model(bag[None]), 1, tiling.count)   # logits [1, K], attention [1, 1 or K, N]
    maps = METHODS["attention-mil"].explain_bags(model, bag[None], [TargetRequest()], tiling=tiling)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption, ModelExecutionError
from .base import Explained, Explainer, ParamSpec
from .passes import Steps, complete
from .targets import TargetRequest, plan_rows, reported_scores

__all__ = ["MIL_WEIGHTS", "AttentionMIL", "Bag", "GatedAttention", "MILOutput", "Tiling", "check_bags", "mil_outputs",
           "patch_map", "stitch_patch_maps", "tile"]

MIL_WEIGHTS = ("attention", "confidence", "product")


class GatedAttention(nn.Module):
    r"""Gated attention pooling (Ilse et al. 2018, eq. 9): ``a_k = softmax_k(w^T (tanh(V h_k) ⊙ sigm(U h_k)))``.

    ``forward(h [B, N, D]) -> a [B, branches, N]`` (rows sum to 1 over the patches); ``branches`` > 1 gives one
    attention per class. ``pool(h, a)`` is ``z = sum_k a_k h_k`` ``[B, branches, D]``."""

    def __init__(self, dim: int, hidden: int = 64, branches: int = 1) -> None:
        super().__init__()
        self.V = nn.Linear(dim, hidden)
        self.U = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, branches)

    def forward(self, h: Tensor) -> Tensor:
        scores = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h)))   # [B, N, branches]
        return torch.softmax(scores, dim=1).transpose(1, 2)

    @staticmethod
    def pool(h: Tensor, a: Tensor) -> Tensor:
        return torch.einsum("ban,bnd->bad", a, h)


@dataclass(frozen=True)
class MILOutput:
    """A mil model's answer in one layout: ``logits [B, K]``, ``attention [B, A, N]`` (``A`` = 1 or K),
    ``patch_logits [B, N, K]`` or None."""

    logits: Tensor
    attention: Tensor
    patch_logits: Tensor | None = None


def mil_outputs(output: Any, batch: int, patches: int) -> MILOutput:
    """Read a mil model's output (see the module docstring), checking every shape; ``ModelExecutionError`` names
    what is wrong."""
    if isinstance(output, Mapping):
        logits, attention, patch_logits = output.get("logits"), output.get("attention"), output.get("patch_logits")
    elif isinstance(output, (tuple, list)) and len(output) in (2, 3):
        logits, attention = output[0], output[1]
        patch_logits = output[2] if len(output) == 3 else None
    else:
        raise ModelExecutionError("a mil model must return {'logits', 'attention'[, 'patch_logits']} or a tuple "
                                  f"(logits, attention[, patch_logits]), got {type(output).__name__}")
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
        raise ModelExecutionError(f"a mil model's logits must be [B={batch}, K], got {_shape(logits)}")
    k = logits.shape[1]
    if isinstance(attention, Tensor) and attention.dim() == 2:
        attention = attention[:, None]
    if not isinstance(attention, Tensor) or attention.dim() != 3 or attention.shape[0] != batch \
            or attention.shape[1] not in (1, k) or attention.shape[2] != patches:
        raise ModelExecutionError(f"a mil model's attention must be [B={batch}, N={patches}] or [B, K={k}, N], got "
                                  f"{_shape(attention)}")
    if patch_logits is not None and (not isinstance(patch_logits, Tensor)
                                     or tuple(patch_logits.shape) != (batch, patches, k)):
        raise ModelExecutionError(f"a mil model's patch_logits must be [B={batch}, N={patches}, K={k}], got "
                                  f"{_shape(patch_logits)}")
    return MILOutput(logits, attention, patch_logits)


def check_bags(method: str, inputs: Any, requests: Sequence[TargetRequest], task: str) -> None:
    """What every mil method needs of its call: a mil model, float bags ``[B, N, C, p, p]``, one request per bag."""
    if task != "mil":
        raise InvalidOption(f"{method} explains mil models; this one's task is {task}",
                            errors=[FieldError("method", "not a mil model")])
    if not isinstance(inputs, Tensor) or inputs.dim() != 5 or not inputs.is_floating_point():
        raise InvalidOption(f"{method} takes float bags [B, N, C, p, p], got {_shape(inputs)}")
    if len(requests) != inputs.shape[0]:
        raise InvalidOption(f"{len(requests)} target requests for a batch of {inputs.shape[0]} bags")


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


@dataclass(frozen=True)
class Tiling:
    """How an ``height x width`` image is cut: ``rows x cols`` patches of ``patch`` pixels every ``stride``."""

    patch: int
    stride: int
    rows: int
    cols: int
    height: int
    width: int

    @staticmethod
    def side(size: int, patch: int, stride: int) -> int:
        """Patches along one side: enough to cover it (1 for a side shorter than a patch)."""
        return 1 if size <= patch else math.ceil((size - patch) / stride) + 1

    @classmethod
    def of(cls, *, height: int, width: int, patch: int, stride: int) -> Tiling:
        if stride < 1 or patch < 1 or patch % stride:
            raise ValueError(f"stride ({stride}) must divide patch ({patch})")
        return cls(patch, stride, cls.side(height, patch, stride), cls.side(width, patch, stride), height, width)

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def padded(self) -> tuple[int, int]:
        """The padded image the patches cover: ``((rows - 1) s + p, (cols - 1) s + p)``."""
        return (self.rows - 1) * self.stride + self.patch, (self.cols - 1) * self.stride + self.patch

    @property
    def cells(self) -> tuple[int, int]:
        """The map's grid: ``s x s`` cells covering the image (the last ones partly outside it)."""
        return math.ceil(self.height / self.stride), math.ceil(self.width / self.stride)

    def boxes(self) -> Tensor:
        """``[N, 4]`` each patch's ``(x0, y0, x1, y1)`` in image pixels (clipped to the image), row-major."""
        r, c = torch.meshgrid(torch.arange(self.rows), torch.arange(self.cols), indexing="ij")
        y0, x0 = r.reshape(-1) * self.stride, c.reshape(-1) * self.stride
        return torch.stack([x0, y0, (x0 + self.patch).clamp(max=self.width), (y0 + self.patch).clamp(max=self.height)],
                           dim=1)


@dataclass(frozen=True, eq=False)
class Bag:
    """One image as a mil model input: its patches ``[N, C, p, p]`` and the tiling they came from."""

    patches: Tensor
    tiling: Tiling


def tile(x: Tensor, tiling: Tiling) -> Tensor:
    """``[N, C, p, p]`` patches of an image ``x`` ``[C, H, W]`` (its size must be the tiling's), row-major; the image
    is zero-padded at the bottom and right to :attr:`Tiling.padded`."""
    if x.dim() != 3 or tuple(x.shape[1:]) != (tiling.height, tiling.width):
        raise ValueError(f"expected a [C, {tiling.height}, {tiling.width}] image, got {tuple(x.shape)}")
    ph, pw = tiling.padded
    x = F.pad(x, (0, pw - tiling.width, 0, ph - tiling.height))
    p, s = tiling.patch, tiling.stride
    patches = x.unfold(1, p, s).unfold(2, p, s)                 # [C, rows, cols, p, p]
    return patches.permute(1, 2, 0, 3, 4).reshape(tiling.count, x.shape[0], p, p).contiguous()


def patch_map(values: Tensor, tiling: Tiling) -> Tensor:
    """``[R, N]`` per-patch values → ``[R, h, w]`` maps on :attr:`Tiling.cells`: each ``s x s`` cell holds the mean
    value of the patches covering it — :func:`stitch_patch_maps` of constant ``p/s x p/s`` patch maps."""
    k = tiling.patch // tiling.stride
    r, n = values.shape
    return stitch_patch_maps(values.float()[:, :, None, None].expand(r, n, k, k), tiling)


def stitch_patch_maps(maps: Tensor, tiling: Tiling) -> Tensor:
    """``[R, N, h, w]`` per-patch maps → ``[R, ceil(H h / p), ceil(W w / p)]``: placed on the tiling's grid every
    ``stride h / p`` cells, overlapping cells averaged, cropped to the image (see :mod:`service.engine.mil_cam`)."""
    r, n, h, w = maps.shape
    p, s = tiling.patch, tiling.stride
    if (s * h) % p or (s * w) % p:
        raise InvalidOption(f"the layer's {h}x{w} map per {p}-px patch does not put a stride of {s} px on whole "
                            f"cells ({s} x {h} / {p} is not an integer), so overlapping patch maps cannot be stitched; "
                            "choose a layer whose map side divides the patch into stride-sized steps",
                            errors=[FieldError("layer", "map cells do not align with the stride")])
    sh, sw = s * h // p, s * w // p
    size = ((tiling.rows - 1) * sh + h, (tiling.cols - 1) * sw + w)
    cols = maps.float().reshape(r, n, h * w).transpose(1, 2)                   # [R, h w, N]: one block per patch
    total = F.fold(cols, size, kernel_size=(h, w), stride=(sh, sw))
    count = F.fold(torch.ones_like(cols[:1]), size, kernel_size=(h, w), stride=(sh, sw))
    out_h, out_w = math.ceil(tiling.height * h / p), math.ceil(tiling.width * w / p)
    return (total / count)[:, 0, :out_h, :out_w].contiguous()


class AttentionMIL(Explainer):
    r"""The attention of an attention-MIL model over the patch grid (Ilse et al. 2018; Patil et al. 2019), spread
    over the image (:func:`patch_map`).

    ``weights``: ``attention`` — the pooling weights ``a_k`` (the target class's branch for multi-branch heads);
    ``confidence`` — the per-patch class probability ``softmax(f(h_k))_c`` (the model's ``patch_logits``, multi-class
    heads); ``product`` — ``a_k`` times that confidence (where the bag's class was read *and* what the patch says).

    One forward, no gradients; the reported score is the bag's class probability."""

    name = "attention-mil"
    family = "mil"
    description = ("Attention-MIL: the gated-attention pooling weights (or per-patch class confidences) of a "
                   "multiple-instance model over its patch grid (Ilse et al. 2018, Patil et al. 2019).")
    params = (ParamSpec("weights", str, "attention", choices=MIL_WEIGHTS,
                        description="attention: pooling weights; confidence: per-patch class probability "
                                    "(patch_logits); product: both multiplied."),)
    tasks: ClassVar[tuple[str, ...] | None] = ("mil",)

    def steps(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *,
              layer: str | None = None, task: str = "mil", **params: Any) -> Steps[Explained]:
        """:meth:`run` on bags ``[B, N, C, p, p]`` (``tiling`` in the keyword arguments)."""
        check_bags(self.name, inputs, requests, task)
        return self.run(model, inputs, list(requests), layer=layer, task=task, **params)

    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Steps[Explained]:
        tiling = params.pop("tiling", None)
        if not isinstance(tiling, Tiling) or tiling.count != inputs.shape[1]:
            raise InvalidOption(f"{self.name} needs the bags' tiling ({inputs.shape[1]} patches)")
        bound, _ = self._bind(params)
        with torch.no_grad():
            out = mil_outputs(model(inputs), inputs.shape[0], inputs.shape[1])
        rows = plan_rows(out.logits, requests, task)
        values = patch_values(out, rows.image, [t.index for t in rows.targets], bound["weights"])  # type: ignore
        return Explained(rows, patch_map(values, tiling), reported_scores(out.logits, rows, task))
        yield  # a generator with a single step: one forward

    def explain_bags(self, model: nn.Module, bags: Tensor, requests: Sequence[TargetRequest], *, tiling: Tiling,
                     **params: Any) -> Explained:
        """The synchronous form of :meth:`steps`."""
        return complete(self.steps(model, bags, requests, task="mil", tiling=tiling, **params))


def patch_values(out: MILOutput, image: Tensor, classes: Sequence[int], weights: str) -> Tensor:
    """``[R, N]`` the per-patch values of each row (bag ``image[r]``, class ``classes[r]``)."""
    c = torch.tensor(list(classes), dtype=torch.long, device=out.logits.device)
    branch = c if out.attention.shape[1] > 1 else torch.zeros_like(c)
    attention = out.attention[image, branch].float()                      # [R, N]
    if weights == "attention":
        return attention
    if out.patch_logits is None:
        raise InvalidOption(f"weights={weights} needs per-patch class confidences, and this model returns no "
                            "patch_logits", errors=[FieldError("weights", "the model has no patch_logits")])
    confidence = torch.softmax(out.patch_logits.float(), dim=2)[image, :, c]   # [R, N]
    return confidence if weights == "confidence" else attention * confidence
