"""The OpenAPI document: generated from the app, then normalised so that it says exactly what the service sends.

FastAPI documents its own validation errors as ``application/json`` ``HTTPValidationError``; xaas answers every
error with an RFC 9457 ``application/problem+json`` :class:`~service.api.schemas.Problem`. :func:`install` replaces
the app's ``openapi()`` with one that rewrites every 4xx/5xx response accordingly (and documents ``Retry-After`` on
429/503), so client generators and schemathesis see the real contract. ``xaas export-openapi`` writes it to
``openapi/openapi.json``; a test fails when that file drifts from the app.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
RETRY_AFTER = {"description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}
_FASTAPI_ONLY = ("HTTPValidationError", "ValidationError")


def normalise(doc: dict[str, Any]) -> dict[str, Any]:
    """Every error response as problem+json (with Retry-After on 429/503); FastAPI's own error schemas dropped."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if not status.isascii() or not status.isdigit() or int(status) < 400:
                    continue
                response["content"] = {"application/problem+json": {"schema": PROBLEM_REF}}
                if status == "422" and response.get("description") == "Validation Error":
                    response["description"] = "Undecodable image or invalid option value"
                if status in ("429", "503"):
                    response.setdefault("headers", {})["Retry-After"] = RETRY_AFTER
    schemas = doc.get("components", {}).get("schemas", {})
    for name in _FASTAPI_ONLY:
        schemas.pop(name, None)
    return doc


def _with_body_schemas(doc: dict[str, Any]) -> dict[str, Any]:
    """Components for request bodies that routes parse themselves (so FastAPI does not list them): the OIP infer
    request, whose body may carry binary tensor data after its JSON header."""
    from pydantic.json_schema import models_json_schema

    from .api.schemas_oip import OipInferRequest

    _, defs = models_json_schema([(OipInferRequest, "validation")], ref_template="#/components/schemas/{model}")
    doc.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    return doc


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the normalised document (computed once, as FastAPI does)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = normalise(_with_body_schemas(generate()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def export_openapi() -> str:
    from .app import create_app
    from .config import Settings

    app = create_app(Settings())
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
