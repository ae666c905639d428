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
    "ActivationResponse",
    "Box",
    "ChannelStats",
    "ExplainResponse",
    "Explanation",
    "FilterResponse",
    "GridInfo",
    "Health",
    "ImageInfo",
    "Job",
    "JobProgress",
    "LayerChoice",
    "LocalizeResponse",
    "MaskBox",
    "MethodInfo",
    "MethodParam",
    "MethodTrustInfo",
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
    """One model of ``GET /models`` (``task``: multiclass, multilabel, segmentation, detection, mil...). Fields a
    server of an older version omits are ``None`` (or the default of the models it had then): the tiling fields
    ``patch_size``, ``stride`` and ``max_patches`` are set for ``task: mil`` models only, ``score_threshold`` for
    detectors only."""

    name: str
    task: str
    num_classes: int
    input_size: tuple[int, ...]  # [height, width], or [depth, height, width] for volume models
    device: str
    target_layer: str | None = None
    target_layer_reason: str | None = None  # why that layer (the rule that chose it, or the registry entry)
    methods: list[str] = []
    default: bool = False
    channels: int | None = None
    spatial_dims: int | None = None         # 3 for volume models
    keep_aspect: bool = False               # volumes: kept in proportion inside input_size, centred and padded
    score_threshold: float | None = None    # detection: the least score of a reported detection
    patch_size: int | None = None           # mil: the side of a patch, in pixels of the native image
    stride: int | None = None               # mil: pixels between two patches
    max_patches: int | None = None          # mil: the most patches one image may make (more: PayloadTooLarge)

    @property
    def is_mil(self) -> bool:
        """An attention-MIL model: it reads the image at native resolution as a bag of patches."""
        return self.task == "mil"


class LayerChoice(_Result):
    """A layer a request may name: ``layout`` nchw, nhwc, tokens or ncdhw; ``grid`` its map's (depth,) height,
    width; ``prefix`` the leading non-patch tokens of a transformer."""

    name: str
    layout: str
    grid: tuple[int, ...]
    channels: int
    prefix: int = 0


class MethodTrustInfo(_Result):
    """Whether a method can be trusted on the model: ``source`` measured (``xaas evaluate``) or demo; ``flags`` the
    rules it breaks, ``measured`` the numbers (a dict, as the server's set of measures grows)."""

    source: str
    passes: bool
    flags: list[str] = []
    measured: dict[str, Any] | None = None


class ModelDetail(ModelInfo):
    """``GET /models/{name}``: the model with its labels, the layers a request may name, the methods refused on it
    with the reason (``refused``), what holds for the applicable ones (``caveats``) and their ``trust``."""

    labels: list[str]
    layers: list[LayerChoice] = []
    refused: dict[str, str] = {}
    caveats: dict[str, list[str]] = {}
    trust: dict[str, MethodTrustInfo] = {}


class MethodParam(_Result):
    type: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: list[Any] | None = None
    description: str | None = None


class MethodInfo(_Result):
    name: str
    family: str  # "cam" | "gradient" | "perturbation" | "attention" | "mil"
    description: str
    params: dict[str, MethodParam] = {}
    uses_layer: bool | None = None
    output: str | None = None
    signed: bool | None = None
    sanity: str | None = None
    caveats: list[str] = []
    tasks: list[str] | None = None  # the model tasks it is made for (e.g. ["mil"] for attention-mil); None: all


class ImageInfo(_Result):
    width: int
    height: int
    depth: int | None = None                 # volumes: slices
    spacing: tuple[float, ...] | None = None  # volumes: voxel size in mm, (slice, row, column)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, PIL's order."""
        return self.width, self.height


class ExplainedDetection(_Result):
    """Detection models: which detection a row explains — its ``id`` and ``box`` ``(x0, y0, x1, y1)`` in original
    pixels (float: a detector's boxes are not on the pixel grid)."""

    id: int
    box: tuple[float, float, float, float]


class Prediction(_Result):
    index: int
    label: str
    score: float
    id: int | None = None                  # detection models: the detection's id (for explain's detection)
    box: tuple[float, float, float, float] | None = None  # detection: (x0, y0, x1, y1) in original pixels
    pixel_fraction: float | None = None    # segmentation models: share of pixels predicted as the class
    mean_probability: float | None = None  # segmentation: mean probability over those pixels
    mask: str | None = None                # segmentation: binary PNG (base64) at the original size

    def mask_png(self) -> bytes:
        """Segmentation: the class's mask PNG file (255 = the class, original size); needs no optional dependency."""
        return _decode_b64(self.mask, "no mask: it is a segmentation output (outputs=('mask', ...))")

    def mask_array(self) -> np.ndarray:
        """Segmentation: the class's mask as a ``bool`` HxW array at the original image size."""
        np = require("numpy", "mask_array()")
        return np.asarray(_open_png(self.mask_png(), "L")) > 0


class PredictResponse(_Result):
    model: str
    task: str
    image: ImageInfo
    predictions: list[Prediction]
    labelmap: str | None = None            # segmentation with outputs=labelmap: 8-bit PNG of class indices

    def labelmap_png(self) -> bytes:
        """Segmentation with ``outputs=("labelmap", ...)``: the 8-bit PNG file of the predicted class per pixel."""
        return _decode_b64(self.labelmap, "no labelmap: ask a segmentation model for outputs=('labelmap', ...)")

    def labelmap_array(self) -> np.ndarray:
        """The labelmap as a ``uint8`` HxW array of class indices at the original image size."""
        np = require("numpy", "labelmap_array()")
        return np.asarray(_open_png(self.labelmap_png(), None), dtype=np.uint8)


class RawMap(_Result):
    dtype: str
    shape: tuple[int, ...]   # [h, w], or a volume's [d, h, w]
    data: str  # base64 of little-endian values, row-major


class Explanation(_Result):
    """One target's map. The PNGs stay base64 strings until asked for, so unused outputs cost nothing to parse."""

    index: int
    label: str
    score: float
    detection: ExplainedDetection | None = None  # detection models: the detection explained
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


class _Boxed(_Result):
    box: tuple[int, int, int, int]

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


class Box(_Boxed):
    """One box: ``box`` is ``(x0, y0, x1, y1)`` in original-image pixels, ``x1``/``y1`` exclusive."""

    index: int
    label: str
    score: float
    area: int | None = None
    detection: ExplainedDetection | None = None  # detection models: the detection explained (its own box)
    box3d: tuple[int, int, int, int, int, int] | None = None  # volumes: (x0, y0, z0, x1, y1, z1) voxels, ends excl.
    box_mm: tuple[float, float, float, float, float, float] | None = None  # volumes: the same box in LPS mm


class MaskBox(_Boxed):
    """Segmentation models: a connected component of the model's own predicted mask of a class, ``box`` as
    ``(x0, y0, x1, y1)`` in original-image pixels (exclusive ends), with the class's mean probability inside."""

    index: int
    label: str
    area: int
    mean_probability: float


class LocalizeResponse(_Result):
    """``boxes`` come from the explanation maps; for segmentation models ``mask_boxes`` (else ``None``) from the
    model's predicted masks of the same classes, side by side."""

    model: str
    method: str
    threshold: float
    layer: str | None = None
    image: ImageInfo
    boxes: list[Box]
    mask_boxes: list[MaskBox] | None = None


class ChannelStats(_Result):
    index: int
    mean: float
    max: float
    fraction_positive: float


class GridInfo(_Result):
    """Layout of a grid PNG: ``rows`` x ``cols`` tiles of ``tile`` = (height, width) pixels, ``pad`` apart."""

    rows: int
    cols: int
    tile: tuple[int, int]
    scale: int
    pad: int


class ActivationResponse(_Result):
    """``POST /activations``: ``grid`` (top channels) or ``channel`` (the one asked for) as base64 PNGs."""

    model: str
    layer: str
    shape: tuple[int, int, int]  # [channels, height, width]
    image: ImageInfo
    channels: list[ChannelStats]
    grid: str | None = None
    grid_info: GridInfo | None = None
    channel: str | None = None

    def grid_png(self) -> bytes:
        """The grid PNG file (8-bit grey, one min-max normalised tile per channel of ``channels``)."""
        return _decode_b64(self.grid, "no grid: it was asked for one channel (channel=...)")

    def grid_image(self) -> PILImage.Image:
        """The grid as a PIL image (mode ``L``); layout in ``grid_info``."""
        return _open_png(self.grid_png(), "L")

    def channel_png(self) -> bytes:
        """The requested channel's PNG file (8-bit grey, the layer's native resolution)."""
        return _decode_b64(self.channel, "no single channel: ask for channel=N")

    def channel_image(self) -> PILImage.Image:
        """The requested channel as a PIL image (mode ``L``)."""
        return _open_png(self.channel_png(), "L")


class FilterResponse(_Result):
    """``GET /models/{name}/filters``: ``mode`` is ``rgb`` (3 input channels) or ``grey-mean``."""

    model: str
    layer: str
    count: int
    in_channels: int
    kernel_size: tuple[int, int]
    mode: str
    grid: str
    grid_info: GridInfo
    conv_layers: list[str] = []

    def grid_png(self) -> bytes:
        """The filter grid PNG file (RGB or grey, each filter min-max normalised on its own)."""
        return _decode_b64(self.grid, "no grid")

    def grid_image(self) -> PILImage.Image:
        """The filter grid as a PIL image (mode ``RGB`` for rgb filters, else ``L``)."""
        return _open_png(self.grid_png(), "RGB" if self.mode == "rgb" else "L")


class JobProgress(_Result):
    """How far a job is: ``done`` of ``total`` ``unit`` (masked forwards, masks, windows, steps...)."""

    done: int = 0
    total: int = 0
    unit: str = "steps"
    step: int = 0   # the first job API's names for done / total (class impressions)
    steps: int = 0

    @property
    def fraction(self) -> float:
        done, total = (self.done, self.total) if self.total else (self.step, self.steps)
        return done / total if total else 0.0


class Job(_Result):
    """An asynchronous job (``GET /jobs/{id}``); ``status`` is queued, running, done, failed or cancelled. A freshly
    started job carries only ``id`` and ``status``. When done, ``result`` is exactly the body the synchronous call
    returns: read it typed with :meth:`explanation` / :meth:`localization`, or :meth:`image_png` for a class
    impression."""

    id: str
    status: str
    kind: str | None = None
    model: str | None = None
    progress: JobProgress | None = None
    method: str | None = None
    target: int | None = None
    label: str | None = None
    probability: float | None = None
    result: dict[str, Any] | None = None
    image: str | None = None   # class impressions of servers before the unified job API
    error: str | None = None

    @property
    def finished(self) -> bool:
        """True once the job ended (done, failed or cancelled)."""
        return self.status in ("done", "failed", "cancelled")

    def explanation(self) -> ExplainResponse:
        """The result of a done ``/explain`` job."""
        return ExplainResponse.model_validate(self._result("explanation"))

    def localization(self) -> LocalizeResponse:
        """The result of a done ``/localize`` job."""
        return LocalizeResponse.model_validate(self._result("localization"))

    def audit_report(self) -> dict[str, Any]:
        """The report of a done ``/audit`` job (``classes``, ``flagged``, ``report_html``...)."""
        return self._result("audit report")

    def image_png(self) -> bytes:
        """The result PNG file (RGB, or grey for one-channel models) at the model's input size; when done."""
        image = self.image or (self.result or {}).get("image")
        return _decode_b64(image, f"no image: the job is {self.status}")

    def image_image(self) -> PILImage.Image:
        """The result as a PIL image (mode as stored: ``RGB`` or ``L``)."""
        return _open_png(self.image_png(), None)

    def _result(self, what: str) -> dict[str, Any]:
        if self.status != "done" or self.result is None:
            raise ValueError(f"no {what} yet: the job is {self.status}")
        return self.result


def _decode_b64(value: str | None, output: str) -> bytes:
    if value is None:
        if " " in output:  # a full explanation of what is missing
            raise ValueError(f"this result has {output}")
        raise ValueError(f"this explanation has no {output}: ask for outputs=('{output}', ...)")
    return base64.b64decode(value)


def _open_png(data: bytes, mode: str | None) -> PILImage.Image:
    pil = require("PIL.Image", "decoding a PNG image")
    image = pil.open(io.BytesIO(data))
    image.load()
    return image if mode is None or image.mode == mode else image.convert(mode)
