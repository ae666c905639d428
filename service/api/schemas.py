"""Pydantic v2 schemas of the HTTP contract (kept apart from engine and registry types).

Request options share :class:`RequestOptions`: unknown members are refused, NaN/inf are refused, number fields
take only numbers — never booleans (``"seed": false`` is not 0) and, from form fields, only ASCII digits (``"¹"``,
``"١"`` or ``"1_000"`` are malformed, though Python would read some of them) — and boolean fields never numbers
(``0`` is not false). Fixed-length arrays are described as
arrays with ``minItems``/``maxItems`` rather than tuple typing (``prefixItems``), which several OpenAPI tools and
client generators cannot read.

(Longer than our usual ~500 lines on purpose: this is the contract itself — many small declarative classes that the
OpenAPI document is generated from — and one file keeps every shared option type next to its users. The Open
Inference Protocol's schemas, a contract of their own, live in :mod:`service.api.schemas_oip`.)
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ..trust import MethodTrust
from .schemas_audit import AuditReport

# ASCII only: str.isdigit() is true for "¹", and int()/float() read other scripts' digits and underscores.
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def _integer_input(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected an integer, not a boolean")
    if isinstance(value, str) and not (_INTEGER.fullmatch(value.strip()) and len(value.strip()) <= 20):
        raise ValueError("expected an integer written with ASCII digits")
    return value


def _number_input(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    if isinstance(value, str) and not _NUMBER.fullmatch(value.strip()):
        raise ValueError("expected a finite number written with ASCII digits")
    return value


def _target_input(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a class index or label, not a boolean")
    return value


def _boolean_input(value: Any) -> Any:
    # a JSON boolean or a form field's text ("true", "false", ...); pydantic alone would also take 0 and 1
    if not isinstance(value, bool | str):
        raise ValueError("expected a boolean (true or false)")
    return value


Bool = Annotated[bool, BeforeValidator(_boolean_input)]
Int = Annotated[int, BeforeValidator(_integer_input)]
Number = Annotated[float, BeforeValidator(_number_input)]
Target = Annotated[int | str, BeforeValidator(_target_input)]
Pair = Annotated[list[int], Field(min_length=2, max_length=2)]
Triple = Annotated[list[int], Field(min_length=3, max_length=3)]
Quad = Annotated[list[int], Field(min_length=4, max_length=4)]


Task = Literal["multiclass", "multilabel", "segmentation", "detection", "mil"]
Box = Annotated[list[float], Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] in original pixels.")]

TIMEOUT_DESCRIPTION = ("Deadline in seconds, at least 1 (a request may shorten the server's XAAS_REQUEST_TIMEOUT, "
                       "never extend it).")


class RequestOptions(BaseModel):
    """Base of every request body or option set: strict about what it accepts."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class ImageOptions(RequestOptions):
    """Options shared by every endpoint that takes an image."""

    model: str | None = Field(None, description="Registry name; the default model when absent.", max_length=64)
    target: list[Target] = Field(default_factory=list, max_length=100,
                                 description="Class index or label; repeat the field for several targets.")
    top_k: Int | None = Field(None, ge=1, le=1000, description="Without target: the k highest-scoring classes.")
    frame: Int | None = Field(None, ge=0, le=100_000, description="Frame of a multi-frame DICOM/GIF/TIFF (0-based).")
    timeout: Number | None = Field(None, ge=1, le=3600, description=TIMEOUT_DESCRIPTION)

    @field_validator("target", mode="before")
    @classmethod
    def _scalar_to_list(cls, v: Any) -> Any:
        if v is None:
            return []
        return v if isinstance(v, list) else [v]

    @field_validator("target")
    @classmethod
    def _non_empty_labels(cls, v: list[Target]) -> list[Target]:
        for t in v:
            if isinstance(t, str) and not (0 < len(t) <= 200):
                raise ValueError("a target label must have 1 to 200 characters")
        return v



def comma_list(v: Any) -> Any:
    """A list option given as a comma-separated string, repeated fields, or a JSON list (non-strings kept as they
    are, for the type check to refuse)."""
    if isinstance(v, str):
        return [part.strip() for part in v.split(",") if part.strip()]
    if isinstance(v, list):
        return [part.strip() if isinstance(part, str) else part
                for item in v for part in (item.split(",") if isinstance(item, str) else [item]) if part != ""]
    return v


class PredictOptions(ImageOptions):
    outputs: list[Literal["mask", "labelmap"]] = Field(
        default_factory=lambda: ["mask"], max_length=2,
        description="Segmentation models: mask (a binary PNG per class) and/or labelmap (one 8-bit PNG of the "
                    "predicted class per pixel), at the original size.")

    @field_validator("outputs", mode="before")
    @classmethod
    def _outputs_list(cls, v: Any) -> Any:
        return comma_list(v)


class ImageInfo(BaseModel):
    width: int
    height: int
    depth: int | None = Field(None, description="Volumes: slices (after sorting along the slice normal).")
    spacing: list[float] | None = Field(None, description="Volumes: voxel size in mm, [slice, row, column].")


REGION_DESCRIPTION = ("Segmentation models: where the class is explained (its logits summed there, Seg-Grad-CAM): "
                      "predicted (default), all, a box x0,y0,x1,y1 in original pixels, or mask:<base64 PNG> "
                      "(non-zero = inside, image size).")

Output = Literal["heatmap", "overlay", "raw", "dicom-pm", "dicom-seg", "dicom-sc", "nifti"]


class DetectionOptions(RequestOptions):
    """The detection a detector's explanation is of (``/explain/{method}``, ``/localize``)."""

    detection: Target | None = Field(None, description="Detection models: the detection explained: its id from "
                                     "/predict, or a box x0,y0,x1,y1 in original pixels with target = its label "
                                     "(matched by IoU >= 0.5); target alone: that class's most confident detection. "
                                     "Default: the top_k most confident detections.")
    box_regression: Bool = Field(False, description="Detection models: explain the detection's score plus its box's "
                                                    "IoU with the explained box (where the box is, not only what).")

    @field_validator("detection")
    @classmethod
    def _detection_length(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, str) and not (0 < len(v) <= 200):
            raise ValueError("a detection is an id or a box of 1 to 200 characters")
        return v


class ExplainOptions(ImageOptions, DetectionOptions):
    """Options of ``/explain/{method}``; the method's own parameters (see ``GET /methods``) are accepted too."""

    layer: str | None = Field(None, max_length=200, description="Target layer for CAM methods (default: the model's).")
    outputs: list[Output] = Field(default_factory=lambda: ["heatmap"], max_length=7,
                                  description="Any of heatmap (grey PNG), overlay (colour PNG over the image), "
                                              "raw (float32); for DICOM inputs dicom-pm (Parametric Map), "
                                              "dicom-seg (Segmentation of the thresholded map), dicom-sc "
                                              "(overlay as Secondary Capture), base64 Part 10 in `dicom`; "
                                              "for volumes nifti (the map as .nii.gz, the source's affine).")
    threshold: Number | None = Field(None, gt=0, le=1, description="dicom-seg: fraction of the map's maximum "
                                     "(default: as /localize, the model's calibrated value, else 0.15).")
    segmentation_type: Literal["binary", "fractional"] = Field("binary", description="dicom-seg: BINARY (the "
                                                               "thresholded map) or FRACTIONAL (the map in [0, 1]).")
    colormap: str = Field("jet", max_length=64, description="Matplotlib colour map of the overlay.")
    alpha: Number = Field(0.5, ge=0, le=1, description="Overlay opacity of the heatmap.")
    axis: Literal["axial", "coronal", "sagittal"] = Field(
        "axial", description="Volumes: the axis of the heatmap's slices (axial: along the slice normal).")
    slice: Int | None = Field(None, ge=0, le=100_000, description="Volumes: draw this one slice (0-based along "
                              "axis) instead of a montage of the most relevant ones.")
    region: str | None = Field(None, max_length=4_000_000, description=REGION_DESCRIPTION)

    @field_validator("outputs", mode="before")
    @classmethod
    def _outputs_list(cls, v: Any) -> Any:
        return comma_list(v)

    @field_validator("outputs")
    @classmethod
    def _outputs_unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("ask for at least one of heatmap, overlay, raw, dicom-pm, dicom-seg, dicom-sc, nifti")
        return list(dict.fromkeys(v))


class RawMap(BaseModel):
    dtype: Literal["float32"]
    shape: Annotated[list[int], Field(min_length=2, max_length=3)] = Field(
        description="[height, width] of the map at its native resolution ([depth, height, width] for volumes).")
    data: str = Field(description="Base64 of the little-endian float32 values, row-major.")


class ExplainedDetection(BaseModel):
    id: int = Field(description="The detection's id in the model's detections of this image (as /predict numbers "
                                "them).")
    box: Box


class Explanation(BaseModel):
    index: int
    label: str
    score: float = Field(description="The class's probability (softmax or sigmoid); a detection's score.")
    detection: ExplainedDetection | None = Field(None, description="Detection models: the detection explained.")
    heatmap: str | None = Field(None, description="8-bit grey PNG (base64) at the original image size; "
                                                  "255 = the map's max.")
    overlay: str | None = Field(None, description="RGB PNG (base64): colour-mapped heatmap blended over the image.")
    raw: RawMap | None = None
    nifti: str | None = Field(None, description="Volumes with outputs=nifti: the map on the source's voxel grid as "
                                                "a gzipped NIfTI-1 file (base64) with the source's affine.")
    slices: list[int] | None = Field(None, description="Volumes: the slices (along axis) the heatmap PNG shows, "
                                                       "left to right, top to bottom.")
    dicom: dict[str, str] | None = Field(None, description="DICOM results by kind (pm, seg, sc): base64 Part 10. "
                                         "They carry the source's patient and study; nothing else here does.")
    empty: bool = Field(description="True when the map has no positive value "
                                    "(an all-black heatmap, reported honestly).")
    nonfinite: bool = Field(description="True when the map held NaN/inf values (rendered as 0).")
    min: float = Field(description="Smallest finite value of the raw map.")
    max: float = Field(description="Largest finite value of the raw map.")


class ExplainResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    method: str
    layer: str | None = Field(description="The layer explained (CAM methods), else null (always present).")
    image: ImageInfo
    explanations: list[Explanation]


class LocalizeOptions(ImageOptions, DetectionOptions):
    """Options of ``/localize``; the chosen method's own parameters are accepted too."""

    method: str | None = Field(None, max_length=64, description="Heatmap method (default: the model's, else gradcam).")
    layer: str | None = Field(None, max_length=200, description="Target layer for CAM methods.")
    threshold: Number | None = Field(None, gt=0, le=1, description="Fraction of the map's maximum (default: the "
                                     "model's calibrated value, else 0.15).")
    all_components: Bool = Field(False, description="Box every connected component instead of the largest.")
    min_area: Int = Field(0, ge=0, le=10**9, description="With all_components: smallest component kept, in pixels "
                                                         "(segmentation models: also of the mask_boxes).")
    region: str | None = Field(None, max_length=4_000_000, description=REGION_DESCRIPTION)
    outputs: list[Literal["dicom-sr"]] = Field(default_factory=list, max_length=1,
                                               description="dicom-sr (DICOM inputs): the boxes as a TID 1500 "
                                                           "Measurement Report, base64 Part 10 in `dicom.sr`.")

    @field_validator("outputs", mode="before")
    @classmethod
    def _outputs_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [part.strip() for part in v.split(",") if part.strip()]
        return v


class LocalizedBox(BaseModel):
    index: int
    label: str
    score: float
    box: Quad = Field(description="[x0, y0, x1, y1] in original-image pixels, x1/y1 exclusive.")
    area: int = Field(description="Pixels of the connected component.")
    detection: ExplainedDetection | None = Field(None, description="Detection models: the detection explained "
                                                 "(the model's own box beside the explanation's).")
    box3d: Annotated[list[int], Field(min_length=6, max_length=6)] | None = Field(
        None, description="Volumes: [x0, y0, z0, x1, y1, z1] in voxels of the source (z: slice index after "
                          "sorting; x1/y1/z1 exclusive); box is its [x0, y0, x1, y1].")
    box_mm: Annotated[list[float], Field(min_length=6, max_length=6)] | None = Field(
        None, description="Volumes: the same box in patient millimetres (DICOM LPS): [x0, y0, z0, x1, y1, z1] of "
                          "the voxel-edge corners.")


class MaskBox(BaseModel):
    """A connected component of a segmentation model's own predicted mask of an explained class."""

    index: int
    label: str
    box: Quad = Field(description="[x0, y0, x1, y1] in original-image pixels, x1/y1 exclusive.")
    area: int = Field(description="Pixels of the component (of the mask at the original size).")
    mean_probability: float = Field(description="The class's mean probability over the component's pixels.")


class LocalizeResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    method: str
    layer: str | None
    threshold: float
    image: ImageInfo
    boxes: list[LocalizedBox] = Field(description="Boxes of the explanation maps (thresholded heatmaps).")
    mask_boxes: list[MaskBox] | None = Field(
        None, description="Segmentation models only: per explained class, every connected component (8-connected, "
                          "at least min_area pixels, largest first) of the model's predicted mask at the original "
                          "size — the mask /predict returns — beside the explanation's boxes.")
    dicom: dict[str, str] | None = Field(None, description="With outputs dicom-sr: {\"sr\": base64 Part 10}; it "
                                         "carries the source's patient and study, nothing else here does.")


# ---------------------------------------------------------------------------------------------------- DICOMweb

#: A DICOM UID as the PACS requests take it: dot-separated components of ASCII digits (at most 64 characters).
DICOM_UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


class DicomwebReference(BaseModel):
    """The PACS instance of a ``/dicomweb/*`` request, and whether its DICOM results go back; the endpoint's usual
    options are members of the same JSON object."""

    study: str = Field(pattern=DICOM_UID_PATTERN, max_length=64, description="Study Instance UID.")
    series: str = Field(pattern=DICOM_UID_PATTERN, max_length=64, description="Series Instance UID.")
    instance: str | None = Field(None, pattern=DICOM_UID_PATTERN, max_length=64,
                                 description="SOP Instance UID; left out for a volume model, the whole series.")
    store: bool = Field(False, description="Write the DICOM results (the dicom-* outputs) back to the PACS by "
                                           "STOW-RS; they land in the source's study.")


_STORED_DESCRIPTION = ("SOP Instance UIDs of the DICOM results the PACS accepted (STOW-RS), in the order of the "
                       "body's objects; empty without store or without dicom-* outputs.")


class DicomwebExplainResponse(ExplainResponse):
    stored: list[str] = Field(description=_STORED_DESCRIPTION)


class DicomwebLocalizeResponse(LocalizeResponse):
    stored: list[str] = Field(description=_STORED_DESCRIPTION)


def dicomweb_request_body(endpoint: str) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of a ``/dicomweb/*`` endpoint: one JSON object, the reference and the options of
    ``endpoint``. The options are named, not typed, here: they are validated exactly as that endpoint's (the same
    leniencies: a lone target, comma-separated outputs, numbers as text), which its own request body documents."""
    schema = {"type": "object", "required": ["study", "series"],
              "properties": DicomwebReference.model_json_schema()["properties"], "additionalProperties": True,
              "description": f"The instance, store, and the options of {endpoint} (model, target, top_k, outputs, "
                             f"...; see its request body) as further members."}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class MethodParam(BaseModel):
    type: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: list[Any] | None = None
    description: str | None = None


class MethodInfo(BaseModel):
    name: str
    family: Literal["cam", "gradient", "perturbation", "attention", "mil"]
    description: str
    params: dict[str, MethodParam]
    uses_layer: bool
    output: Literal["layer", "input"] = Field(description="Resolution of the raw map: the layer's (CAM and "
                                                          "attention methods: the patch grid for transformers) or "
                                                          "the model input's.")
    signed: bool
    sanity: str | None = None
    caveats: list[str] = Field(default_factory=list, description="What holds wherever the method applies.")
    tasks: list[Task] | None = Field(None, description="The model tasks the method is made for (null: all).")


class MethodList(BaseModel):
    methods: list[MethodInfo]


class Prediction(BaseModel):
    index: int
    label: str
    score: float = Field(description="Softmax probability (multiclass) or sigmoid probability (multilabel); for "
                                     "segmentation the class's mean probability over all pixels.")
    pixel_fraction: float | None = Field(None, description="Segmentation: fraction of pixels predicted as the class.")
    mean_probability: float | None = Field(None, description="Segmentation: the class's mean probability over the "
                                                             "pixels predicted as it (0 when there are none).")
    mask: str | None = Field(None, description="Segmentation: binary PNG (base64, 255 = the class) at the original "
                                               "size.")
    id: int | None = Field(None, description="Detection: the detection's id (its rank by score), for /explain's "
                                             "detection.")
    box: Box | None = Field(None, description="Detection: [x0, y0, x1, y1] in original pixels.")


class PredictResponse(BaseModel):
    model: str
    task: Task
    image: ImageInfo
    predictions: list[Prediction]
    labelmap: str | None = Field(None, description="Segmentation with outputs=labelmap: 8-bit PNG (base64) of the "
                                                   "predicted class index per pixel, original size.")

    model_config = ConfigDict(protected_namespaces=())


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    task: Task
    num_classes: int
    score_threshold: float | None = Field(None, description="Detection: the least score of a reported detection.")
    patch_size: int | None = Field(None, description="mil: the side of a patch, in pixels of the native image.")
    stride: int | None = Field(None, description="mil: pixels between two patches.")
    max_patches: int | None = Field(None, description="mil: the most patches one image may make (else 413).")
    input_size: Annotated[list[int], Field(min_length=2, max_length=3)] = Field(
        description="[height, width] the image is resized to ([depth, height, width] for volume models).")
    spatial_dims: int = Field(2, description="3 for volume models (DICOM series, NIfTI).")
    keep_aspect: bool = Field(False, description="Volume models: the volume keeps its physical proportions inside "
                                                 "input_size, centred and padded, so a raw map covers the padding "
                                                 "too (cut it off before resampling onto the volume).")
    channels: int
    device: str
    target_layer: str | None = Field(description="Default CAM layer; null for TorchScript models (no hooks).")
    target_layer_reason: str | None = Field(None, description="Why this layer (the rule that chose it, or the "
                                                              "registry entry).")
    methods: list[str] = Field(description="The methods that apply to this model (the applicability probe's).")
    default: bool


class LayerChoice(BaseModel):
    name: str
    layout: Literal["nchw", "nhwc", "tokens", "ncdhw"] = Field(
        description="nchw: a conv map; nhwc: channels-last (Swin); tokens: [B, prefix + h*w, C] (transformers); "
                    "ncdhw: a volume's map [B, C, d, h, w].")
    grid: Annotated[list[int], Field(min_length=2, max_length=3)] = Field(
        description="[height, width] of the map (the patch grid for tokens; [depth, height, width] for volumes).")
    channels: int
    prefix: int = Field(0, description="Tokens: leading non-patch tokens (class, distillation, registers).")


class MethodTrustInfo(BaseModel):
    """Whether a method can be trusted on this model: measured on the model's own data (``xaas evaluate``, written
    into the registry entry's ``method_trust``) or, until then, the demo model's sanity result."""

    source: Literal["measured", "demo"]
    passes: bool = Field(description="No flag: passes every rule (measured) or the demo's sanity check (demo).")
    flags: list[str] = Field(default_factory=list, description="The rules it breaks, with the numbers.")
    measured: MethodTrust | None = Field(None, description="The measured numbers (source: measured).")


class ModelDetail(ModelInfo):
    labels: list[str]
    layers: list[LayerChoice] = Field(default_factory=list,
                                      description="The layers a request may name (execution order).")
    refused: dict[str, str] = Field(default_factory=dict,
                                    description="Methods that do not apply to this model, each with the reason.")
    caveats: dict[str, list[str]] = Field(default_factory=dict,
                                          description="What holds for an applicable method on this model.")
    trust: dict[str, MethodTrustInfo] = Field(
        default_factory=dict, description="Per applicable method: measured flags after `xaas evaluate`, else the "
                                          "demo model's sanity result.")


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed", "shutting-down"]
    models: dict[str, str] = Field(description="Per model: loaded | loading | failed.")
    detail: str | None = None


class FieldProblem(BaseModel):
    """One field-level problem (the only shape of ``errors`` items)."""

    field: str = Field(description="The option at fault (dotted for nested members).")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


_PROBLEM_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request: unknown option, wrong type, repeated field, broken body",
    401: "Missing or wrong API key (when the service requires one)",
    404: "Unknown model, method or job",
    408: "The request body did not arrive in time",
    409: "The job is not done yet",
    413: "Body or image too large",
    415: "Unsupported media type",
    422: "Undecodable image or invalid option value",
    429: "Queue full (see Retry-After)",
    502: "The PACS could not be reached or answered with an error",
    503: "Not ready or shutting down (see Retry-After)",
    504: "Deadline exceeded (or the PACS did not answer in time)",
}

#: What every image endpoint can answer besides 200.
IMAGE_PROBLEMS = (400, 401, 404, 408, 413, 415, 422, 429, 503, 504)


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, each an ``application/problem+json`` Problem."""
    return {code: {"model": Problem, "description": _PROBLEM_DESCRIPTIONS[code],
                   "content": {"application/problem+json": {}}} for code in codes}


def image_request_body(options_model: type[BaseModel], *, prefer: bool = False) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for an image endpoint: multipart upload or JSON with base64 ``image`` (and, with
    ``prefer``, the ``Prefer: respond-async`` header parameter)."""
    schema = options_model.model_json_schema()
    props = schema.get("properties", {})
    multipart_props = {"image": {"type": "string", "format": "binary", "description": "The image file."}}
    for name, prop in props.items():
        multipart_props[name] = prop
    json_props = {"image": {"type": "string", "contentEncoding": "base64",
                            "description": "Base64 of the image file bytes."}}
    json_props.update(props)
    extra: dict[str, Any] = {}
    if prefer:
        extra["parameters"] = [{"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
                                "description": "respond-async: answer 202 with a job (Location: /jobs/{id}) instead "
                                               "of waiting for the result (RFC 7240)."}]
    return {
        **extra,
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                                   "properties": multipart_props}},
                "application/json": {"schema": {"type": "object", "required": ["image"], "properties": json_props,
                                                "additionalProperties": False}},
            },
        }
    }


# ---------------------------------------------------------------------------------------- feature visualisation


class ActivationOptions(RequestOptions):
    """Options of ``POST /activations``."""

    model: str | None = Field(None, description="Registry name; the default model when absent.", max_length=64)
    layer: str | None = Field(None, max_length=200,
                              description="Layer with a spatial output (default: the model's target layer).")
    top: Int = Field(16, ge=1, le=64, description="Channels shown in the grid: the highest by mean activation.")
    channel: Int | None = Field(None, ge=0, le=1_000_000,
                                description="Return this one channel at native resolution instead of the grid.")
    frame: Int | None = Field(None, ge=0, le=100_000, description="Frame of a multi-frame DICOM/GIF/TIFF (0-based).")
    timeout: Number | None = Field(None, ge=1, le=3600, description=TIMEOUT_DESCRIPTION)


class ChannelStats(BaseModel):
    index: int
    mean: float
    max: float
    fraction_positive: float = Field(description="Share of the channel's cells with a value > 0.")


class GridInfo(BaseModel):
    rows: int
    cols: int
    tile: Pair = Field(description="[height, width] of one tile in the PNG (pixels).")
    scale: int = Field(description="Integer nearest-neighbour enlargement of each map or kernel.")
    pad: int = Field(description="Black pixels between tiles.")


class ActivationResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    layer: str
    shape: Triple = Field(description="[channels, height, width] of the layer's activation.")
    image: ImageInfo
    channels: list[ChannelStats] = Field(description="The grid's channels (highest mean first), "
                                                     "or the one channel asked for.")
    grid: str | None = Field(None,
                             description="8-bit grey PNG (base64): one tile per channel, each min-max normalised.")
    grid_info: GridInfo | None = None
    channel: str | None = Field(None, description="8-bit grey PNG (base64) of the requested channel "
                                                  "at native resolution.")


class FilterResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    layer: str
    count: int = Field(description="Number of filters (output channels), one tile each, row-major.")
    in_channels: int
    kernel_size: Pair = Field(description="[height, width] of the kernels.")
    mode: Literal["rgb", "grey-mean"] = Field(description="rgb when in_channels == 3, "
                                                          "else the mean over input channels.")
    grid: str = Field(description="PNG (base64): each filter min-max normalised on its own.")
    grid_info: GridInfo
    conv_layers: list[str]


class ClassImpressionRequest(RequestOptions):
    """Body of ``POST /models/{name}/class-impressions``."""

    target: Target = Field(description="Class index or label.")
    steps: Int = Field(200, ge=1, le=100_000, description="Optimisation steps (at most XAAS_JOB_MAX_STEPS).")
    lr: Number = Field(0.05, gt=0, le=1.0, description="Adam learning rate on the normalised input.")
    tv_weight: Number = Field(2.0, ge=0, le=100, description="Weight of the total-variation prior.")
    l2_weight: Number = Field(0.0, ge=0, le=100, description="Weight of the L2 decay of the input.")
    jitter: Int = Field(8, ge=0, le=64, description="Random shift per step, pixels.")
    rotation: Number = Field(10.0, ge=0, le=180, description="Random rotation per step, up to ± degrees.")
    scale: Annotated[list[Number], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [0.9, 1.1], description="Random scale range per step [min, max] within 0.25..4.")
    seed: Int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("target")
    @classmethod
    def _label_length(cls, v: int | str) -> int | str:
        if isinstance(v, str) and not (0 < len(v) <= 200):
            raise ValueError("a target label must have 1 to 200 characters")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: list[float]) -> list[float]:
        if not (0.25 <= v[0] <= v[1] <= 4.0):
            raise ValueError("scale must be [min, max] with 0.25 <= min <= max <= 4")
        return v


class JobProgress(BaseModel):
    done: int = Field(description="Units of work done (masked forwards, masks, windows, steps...).")
    total: int = Field(description="Units of work in all (0 while the job has not started and cannot know yet).")
    unit: str = Field(description="What is counted.")
    step: int = Field(description="Same as done (the first job API's name).")
    steps: int = Field(description="Same as total (the first job API's name).")


class AuditOptions(RequestOptions):
    """Options of ``POST /audit`` (form fields beside the ``archive`` file, or JSON members beside its base64)."""

    model: str | None = Field(None, description="Registry name; the default model when absent.", max_length=64)
    method: str = Field("gradcam", max_length=64, description="Explanation method (see GET /methods).")
    layer: str | None = Field(None, max_length=200, description="Layer for CAM methods (default: the model's).")
    boxless: Bool = Field(False, description="Ignore the boxes (automatic when labels.json lists objects without "
                                             "boxes).")
    limit: Int | None = Field(None, ge=1, le=100_000, description="Audit only the first N images of labels.json.")
    border: Number = Field(0.1, gt=0, lt=0.5, description="Border band width as a fraction of the side.")
    examples: Int = Field(3, ge=0, le=20, description="Example images per class in the report.")


class JobAccepted(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]


class ClassImpressionResult(BaseModel):
    image: str = Field(description="RGB (or grey) PNG (base64) at the model's input size.")


class JobStatus(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    kind: Literal["explanation", "localization", "class-impression", "audit"]
    model: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: JobProgress
    method: str | None = Field(None, description="Explanation jobs: the method.")
    target: int | None = Field(None, description="Class-impression jobs: the class.")
    label: str | None = None
    probability: float | None = Field(None, description="Class impressions: the class's probability on the current "
                                                        "image.")
    result: ExplainResponse | LocalizeResponse | ClassImpressionResult | AuditReport | None = Field(
        None, description="When done: exactly the body the synchronous call returns (for class impressions, the "
                          "image; for audits, the report).")
    error: str | None = Field(None, description="When failed: why.")


ASYNC_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": JobAccepted,
          "description": "With Prefer: respond-async: the job was queued; poll its Location (GET /jobs/{id}) for "
                         "progress and, when done, the result",
          "headers": {"Location": {"description": "/jobs/{id}", "schema": {"type": "string"}},
                      "Preference-Applied": {"description": "respond-async", "schema": {"type": "string"}}}},
}


class DisplayOptions(RequestOptions):
    frame: Int | None = Field(None, ge=0, le=100_000, description="Frame of a multi-frame DICOM/GIF/TIFF (0-based).")
    volume: Bool = Field(False, description="Read one multi-frame DICOM file as a volume (enhanced functional groups "
                                            "needed), as a volume model does; several files, a zip and NIfTI are "
                                            "always volumes.")


class DisplayWindow(BaseModel):
    center: float
    width: float = Field(gt=0)


class DisplayResponse(BaseModel):
    """An image decoded by the service for a viewer (the review page): browsers cannot read DICOM."""

    format: str = Field(description="The decoded format (DICOM, PNG, ...).")
    image: ImageInfo
    frames: int = Field(description="Frames in the file.")
    kind: Literal["grey", "rgb", "volume"] = Field(
        description="grey: Modality-LUT values to window in the viewer (values, windows, range, invert); rgb: an "
                    "8-bit PNG shown as is (png), exactly the pixels the model sees; volume (a DICOM series, a zip, "
                    "NIfTI, or with volume=true an enhanced multi-frame DICOM file): the volume's values (rescaled, "
                    "e.g. Hounsfield units) resampled trilinearly onto the display grid (values [D, H, W], spacing), "
                    "with windows, range and invert as for grey; image gives the source's size and spacing.")
    values: RawMap | None = Field(None, description="grey: the values after the Modality LUT (e.g. Hounsfield units). "
                                                    "volume: [D, H, W] on the display grid, slice 0 first along the "
                                                    "slice normal (the order /localize's box3d z counts in).")
    spacing: list[float] | None = Field(
        None, description="volume: voxel size of the display grid in mm, [slice, row, column]. The display grid "
                          "covers the source's box with (near) cubic voxels as fine as the source's finest spacing, "
                          "coarser where needed to keep each side <= 256 and all of it <= 2^21 voxels; display "
                          "voxel k spans source voxels k * source / display .. (k + 1) * source / display per axis.")
    windows: list[DisplayWindow] | None = Field(
        None, description="grey: the file's windows, the first being the one applied for the model; empty when the "
                          "file has none (the model then sees the value range).")
    range: list[float] | None = Field(None, description="grey, volume: [min, max] of the (source's) values.")
    invert: bool | None = Field(None, description="grey: MONOCHROME1 (high values shown dark).")
    png: str | None = Field(None, description="rgb: base64 PNG of the decoded pixels.")


class PacsStudy(BaseModel):
    study: str
    date: str | None = None
    time: str | None = None
    description: str | None = None
    modalities: list[str] = Field(default_factory=list)
    series_count: int | None = None
    instance_count: int | None = None


class PacsSeries(BaseModel):
    series: str
    modality: str | None = None
    number: int | None = None
    description: str | None = None
    instance_count: int | None = None


class PacsInstance(BaseModel):
    instance: str
    sop_class: str | None = None
    number: int | None = None
    frames: int | None = None
    rows: int | None = None
    columns: int | None = None


class PacsStudies(BaseModel):
    """QIDO-RS matches reduced to UIDs, dates, descriptions and counts: no patient attribute."""

    studies: list[PacsStudy]


class PacsSeriesList(BaseModel):
    series: list[PacsSeries]


class PacsInstances(BaseModel):
    instances: list[PacsInstance]
