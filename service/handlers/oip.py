"""Open Inference Protocol v2: model metadata and ``infer`` over the same registry, batchers and engine.

An ``infer`` request carries one input tensor, either

* ``BYTES`` ``[N]`` (or ``[N, 1]``): each element the base64 of an encoded image file (PNG, JPEG, DICOM ... as
  ``/predict`` takes), decoded and preprocessed per the model's entry; or
* ``FP32`` ``[N, C, H, W]``: model inputs already preprocessed (resized, normalised), matching the entry's channels
  and ``input_size``.

Outputs: ``probabilities`` ``FP32 [N, K]`` (softmax or sigmoid per the task; segmentation models: ``[N, K, H, W]``
per pixel, and parameter ``region``: ``predicted`` or ``all``); detection models answer ``detections`` ``FP32 [N,
max_detections, 6]`` instead (``x0, y0, x1, y1`` in model-input pixels, score, label; best first, padded with label
-1), and parameter ``detection`` names the explained one by its row (default 0). The xaas extension: request
parameter ``explain`` names a method (with ``target``, ``layer`` and the method's own parameters beside it); the
answer then also holds ``heatmap`` ``FP32 [N, h, w]`` — the raw, un-normalised map at its native resolution (the
layer's grid for CAM methods, the model input's otherwise) — and ``explained_class`` ``INT64 [N]``. Without a
``target`` each image's most probable class is explained. ``outputs`` in the request selects among them; asking only
for ``heatmap`` (and ``explained_class``) skips the prediction pass, whose scores come from the explanation's own
forward.

Every image goes through the model's batcher, so an OIP request batches with ``/predict`` and ``/explain`` traffic.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..api.schemas_oip import (
    OipInferRequest,
    OipInferResponse,
    OipInputTensor,
    OipModelMetadata,
    OipOutputTensor,
    OipServerMetadata,
    OipTensorSpec,
)
from ..engine import get_method, validate_params
from ..engine.detection import Detection
from ..engine.targets import Region
from ..errors import BadOption, FieldError, InvalidOption, ModelNotReady
from ..registry import LoadedModel
from ..runtime import Runtime
from . import CallInfo

__all__ = ["MAX_INFER_IMAGES", "infer", "model_metadata", "model_ready", "server_metadata"]

#: Images in one infer request (each is one row of the model's batches).
MAX_INFER_IMAGES = 64
_OUTPUTS = ("probabilities", "heatmap", "explained_class")
_DETECTION_OUTPUTS = ("detections", "heatmap", "explained_class")


def _outputs(model: LoadedModel) -> tuple[str, ...]:
    return _DETECTION_OUTPUTS if model.task == "detection" else _OUTPUTS
_EXTENSION = ("explain", "target", "layer")


def server_metadata() -> OipServerMetadata:
    return OipServerMetadata(name="xaas", version=__version__, extensions=["xaas-explain"])


def _version(model: LoadedModel) -> str:
    return model.weights_digest[:12]


def model_metadata(runtime: Runtime, name: str) -> OipModelMetadata:
    model = runtime.registry.get(name)
    c, size = model.spec.channels, list(model.spec.input_size)
    return OipModelMetadata(
        name=model.name, versions=[_version(model)], platform="pytorch",
        inputs=[OipTensorSpec(name="image", datatype="BYTES", shape=[-1]),
                OipTensorSpec(name="input", datatype="FP32", shape=[-1, c, *size])],
        outputs=[OipTensorSpec(name="detections", datatype="FP32", shape=[-1, model.spec.max_detections, 6])
                 if model.task == "detection" else
                 OipTensorSpec(name="probabilities", datatype="FP32", shape=[-1, model.num_classes]),
                 OipTensorSpec(name="heatmap", datatype="FP32", shape=[-1, -1, -1]),
                 OipTensorSpec(name="explained_class", datatype="INT64", shape=[-1])],
        parameters={"task": model.task, "labels": model.labels, "methods": model.capabilities.usable_methods},
    )


def model_ready(runtime: Runtime, name: str) -> None:
    """Returns when the model serves; ``ModelNotReady`` (503) while it loads, ``UnknownModel`` (404)."""
    model = runtime.registry.get(name)
    if runtime.shutting_down or model.name not in runtime.batchers:
        raise ModelNotReady(model.name)


async def infer(runtime: Runtime, name: str, request: OipInferRequest, call: CallInfo, *,
                binary: bytes = b"") -> OipInferResponse:
    """Answer one infer request; ``binary``: the bytes after the JSON header (binary tensor extension)."""
    model = runtime.model(name)
    call.model = model.name
    params = dict(request.parameters or {})
    for key, value in params.items():
        if not isinstance(value, (bool, int, float, str)):
            raise BadOption(f"parameter {key[:64]!r} must be a boolean, number or string",
                            errors=[FieldError(f"parameters.{key[:64]}", "not a boolean, number or string")])
    # the binary tensor extension's ask for binary outputs: answered in JSON, which its clients read as well
    params.pop("binary_data_output", None)
    method = params.pop("explain", None)
    target, layer = params.pop("target", None), params.pop("layer", None)
    region = _region(model, params.pop("region", None))
    detection = _detection(model, params.pop("detection", None))
    layer = str(layer) if layer is not None else None
    if isinstance(target, (bool, float)):
        raise BadOption("parameter 'target' is a class index or label", errors=[FieldError("parameters.target",
                                                                                     "index or label")])
    wanted = _wanted_outputs(request, _outputs(model), explaining=method is not None)
    explainer = None
    if method is not None:
        explainer = get_method(str(method))
        call.method = explainer.name
        method_params = validate_params(explainer, params)
        model.capabilities.check_method(model.name, explainer.name, layer=layer)
        if layer is not None:
            model.capabilities.check_layer(model.name, layer)
        targets = runtime.resolve_targets(model, [target]) if target is not None else []
    elif params:
        raise BadOption(f"unknown parameters {', '.join(sorted(params))}; without 'explain' only the OIP "
                        "members are read", errors=[FieldError("parameters", "unknown parameter")])
    if len(request.inputs) != 1:
        raise BadOption(f"expected one input tensor (BYTES images or FP32 [N, C, H, W]), got {len(request.inputs)}",
                        errors=[FieldError("inputs", "exactly one input")])
    tensors = await _model_inputs(runtime, model, request.inputs[0], _binary_of(request.inputs[0], binary))
    call.rows = len(tensors)
    timeout = runtime.timeout(None)
    outputs: list[OipOutputTensor] = []
    first = _outputs(model)[0]
    if first in wanted:
        results = await asyncio.gather(*(runtime.predict(model, t, timeout=timeout) for t in tensors))
        probs = torch.stack([r.probabilities for r in results]).float()
        outputs.append(_tensor(first, probs.numpy(), "FP32"))
    if explainer is not None and wanted & {"heatmap", "explained_class"}:
        explained = await asyncio.gather(*(
            runtime.explain(model, t, method=explainer.name, params=method_params, layer=layer, targets=targets,
                            top_k=1, timeout=timeout, region=region, detection=detection) for t in tensors))
        if any(not rows for rows in explained):
            raise InvalidOption("the model found nothing to explain in an input (no detection)",
                                errors=[FieldError("inputs.0", "no detection")])
        maps = [rows[0] for rows in explained]
        if "heatmap" in wanted:
            outputs.append(_tensor("heatmap", np.stack([m.heatmap for m in maps]).astype(np.float32), "FP32"))
        if "explained_class" in wanted:
            outputs.append(_tensor("explained_class", np.array([m.index for m in maps], dtype=np.int64), "INT64"))
    return OipInferResponse(model_name=model.name, model_version=_version(model), id=request.id, outputs=outputs)


def _region(model: LoadedModel, kind: Any) -> Region | None:
    """Segmentation models explain a class over a region: ``predicted`` (default) or ``all`` (boxes and masks need
    the original image size, which preprocessed inputs do not have: use ``/explain`` for them)."""
    if model.task != "segmentation":
        if kind is not None:
            raise InvalidOption("parameter 'region' applies to segmentation models only",
                                errors=[FieldError("parameters.region", "not a segmentation model")])
        return None
    if kind not in (None, "predicted", "all"):
        raise InvalidOption("parameter 'region' is 'predicted' or 'all' here (boxes and masks: POST /explain)",
                            errors=[FieldError("parameters.region", "predicted or all")])
    return Region(kind or "predicted")


def _detection(model: LoadedModel, value: Any) -> Detection | None:
    """Detection models explain one detection, by its row in ``detections`` (default: row 0, the best)."""
    if model.task != "detection":
        if value is not None:
            raise InvalidOption("parameter 'detection' applies to detection models only",
                                errors=[FieldError("parameters.detection", "not a detection model")])
        return None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadOption("parameter 'detection' is a row of 'detections' (an integer >= 0)",
                        errors=[FieldError("parameters.detection", "not a detection row")])
    return Detection(value)


def _wanted_outputs(request: OipInferRequest, names: tuple[str, ...], *, explaining: bool) -> set[str]:
    offered = names if explaining else names[:1]
    if not request.outputs:
        return set(offered)
    names = {o.name for o in request.outputs}
    unknown = names - set(offered)
    if unknown:
        hint = "" if explaining else " (heatmap and explained_class need parameters.explain)"
        raise BadOption(f"unknown output {', '.join(sorted(unknown))}; this request offers {', '.join(offered)}{hint}",
                        errors=[FieldError("outputs", "unknown output")])
    return names


def _tensor(name: str, array: np.ndarray, datatype: str) -> OipOutputTensor:
    return OipOutputTensor(name=name, shape=list(array.shape), datatype=datatype, data=array.ravel().tolist())


def _binary_of(tensor: OipInputTensor, binary: bytes) -> bytes | None:
    """The input's bytes in the binary area (``parameters.binary_data_size``), else None (JSON ``data``)."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        if tensor.data is None:
            raise BadOption("input 'data' is missing (and no parameters.binary_data_size)",
                            errors=[FieldError("inputs.0.data", "missing")])
        return None
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary):
        raise BadOption(f"parameters.binary_data_size must be 0..{len(binary)} (the bytes after the JSON header)",
                        errors=[FieldError("inputs.0.parameters.binary_data_size", "invalid size")])
    return binary[:size]


async def _model_inputs(runtime: Runtime, model: LoadedModel, tensor: OipInputTensor,
                        raw: bytes | None) -> list[torch.Tensor]:
    if tensor.datatype == "BYTES":
        blobs = _images(tensor, raw)
        decoded = await asyncio.gather(*(runtime.load_image(model, blob) for blob in blobs))
        return [t for _, t in decoded]
    if tensor.datatype == "FP32":
        return _preprocessed(model, tensor, raw)
    raise BadOption(f"input datatype {tensor.datatype!r} is not accepted: BYTES (encoded images) or FP32 "
                    "(preprocessed [N, C, H, W])", errors=[FieldError("inputs.0.datatype", "unsupported datatype")])


def _count(shape: Sequence[int], field: str) -> int:
    if not shape or any(d < 0 for d in shape):
        raise BadOption(f"'{field}' must list non-negative dimensions, got {list(shape)}",
                        errors=[FieldError(field, "invalid shape")])
    n = shape[0]
    if not 1 <= n <= MAX_INFER_IMAGES:
        raise InvalidOption(f"{n} images in one request; 1..{MAX_INFER_IMAGES} are accepted",
                            errors=[FieldError(field, f"batch must be 1..{MAX_INFER_IMAGES}")])
    return n


def _images(tensor: OipInputTensor, raw: bytes | None) -> list[bytes]:
    n = _count(tensor.shape, "inputs.0.shape")
    if tensor.shape not in ([n], [n, 1]):
        raise BadOption(f"a BYTES input has shape [N] or [N, 1], got {tensor.shape}",
                        errors=[FieldError("inputs.0.shape", "BYTES shape is [N]")])
    if raw is not None:
        return _length_prefixed(raw, n)
    flat = _flatten(tensor.data or [])
    if len(flat) != n or not all(isinstance(v, str) for v in flat):
        raise BadOption(f"'data' must hold {n} base64 strings (one encoded image each)",
                        errors=[FieldError("inputs.0.data", "expected base64 strings")])
    out = []
    for i, text in enumerate(flat):
        try:
            out.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise BadOption(f"inputs.0.data[{i}] is not valid base64",
                            errors=[FieldError(f"inputs.0.data.{i}", "not base64")]) from None
    return out


def _length_prefixed(raw: bytes, n: int) -> list[bytes]:
    """BYTES in the binary tensor extension: each element a 4-byte little-endian length, then its bytes."""
    out, at = [], 0
    while at < len(raw) and len(out) < n:
        size = int.from_bytes(raw[at:at + 4], "little") if at + 4 <= len(raw) else -1
        if size < 0 or at + 4 + size > len(raw):
            break
        out.append(raw[at + 4:at + 4 + size])
        at += 4 + size
    if len(out) != n or at != len(raw):
        raise BadOption(f"binary BYTES data must be {n} length-prefixed elements filling binary_data_size",
                        errors=[FieldError("inputs.0.parameters.binary_data_size", "malformed BYTES data")])
    return out


def _preprocessed(model: LoadedModel, tensor: OipInputTensor, raw: bytes | None) -> list[torch.Tensor]:
    n = _count(tensor.shape, "inputs.0.shape")
    c, size = model.spec.channels, [int(s) for s in model.spec.input_size]
    shown = ", ".join(str(s) for s in [c, *size])
    if tensor.shape != [n, c, *size]:
        raise InvalidOption(f"model {model.name!r} takes FP32 [N, {shown}], got {tensor.shape}",
                            errors=[FieldError("inputs.0.shape", f"expected [N, {shown}]")])
    needed = math.prod(tensor.shape)
    if raw is not None:
        if len(raw) != 4 * needed:
            raise BadOption(f"binary FP32 data holds {len(raw)} bytes; shape {tensor.shape} needs {4 * needed}",
                            errors=[FieldError("inputs.0.parameters.binary_data_size", "size does not match shape")])
        array = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        flat = _flatten(tensor.data or [])
        if len(flat) != needed:
            raise BadOption(f"'data' holds {len(flat)} values; shape {tensor.shape} needs {needed}",
                            errors=[FieldError("inputs.0.data", "length does not match shape")])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
            raise BadOption("FP32 'data' must hold numbers only", errors=[FieldError("inputs.0.data", "not numbers")])
        array = np.asarray(flat, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InvalidOption("FP32 'data' holds a non-finite value", errors=[FieldError("inputs.0.data", "non-finite")])
    batch = torch.from_numpy(array).reshape(n, c, *size)
    return list(batch.unbind(0))


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major flattening of nested JSON lists (OIP allows both forms)."""
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out
