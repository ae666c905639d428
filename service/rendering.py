"""Turn explanation maps back into pictures: greyscale heatmap PNG, colour overlay PNG, raw float32.

These functions run in the request thread pool, outside the model worker, on NumPy arrays (the engine hands maps
over as CPU NumPy, never as device tensors). They never emit NumPy warnings: non-finite values are replaced before
any arithmetic and every division is guarded, so an empty or broken map gives a defined (all-zero) picture.

Normalisation, shared by heatmap and overlay (:func:`normalised_map`):

1. non-finite values → 0 (flagged in :class:`MapStats`), negative values → 0 (a map's negative part means "against
   the class" for signed methods; the picture shows evidence *for* it — use ``raw`` for the signed map);
2. divide by the map's maximum, so the map is in [0, 1];
3. bilinear resize to the original image size with ``torch.nn.functional.interpolate(mode="bilinear",
   align_corners=False, antialias=True)`` — plain bilinear when upsampling (the usual case), a widened triangle
   filter when the map is larger than the image;
4. divide by the resized map's maximum again, since bilinear sampling can land between a peak and its neighbours:
   the brightest output pixel is therefore exactly 1.0 (255 in 8 bits) and 0 stays 0.
"""

from __future__ import annotations

import base64
import difflib
import functools
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from service.errors import InvalidOption

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_COLORMAP",
    "MapStats",
    "encode_raw",
    "list_colormaps",
    "map_stats",
    "normalised_map",
    "render_heatmap",
    "render_overlay",
    "validate_alpha",
    "validate_colormap",
    "validate_overlay_options",
]

DEFAULT_COLORMAP = "jet"
DEFAULT_ALPHA = 0.5

# zlib levels. Heatmaps are smooth and compress well: 6 (PIL's default) keeps the base64 payload small at little
# cost. Overlays carry the photo's noise: level 6 took twice as long as level 1 for a ~13 % smaller file (36 MP).
_HEATMAP_PNG_LEVEL = 6
_OVERLAY_PNG_LEVEL = 1
# Rows blended per step in the overlay, so a 40 MP image does not need several float copies at once.
_BLEND_CHUNK_PIXELS = 1 << 20
_SUGGESTED_COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "gray")


@dataclass(frozen=True)
class MapStats:
    """What the raw map looked like before it was turned into a picture.

    ``min``/``max`` are over the finite values (0.0 when there are none); ``empty`` means no finite positive value,
    so the picture is all zero; ``nonfinite`` means NaN or ±inf were present (and were drawn as 0).
    """

    min: float
    max: float
    empty: bool
    nonfinite: bool


# --------------------------------------------------------------------------------------------------------------------
# Normalisation and resizing (shared)
# --------------------------------------------------------------------------------------------------------------------


def map_stats(heatmap: np.ndarray) -> MapStats:
    """Finite min/max and the empty/non-finite flags of a raw 2-D map (or a volume's 3-D one)."""
    values = _as_map(heatmap, (2, 3))
    finite = np.isfinite(values)
    nonfinite = not bool(finite.all())
    if not finite.any():
        return MapStats(min=0.0, max=0.0, empty=True, nonfinite=nonfinite)
    finite_values = values[finite] if nonfinite else values
    low, high = float(finite_values.min()), float(finite_values.max())
    return MapStats(min=low, max=high, empty=not high > 0.0, nonfinite=nonfinite)


def normalised_map(heatmap: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, MapStats]:
    """float32 ``[height, width]`` map in [0, 1] at ``size`` = (width, height), and the raw map's stats.

    The single place where maps are cleaned, scaled and resized, so heatmap and overlay always agree.
    """
    width, height = _check_size(size)
    values = _as_map(heatmap)
    stats = map_stats(values)
    if stats.empty:
        return np.zeros((height, width), dtype=np.float32), stats
    clean = np.where(np.isfinite(values), values, np.float32(0.0))
    np.maximum(clean, np.float32(0.0), out=clean)
    clean /= np.float32(stats.max)  # stats.max > 0 and finite here; result in [0, 1], no overflow when resizing
    resized = _resize(clean, width, height)
    peak = float(resized.max())
    if not peak > 0.0:  # cannot happen with non-negative bilinear weights, but never divide by zero
        return np.zeros((height, width), dtype=np.float32), stats
    resized /= np.float32(peak)
    np.clip(resized, 0.0, 1.0, out=resized)
    return resized, stats


def _resize(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a 2-D float32 map (see the module docstring for the exact method)."""
    if values.shape == (height, width):
        return values.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(values))[None, None]
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return resized[0, 0].numpy().astype(np.float32, copy=False)


def _as_map(heatmap: Any, dims: tuple[int, ...] = (2,)) -> np.ndarray:
    """Validate a non-empty numeric map of ``dims`` dimensions (2-D, or a volume's 3 where the caller takes it) and
    view it as float32 (a programming error otherwise)."""
    if isinstance(heatmap, torch.Tensor):
        raise TypeError("rendering takes NumPy arrays; call .detach().cpu().numpy() in the engine")
    values = np.asarray(heatmap)
    if values.ndim not in dims or values.size == 0:
        raise ValueError(f"heatmap must be a non-empty {' or '.join(map(str, dims))}-D array, got shape "
                         f"{values.shape}")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"heatmap must be numeric, got dtype {values.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, which is then flagged
        return values.astype(np.float32, copy=False)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive (width, height), got {size}")
    return width, height


def _to_u8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8 with rounding, so 1.0 is exactly 255 and 0.0 exactly 0."""
    return np.rint(unit * np.float32(255.0)).astype(np.uint8)


def encode_png(pixels: np.ndarray, compress_level: int = 6) -> bytes:
    """uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) → PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------------------
# Public renderers
# --------------------------------------------------------------------------------------------------------------------


def render_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> tuple[bytes, MapStats]:
    """8-bit greyscale PNG of ``heatmap`` at ``size`` = (width, height) of the original image.

    0 = no importance, 255 = the map's maximum. An empty map (nothing > 0) gives an all-zero PNG with
    ``stats.empty``; NaN/inf are drawn as 0 and flagged with ``stats.nonfinite``.
    """
    unit, stats = normalised_map(heatmap, size)
    return encode_png(_to_u8(unit), _HEATMAP_PNG_LEVEL), stats


def render_overlay(
    heatmap: np.ndarray,
    base_rgb: np.ndarray,
    *,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = DEFAULT_ALPHA,
) -> bytes:
    """RGB PNG: the colour-mapped heatmap blended over ``base_rgb`` (uint8 ``[H, W, 3]``, the original image).

    ``out = (1 − alpha) · image + alpha · colormap(map)`` everywhere (uniform blend, as Grad-CAM papers show it), so
    ``alpha = 0`` returns the image and ``alpha = 1`` the colour-mapped map. The map is quantised to 8 bits first,
    so the overlay's colours correspond one-to-one to the greyscale heatmap's values.
    """
    lut = _colormap_lut(validate_colormap(colormap))
    weight = validate_alpha(alpha)
    base = np.asarray(base_rgb)
    if base.dtype != np.uint8 or base.ndim != 3 or base.shape[2] != 3:
        raise ValueError(f"base_rgb must be uint8 [H, W, 3], got {base.dtype} {base.shape}")
    height, width = base.shape[:2]
    unit, _ = normalised_map(heatmap, (width, height))
    return encode_png(_blend(base, lut[_to_u8(unit)], weight), _OVERLAY_PNG_LEVEL)


def _blend(base: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """Alpha-blend two uint8 RGB images in row chunks (bounded float memory for very large images)."""
    out = np.empty_like(base)
    rows = max(1, _BLEND_CHUNK_PIXELS // max(1, base.shape[1]))
    keep, add = np.float32(1.0 - alpha), np.float32(alpha)
    for start in range(0, base.shape[0], rows):
        stop = start + rows
        mixed = base[start:stop].astype(np.float32) * keep + colour[start:stop].astype(np.float32) * add
        out[start:stop] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def encode_raw(heatmap: np.ndarray) -> dict[str, Any]:
    """The map at its native resolution as ``{"dtype": "float32", "shape": [h, w], "data": base64}`` (a volume's:
    ``[d, h, w]``).

    ``data`` is the row-major little-endian float32 bytes; values are *not* cleaned (NaN/inf/negatives stay), since
    raw output is meant to be the honest, un-normalised map.
    """
    values = np.ascontiguousarray(_as_map(heatmap, (2, 3)), dtype="<f4")
    return {
        "dtype": "float32",
        "shape": [int(s) for s in values.shape],
        "data": base64.b64encode(values.tobytes(order="C")).decode("ascii"),
    }


# --------------------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------------------


def list_colormaps() -> list[str]:
    """Every colormap name accepted by ``colormap`` (Matplotlib's registry, incl. ``_r`` reversed variants)."""
    return sorted(_colormap_registry())


def validate_colormap(name: str) -> str:
    """Return ``name`` if Matplotlib knows it, else :class:`InvalidOption` with suggestions."""
    registry = _colormap_registry()
    if isinstance(name, str) and name in registry:
        return name
    close = difflib.get_close_matches(name, list(registry), n=3) if isinstance(name, str) and name else []
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    shown = repr(name[:64]) if isinstance(name, str) else f"of type {type(name).__name__}"
    raise InvalidOption(
        f"unknown colormap {shown}{hint}. Use one of the {len(registry)} Matplotlib colormap names, e.g. "
        f"{', '.join(_SUGGESTED_COLORMAPS)} (append _r to reverse)"
    )


def validate_alpha(alpha: float) -> float:
    """Overlay opacity must be a finite number in [0, 1]."""
    if isinstance(alpha, bool):
        raise InvalidOption("alpha must be a number between 0 and 1")
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise InvalidOption("alpha must be a number between 0 and 1") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidOption(f"alpha must be between 0 and 1, got {alpha}")
    return value


def validate_overlay_options(colormap: str = DEFAULT_COLORMAP, alpha: float = DEFAULT_ALPHA) -> tuple[str, float]:
    """Check overlay options up front (before a job is queued), with the same errors as :func:`render_overlay`."""
    return validate_colormap(colormap), validate_alpha(alpha)


def _colormap_registry() -> Any:
    """Matplotlib's colormap registry, imported lazily (never pyplot: no backend, no GUI, faster start-up)."""
    import matplotlib

    return matplotlib.colormaps


@functools.lru_cache(maxsize=64)
def _colormap_lut(name: str) -> np.ndarray:
    """uint8 ``[256, 3]`` RGB table of a colormap sampled at i/255, i = 0..255."""
    cmap = _colormap_registry()[name]
    rgba = cmap(np.linspace(0.0, 1.0, 256), bytes=True)
    return np.ascontiguousarray(rgba[:, :3], dtype=np.uint8)
