"""Open Inference Protocol v2 (KServe / Triton "predict protocol, version 2") REST messages.

The shapes follow the published specification (https://kserve.github.io/website/docs/concepts/architecture/
data-plane/v2-protocol): tensors carry ``name``, ``shape``, ``datatype`` and row-major ``data``; every message may
carry free-form ``parameters``. Kept apart from :mod:`service.api.schemas` because they are someone else's contract.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: OIP parameter values are booleans, numbers or strings; typed loosely here because schema fuzzers cannot
#: mutate a union of every primitive type — the handler validates each value it reads.
Parameters = dict[str, Any]


class OipTensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a variable dimension")


class OipServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OipModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="The weights digest (12 hex digits): the model's only version.")
    platform: str
    inputs: list[OipTensorSpec]
    outputs: list[OipTensorSpec]
    parameters: dict[str, Any] = Field(default_factory=dict)


class OipInputTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    shape: list[int] = Field(max_length=8)
    datatype: str = Field(max_length=16)
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description="Row-major, flat or nested. BYTES: base64 strings of encoded "
                                   "images. Absent when the tensor travels as binary data (parameters."
                                   "binary_data_size, the binary tensor extension).")


class OipRequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    parameters: Parameters | None = None


class OipInferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256)
    parameters: Parameters | None = Field(None, description="xaas extension: 'explain' (a method), 'target', "
                                                            "'layer' and the method's own parameters.")
    inputs: list[OipInputTensor] = Field(min_length=1)
    outputs: list[OipRequestedOutput] | None = None


class OipOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[float] | list[int]


class OipInferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[OipOutputTensor]
