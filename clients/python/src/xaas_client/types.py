"""Typed results: pydantic models mirroring the API's JSON.

They accept (and keep, as attributes) fields they do not know, so a newer server that adds fields never breaks an
older client; enumerations the server may grow (``task``, ``family``, ``status``) are plain strings for the same
reason. Fields that API.md does not promise have defaults.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from .images import require

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

__all__ = [
    "Box",
    "ExplainResponse",
    "Explanation",
    "Health",
    "ImageInfo",
    "LocalizeResponse",
    "MethodInfo",
    "MethodParam",
    "ModelDetail",
    "ModelInfo",
    "Prediction",
    "PredictResponse",
    "RawMap",
    "Readiness",
]


class _Result(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def to_json(self) -> dict[str, Any]:
        """The JSON the server sent (fields it omitted stay omitted), e.g. for ``--json`` output or logging."""
        return self.model_dump(mode="json", exclude_unset=True)


class Health(_Result):
    status: str


class Readiness(_Result):
    """``GET /readyz``: ``status`` is ready, loading, failed or shutting-down; ``models`` maps name → state."""

    status: str
    models: dict[str, str] = {}
    detail: str | None = None

    @property
    def is_ready(self) -> bool:
        return self.status == "ready"


class ModelInfo(_Result):
    name: str
    task: str  # "multiclass" | "multilabel"
    num_classes: int
    input_size: tuple[int, int]  # [height, width]
    device: str
    target_layer: str | None = None
    methods: list[str] = []
    default: bool = False
    channels: int | None = None


class ModelDetail(ModelInfo):
    labels: list[str]


class MethodParam(_Result):
    type: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: list[Any] | None = None
    description: str | None = None


class MethodInfo(_Result):
    name: str
    family: str  # "cam" | "gradient" | "perturbation"
    description: str
    params: dict[str, MethodParam] = {}
    uses_layer: bool | None = None
    output: str | None = None
    signed: bool | None = None
    sanity: str | None = None


class ImageInfo(_Result):
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, PIL's order."""
        return self.width, self.height


class Prediction(_Result):
    index: int
    label: str
    score: float


class PredictResponse(_Result):
    model: str
    task: str
    image: ImageInfo
    predictions: list[Prediction]


class RawMap(_Result):
    dtype: str
    shape: tuple[int, int]
    data: str  # base64 of little-endian values, row-major


class Explanation(_Result):
    """One target's map. The PNGs stay base64 strings until asked for, so unused outputs cost nothing to parse."""

    index: int
    label: str
    score: float
    heatmap: str | None = None
    overlay: str | None = None
    raw: RawMap | None = None
    empty: bool = False
    nonfinite: bool = False
    min: float | None = None
    max: float | None = None

    def heatmap_png(self) -> bytes:
        """The heatmap PNG file (8-bit grey, original image size); needs no optional dependency."""
        return _decode_b64(self.heatmap, "heatmap")

    def overlay_png(self) -> bytes:
        """The overlay PNG file (RGB); needs no optional dependency."""
        return _decode_b64(self.overlay, "overlay")

    def heatmap_image(self) -> PILImage.Image:
        """The heatmap as a PIL image (mode ``L``); 255 is the map's maximum."""
        return _open_png(self.heatmap_png(), "L")

    def heatmap_array(self) -> np.ndarray:
        """The heatmap as a ``uint8`` HxW array at the original image size."""
        np = require("numpy", "heatmap_array()")
        return np.asarray(self.heatmap_image(), dtype=np.uint8)

    def overlay_image(self) -> PILImage.Image:
        """The colour-mapped heatmap blended over the image (mode ``RGB``)."""
        return _open_png(self.overlay_png(), "RGB")

    def overlay_array(self) -> np.ndarray:
        """The overlay as a ``uint8`` HxWx3 array."""
        np = require("numpy", "overlay_array()")
        return np.asarray(self.overlay_image(), dtype=np.uint8)

    def raw_array(self) -> np.ndarray:
        """The un-normalised map as ``float32`` at the method's native resolution (ask for ``outputs=("raw",)``)."""
        np = require("numpy", "raw_array()")
        if self.raw is None:
            raise ValueError("this explanation has no raw map: ask for outputs=('raw', ...)")
        if self.raw.dtype != "float32":
            raise ValueError(f"unsupported raw dtype {self.raw.dtype!r}")
        values = np.frombuffer(base64.b64decode(self.raw.data), dtype="<f4")
        return values.reshape(self.raw.shape).astype(np.float32)  # native byte order, writable copy


class ExplainResponse(_Result):
    model: str
    method: str
    layer: str | None = None
    image: ImageInfo
    explanations: list[Explanation]


class Box(_Result):
    """One box: ``box`` is ``(x0, y0, x1, y1)`` in original-image pixels, ``x1``/``y1`` exclusive."""

    index: int
    label: str
    score: float
    box: tuple[int, int, int, int]
    area: int | None = None

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


class LocalizeResponse(_Result):
    model: str
    method: str
    threshold: float
    layer: str | None = None
    image: ImageInfo
    boxes: list[Box]


def _decode_b64(value: str | None, output: str) -> bytes:
    if value is None:
        raise ValueError(f"this explanation has no {output}: ask for outputs=('{output}', ...)")
    return base64.b64decode(value)


def _open_png(data: bytes, mode: str) -> PILImage.Image:
    pil = require("PIL.Image", "decoding a heatmap image")
    image = pil.open(io.BytesIO(data))
    image.load()
    return image if image.mode == mode else image.convert(mode)
