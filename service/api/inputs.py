"""Read an image request: ``multipart/form-data`` (file field ``image`` + option fields) or JSON (``image`` base64).

Options arrive as strings (form) or JSON values; they are collected into a plain dict of lists/values and validated
by a pydantic model per endpoint, so both encodings share one set of rules and one set of error messages.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import zipfile
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from ..errors import BadOption, FieldError, InvalidImage, InvalidOption, PayloadTooLarge, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)
MAX_JSON_DEPTH = 8
#: ``image`` files one multipart request may carry: the slices of a DICOM series (volume models).
MAX_SERIES_FILES = 2048


def _list_fields(model: type[BaseModel]) -> set[str]:
    """Fields that accept several values (repeatable form fields)."""
    out = set()
    for name, f in model.model_fields.items():
        if getattr(f.annotation, "__origin__", None) is list or "list[" in str(f.annotation):
            out.add(name)
    return out


async def read_image_request(request: Request, options_model: type[M], *, max_image_bytes: int,
                             extra_names: frozenset[str] | Callable[[dict[str, Any]], frozenset[str]] = frozenset()
                             ) -> tuple[bytes, M, dict[str, Any]]:
    """Body → (image bytes, validated options, extra options). ``extra_names`` are accepted besides the model's
    fields (an explanation method's own parameters) and returned raw for their own validator."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        data, raw = await _read_multipart(request, options_model)
    elif ctype == "application/json" or ctype.endswith("+json"):
        data, raw = await _read_json(request)
    elif not ctype:
        raise UnsupportedMediaType("missing Content-Type: send multipart/form-data (field 'image') or "
                                   "application/json ('image': base64)")
    else:
        raise UnsupportedMediaType(f"Content-Type {ctype!r} is not supported: send multipart/form-data "
                                   "(field 'image') or application/json ('image': base64)")
    if len(data) > max_image_bytes:
        raise PayloadTooLarge(f"image of {len(data)} bytes exceeds the limit of {max_image_bytes} bytes")
    extras_allowed = extra_names(raw) if callable(extra_names) else extra_names
    extras = {k: raw.pop(k) for k in list(raw) if k in extras_allowed and k not in options_model.model_fields}
    return data, parse_options(options_model, raw, extras_allowed), extras


def parse_options(options_model: type[M], raw: dict[str, Any], also_known: frozenset[str] = frozenset()) -> M:
    unknown = sorted(name[:64] for name in set(raw) - set(options_model.model_fields))
    if unknown:
        known = ", ".join(sorted(set(options_model.model_fields) | also_known))
        raise BadOption(f"unknown option(s): {', '.join(unknown)} (known: image, {known})",
                        errors=[FieldError(u, "unknown option") for u in unknown])
    try:
        return options_model.model_validate(raw)
    except ValidationError as exc:
        errors = [FieldError(".".join(str(p) for p in e["loc"]) or "options", e["msg"]) for e in exc.errors()]
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        raise InvalidOption(detail, errors=errors) from None


async def _read_multipart(request: Request, options_model: type[BaseModel]) -> tuple[bytes, dict[str, Any]]:
    try:
        form = await request.form(max_files=MAX_SERIES_FILES, max_fields=64)
    except Exception as exc:
        if exc.__class__.__name__ == "BodyTooLarge":
            raise
        raise BadOption(f"malformed multipart body: {getattr(exc, 'detail', None) or exc}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        image = form.get("image")
        if not isinstance(image, UploadFile):
            if isinstance(image, str):
                raise BadOption("field 'image' must be a file upload (use -F image=@file in curl)")
            raise BadOption("missing file field 'image'")
        images = [v for k, v in form.multi_items() if k == "image" and isinstance(v, UploadFile)]
        if len(files) > len(images):
            raise BadOption("files go in field 'image' (repeat it for the files of a DICOM series)")
        data = await image.read() if len(images) == 1 else await _series_bundle(images)
        lists = _list_fields(options_model)
        raw: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key == "image":
                continue
            if isinstance(value, UploadFile):
                raise BadOption(f"field {key[:64]!r} must be a plain form field, not a file")
            if key in lists:
                raw.setdefault(key, []).append(value)
            elif key in raw:
                raise BadOption(f"option {key[:64]!r} given more than once", errors=[FieldError(key[:64], "repeated")])
            else:
                raw[key] = value
        return data, raw
    finally:
        await form.close()


async def _series_bundle(images: list[UploadFile]) -> bytes:
    """Several ``image`` files (the slices of a DICOM series) as one stored zip, in upload order: the form in which
    the rest of the service takes a series (volume models sort the slices by geometry, not by this order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as bundle:
        for n, part in enumerate(images):
            bundle.writestr(f"{n:05d}.dcm", await part.read())
    return buf.getvalue()


def parse_json_object(body: bytes, *, what: str, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A JSON object body under the service's rules: no repeated members, no NaN/Infinity, bounded nesting.
    ``what`` says what the object must hold, for the error."""
    try:
        payload = json.loads(body, object_pairs_hook=_unique_members, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BadOption(f"body is not valid JSON: {exc.__class__.__name__}") from None
    if not isinstance(payload, dict):
        raise BadOption(f"JSON body must be an object {what}")
    if _depth(payload) > max_depth:
        raise BadOption(f"JSON body is nested deeper than {max_depth} levels")
    return payload


async def _read_json(request: Request) -> tuple[bytes, dict[str, Any]]:
    payload = parse_json_object(await request.body(), what="with an 'image' member")
    image = payload.pop("image", None)
    if image is None:
        raise BadOption("missing member 'image' (base64 of the image file)")
    if not isinstance(image, str):
        raise BadOption("member 'image' must be a base64 string")
    if image.startswith("data:") and "," in image:
        image = image.split(",", 1)[1]
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("member 'image' is not valid base64") from None
    return data, payload


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; a member given twice is ambiguous (parsers disagree on which one wins), so it is refused."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadOption(f"member {key[:64]!r} given more than once", errors=[FieldError(key[:64], "repeated")])
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    """``NaN``/``Infinity`` are not JSON (Python's parser accepts them); refuse them as a malformed body."""
    raise BadOption(f"body is not valid JSON: {name} is not a JSON value")


def _depth(obj: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level + 1)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level + 1)
    return level


OIP_MAX_JSON_DEPTH = 12   # object → inputs → tensor → data nested [N][C][H][W]


def parse_infer_body(body: bytes, header_length: str | None) -> tuple[Any, bytes]:
    """An OIP infer body: the JSON request and the binary tensor data after it (the binary tensor extension:
    ``Inference-Header-Content-Length`` = the JSON header's byte length; empty without it)."""
    from .schemas_oip import OipInferRequest

    binary = b""
    if header_length is not None:
        if not header_length.isascii() or not header_length.isdigit() or int(header_length) > len(body):
            raise BadOption(f"Inference-Header-Content-Length must be the JSON header's length (0..{len(body)})",
                            errors=[FieldError("Inference-Header-Content-Length", "invalid length")])
        body, binary = body[:int(header_length)], body[int(header_length):]
    payload = parse_json_object(body, what="(an inference request)", max_depth=OIP_MAX_JSON_DEPTH)
    try:
        return OipInferRequest.model_validate(payload), binary
    except ValidationError as exc:
        errors = [FieldError(".".join(str(p) for p in e["loc"]) or "request", e["msg"]) for e in exc.errors()]
        raise BadOption("; ".join(f"{e.field}: {e.message}" for e in errors[:5]), errors=errors) from None


async def read_file_request(request: Request, options_model: type[M], *, field: str, max_bytes: int, what: str
                            ) -> tuple[bytes, M]:
    """A one-file request other than an image (``POST /audit``'s zip): ``multipart/form-data`` with the file in
    ``field`` and options as form fields, or JSON with ``field`` as base64 and options as members. ``what`` names the
    file in the errors."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    hint = f"send multipart/form-data (file field {field!r}) or application/json ({field!r}: base64)"
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=64)
        except Exception as exc:
            if exc.__class__.__name__ == "BodyTooLarge":
                raise
            raise BadOption(f"malformed multipart body: {getattr(exc, 'detail', None) or exc}") from None
        try:
            raw: dict[str, Any] = {}
            data = None
            lists = _list_fields(options_model)
            for key, value in form.multi_items():
                if key == field:
                    if not isinstance(value, UploadFile) or data is not None:
                        raise BadOption(f"field {field!r} must be one file upload (-F {field}=@file in curl)")
                    data = await value.read()
                elif isinstance(value, UploadFile):
                    raise BadOption(f"field {key[:64]!r} must be a plain form field, not a file")
                elif key in lists:
                    raw.setdefault(key, []).append(value)
                elif key in raw:
                    raise BadOption(f"option {key[:64]!r} given more than once",
                                    errors=[FieldError(key[:64], "repeated")])
                else:
                    raw[key] = value
        finally:
            await form.close()
        if data is None:
            raise BadOption(f"missing file field {field!r} ({what})")
    elif ctype == "application/json" or ctype.endswith("+json"):
        raw = parse_json_object(await request.body(), what=f"with a {field!r} member")
        text = raw.pop(field, None)
        if not isinstance(text, str):
            raise BadOption(f"member {field!r} must be a base64 string ({what})")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadOption(f"member {field!r} is not valid base64") from None
    elif not ctype:
        raise UnsupportedMediaType(f"missing Content-Type: {hint}")
    else:
        raise UnsupportedMediaType(f"Content-Type {ctype!r} is not supported: {hint}")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{what} of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    unknown = sorted(name[:64] for name in set(raw) - set(options_model.model_fields))
    if unknown:
        raise BadOption(f"unknown option(s): {', '.join(unknown)} (known: {field}, "
                        f"{', '.join(sorted(options_model.model_fields))})",
                        errors=[FieldError(u, "unknown option") for u in unknown])
    return data, parse_options(options_model, raw)
