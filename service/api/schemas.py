"""Pydantic v2 schemas of the HTTP contract (kept apart from engine/registry types)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Target = int | str


class ImageOptions(BaseModel):
    """Options shared by every endpoint that takes an image."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="Registry name; the default model when absent.", max_length=64)
    target: list[Target] = Field(default_factory=list, max_length=100,
                                 description="Class index or label; repeat the field for several targets.")
    top_k: int | None = Field(None, ge=1, le=1000, description="Without target: the k highest-scoring classes.")
    frame: int | None = Field(None, ge=0, le=100_000, description="Frame of a multi-frame DICOM/GIF/TIFF (0-based).")
    timeout: float | None = Field(None, gt=0, le=3600, description="Deadline in seconds (capped by the server's limit).")

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


class PredictOptions(ImageOptions):
    pass


class ImageInfo(BaseModel):
    width: int
    height: int


class Prediction(BaseModel):
    index: int
    label: str
    score: float = Field(description="Softmax probability (multiclass) or sigmoid probability (multilabel).")


class PredictResponse(BaseModel):
    model: str
    task: Literal["multiclass", "multilabel"]
    image: ImageInfo
    predictions: list[Prediction]

    model_config = ConfigDict(protected_namespaces=())


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    task: Literal["multiclass", "multilabel"]
    num_classes: int
    input_size: tuple[int, int] = Field(description="[height, width] the image is resized to.")
    channels: int
    device: str
    target_layer: str
    methods: list[str]
    default: bool


class ModelDetail(ModelInfo):
    labels: list[str]


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed", "shutting-down"]
    models: dict[str, str] = Field(description="Per model: loaded | loading | failed.")
    detail: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": desc, "content": {"application/problem+json": {}}}
    for code, desc in {
        400: "Malformed option",
        404: "Unknown model",
        413: "Body or image too large",
        415: "Unsupported media type",
        422: "Undecodable image or invalid option value",
        429: "Queue full (see Retry-After)",
        503: "Not ready or shutting down (see Retry-After)",
        504: "Deadline exceeded",
    }.items()
}


def image_request_body(options_model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for an image endpoint: multipart upload or JSON with base64 ``image``."""
    schema = options_model.model_json_schema()
    props = schema.get("properties", {})
    multipart_props = {"image": {"type": "string", "format": "binary", "description": "The image file."}}
    for name, prop in props.items():
        multipart_props[name] = prop
    json_props = {"image": {"type": "string", "contentEncoding": "base64", "description": "Base64 of the image file bytes."}}
    json_props.update(props)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": multipart_props}},
                "application/json": {"schema": {"type": "object", "required": ["image"], "properties": json_props,
                                                "additionalProperties": False}},
            },
        }
    }
