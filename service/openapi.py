"""The OpenAPI document, generated from the app (``xaas export-openapi``); a test fails when ``openapi/`` drifts."""

from __future__ import annotations

import json


def export_openapi() -> str:
    from .app import create_app
    from .config import Settings

    app = create_app(Settings())
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
