"""Feature visualisation: layer activations, convolution filters and class impressions.

Pure tensor/NumPy code, no HTTP. Rules shared with the rest of the engine: the shared model is never mutated (hooks
live for one call through :class:`~service.engine.base.Hooks`, parameters keep ``requires_grad=False``); class
impressions optimise the INPUT only (a leaf tensor with ``requires_grad``).

* :func:`layer_activations` — one image's ``[C, h, w]`` activation at a named layer (hooked forward).
* :func:`channel_stats`, :func:`top_channels`, :func:`activation_grid`, :func:`channel_image` — statistics and
  pictures of those activations (each channel min–max normalised on its own).
* :func:`conv_layers`, :func:`filter_grid` — the weights of a ``nn.Conv2d`` as an image grid (RGB when the layer
  sees 3 input channels, else the per-input-channel mean in grey).
* :class:`ClassImpression` — gradient ascent on a target logit from noise, in resumable slices (random jitter,
  rotation and scale each step; total-variation prior; optional L2 decay; pixels clamped to the valid input range).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .base import Hooks, grad_enabled, logits_of

__all__ = [
    "ClassImpression",
    "ImpressionParams",
    "activation_grid",
    "channel_image",
    "channel_stats",
    "conv_layers",
    "filter_grid",
    "grid_shape",
    "layer_activations",
    "minmax_u8",
    "top_channels",
]

GRID_PAD = 1  # pixels between tiles (value 0)


# --------------------------------------------------------------------------------------------------- helpers


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise InvalidOption(f"model has no layer {name!r}") from None


def minmax(values: np.ndarray) -> np.ndarray:
    """float32 copy scaled to [0, 1] (constant or non-finite-only input → all zeros)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return np.zeros_like(v)
    return (v - lo) / (hi - lo)


def minmax_u8(values: np.ndarray) -> np.ndarray:
    """Min–max normalised to 0..255 (uint8, rounded)."""
    return np.round(minmax(values) * 255.0).astype(np.uint8)


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid holding ``n`` tiles."""
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    return rows, cols


def tile_grid(tiles: Sequence[np.ndarray], pad: int = GRID_PAD) -> np.ndarray:
    """Tiles of equal shape ``[h, w]`` or ``[h, w, 3]`` (uint8) in row-major order, ``pad`` black pixels apart."""
    rows, cols = grid_shape(len(tiles))
    h, w = tiles[0].shape[:2]
    extra = tiles[0].shape[2:]
    out = np.zeros((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, *extra), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = tile
    return out


def tile_origin(index: int, n: int, tile_hw: tuple[int, int], pad: int = GRID_PAD) -> tuple[int, int]:
    """(y, x) of the top-left pixel of tile ``index`` in a grid of ``n`` tiles."""
    _, cols = grid_shape(n)
    r, c = divmod(index, cols)
    return r * (tile_hw[0] + pad), c * (tile_hw[1] + pad)


# --------------------------------------------------------------------------------------------------- activations


def layer_activations(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The ``[C, h, w]`` float32 CPU activation of ``layer`` for one image ``x`` ``[1, C, H, W]`` (hooked forward,
    no autograd; the hook is removed before returning)."""
    module = _module(model, layer)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    captured: list[Tensor] = []

    def grab(_m: nn.Module, _args: tuple, out: Any) -> None:
        t = out[0] if isinstance(out, (tuple, list)) else out
        captured.append(t.detach().float().cpu().clone())

    with torch.inference_mode(), Hooks() as hooks:
        hooks.forward(module, grab)
        model(x)
    if not captured:
        raise InvalidOption(f"layer {layer!r} did not run in the forward pass")
    act = captured[0]
    if act.dim() != 4 or act.shape[0] != 1:
        raise InvalidOption(f"layer {layer!r} has no spatial output (shape {tuple(act.shape)})")
    return act[0]


def channel_stats(act: Tensor | np.ndarray) -> list[dict[str, float | int]]:
    """Per channel of ``[C, h, w]``: index, mean, max and the fraction of positive values."""
    a = torch.as_tensor(act).float().flatten(1)
    means, maxes, pos = a.mean(1), a.amax(1), (a > 0).float().mean(1)
    return [{"index": i, "mean": float(means[i]), "max": float(maxes[i]), "fraction_positive": float(pos[i])}
            for i in range(a.shape[0])]


def top_channels(act: Tensor | np.ndarray, top: int) -> list[int]:
    """Indices of the ``top`` channels by mean activation, highest first (ties: lower index first)."""
    means = torch.as_tensor(act).float().flatten(1).mean(1)
    order = sorted(range(len(means)), key=lambda i: (-float(means[i]), i))
    return order[: max(1, min(top, len(order)))]


def activation_grid(act: Tensor | np.ndarray, indices: Sequence[int], *, min_tile: int = 32) -> tuple[np.ndarray, int]:
    """Grey uint8 grid of the chosen channels, each min–max normalised; small maps are enlarged by an integer factor
    (nearest) so a tile is at least ``min_tile`` px. Returns ``(grid, scale)``."""
    a = torch.as_tensor(act).float().numpy()
    h, w = a.shape[1:]
    scale = max(1, math.ceil(min_tile / max(1, min(h, w))))
    tiles = []
    for i in indices:
        tile = minmax_u8(a[i])
        if scale > 1:
            tile = np.kron(tile, np.ones((scale, scale), dtype=np.uint8))
        tiles.append(tile)
    return tile_grid(tiles), scale


def channel_image(act: Tensor | np.ndarray, channel: int) -> np.ndarray:
    """One channel as an 8-bit grey image at the layer's native resolution (min–max normalised)."""
    a = torch.as_tensor(act)
    if not 0 <= channel < a.shape[0]:
        raise InvalidOption(f"channel {channel} is out of range: the layer has channels 0..{a.shape[0] - 1}",
                            errors=[FieldError("channel", f"must be between 0 and {a.shape[0] - 1}")])
    return minmax_u8(a[channel].float().numpy())


# --------------------------------------------------------------------------------------------------- filters


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the ``nn.Conv2d`` modules, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and name]


def filter_grid(model: nn.Module, layer: str | None = None, *, min_tile: int = 24) -> dict[str, Any]:
    """The filters of a conv layer (default: the first) as a grid: each filter min–max normalised on its own; RGB
    tiles when ``in_channels == 3``, else the mean over input channels in grey. Kernels are enlarged (nearest) by an
    integer factor to at least ``min_tile`` px."""
    convs = conv_layers(model)
    if not convs:
        raise InvalidOption("the model has no nn.Conv2d layer")
    layer = layer or convs[0]
    if layer not in convs:
        raise InvalidOption(f"{layer!r} is not a convolution layer; conv layers: {', '.join(convs)}",
                            errors=[FieldError("layer", "not an nn.Conv2d layer")])
    conv = model.get_submodule(layer)
    w = conv.weight.detach().float().cpu()  # [out, in/groups, kh, kw]
    rgb = w.shape[1] == 3
    kh, kw = w.shape[2:]
    scale = max(1, math.ceil(min_tile / max(1, min(kh, kw))))
    tiles = []
    for f in w:
        if rgb:
            tile = minmax_u8(f.permute(1, 2, 0).numpy())  # normalised over the whole filter (all 3 channels)
            if scale > 1:
                tile = np.kron(tile, np.ones((scale, scale, 1), dtype=np.uint8))
        else:
            tile = minmax_u8(f.mean(0).numpy())
            if scale > 1:
                tile = np.kron(tile, np.ones((scale, scale), dtype=np.uint8))
        tiles.append(tile)
    return {"layer": layer, "grid": tile_grid(tiles), "count": int(w.shape[0]), "in_channels": int(conv.in_channels),
            "kernel_size": [int(kh), int(kw)], "mode": "rgb" if rgb else "grey-mean", "scale": scale}


# --------------------------------------------------------------------------------------------------- impressions


@dataclass(frozen=True)
class ImpressionParams:
    steps: int = 200
    lr: float = 0.05
    tv_weight: float = 2.0
    l2_weight: float = 0.0
    jitter: int = 8
    rotation: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    seed: int = 0


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV), per image summed over channels."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dh + dw


@dataclass
class ClassImpression:
    """Resumable gradient ascent on one class's logit. Create, then call :meth:`run` with a step budget until
    :attr:`done`; :meth:`image` and :attr:`probability` read the result. Not thread-safe: one owner (the model's
    worker) at a time."""

    model: nn.Module
    target: int
    input_shape: tuple[int, int, int]
    input_range: tuple[Sequence[float], Sequence[float]]
    task: str = "multiclass"
    params: ImpressionParams = field(default_factory=ImpressionParams)
    device: torch.device | str = "cpu"

    step: int = 0
    probability: float | None = None
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.params
        self._gen = torch.Generator().manual_seed(int(p.seed))
        c, h, w = self.input_shape
        lo = torch.tensor(list(self.input_range[0]), dtype=torch.float32).view(1, c, 1, 1)
        hi = torch.tensor(list(self.input_range[1]), dtype=torch.float32).view(1, c, 1, 1)
        # Start from mid-grey plus a little noise (in pixel space 0.5 ± 0.1), mapped to the model's input space.
        noise = 0.5 + 0.1 * torch.randn((1, c, h, w), generator=self._gen)
        x0 = lo + noise.clamp(0, 1) * (hi - lo)
        with torch.inference_mode(False):
            self._lo, self._hi = lo.to(self.device), hi.to(self.device)
            self.x = x0.to(self.device).requires_grad_(True)
            self._opt = torch.optim.Adam([self.x], lr=p.lr)

    @property
    def done(self) -> bool:
        return self.step >= self.params.steps

    def _augment(self, x: Tensor) -> Tensor:
        p = self.params
        g = self._gen
        if p.jitter > 0:
            dy, dx = (int(v) for v in torch.randint(-p.jitter, p.jitter + 1, (2,), generator=g))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        angle = (math.radians(float(torch.empty(1).uniform_(-p.rotation, p.rotation, generator=g))) if p.rotation
                 else 0.0)
        s0, s1 = p.scale
        s = float(torch.empty(1).uniform_(s0, s1, generator=g)) if s1 > s0 else float(s0)
        if angle or s != 1.0:
            cos, sin = math.cos(angle) / s, math.sin(angle) / s
            theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)[None]
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return x

    def _score(self, logits: Tensor) -> Tensor:
        if self.task == "multilabel":
            return torch.sigmoid(logits[:, self.target])
        return torch.softmax(logits.float(), dim=1)[:, self.target]

    def run(self, n: int, should_yield: Callable[[], bool] | None = None) -> int:
        """Up to ``n`` more steps; returns the number run. ``should_yield()`` is asked after each step and ends the
        call early when true (e.g. requests are waiting for the model). Updates :attr:`probability` (on the
        un-augmented image)."""
        p = self.params
        todo = max(0, min(n, p.steps - self.step))
        ran = 0
        with grad_enabled():
            for _ in range(todo):
                if ran and should_yield is not None and should_yield():
                    break
                self._opt.zero_grad(set_to_none=True)
                logits = logits_of(self.model(self._augment(self.x)), 1)
                loss = -logits[0, self.target] + p.tv_weight * total_variation(self.x)
                if p.l2_weight:
                    loss = loss + p.l2_weight * self.x.pow(2).mean()
                loss.backward()
                self._opt.step()
                with torch.no_grad():
                    self.x.copy_(torch.maximum(torch.minimum(self.x, self._hi), self._lo))
                self.step += 1
                ran += 1
            with torch.no_grad():
                self.probability = float(self._score(logits_of(self.model(self.x), 1))[0])
        self.history.append(self.probability)
        return ran

    def pixels(self) -> np.ndarray:
        """The current image as uint8 ``[H, W, C]`` (C = 1 or 3) in pixel space."""
        with torch.no_grad():
            x = ((self.x.detach() - self._lo) / (self._hi - self._lo)).clamp(0, 1)[0].cpu()
        return np.round(x.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
