"""Helpers shared by tests (importable as ``tests.support``)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.config import DEFAULT_MODELS_FILE, Settings

ROOT = Path(__file__).resolve().parents[1]


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"service not ready: {client.get('/readyz').json()}")


def make_client(**overrides) -> TestClient:
    settings = Settings(models=overrides.pop("models", DEFAULT_MODELS_FILE), device="cpu", **overrides)
    return TestClient(create_app(settings), raise_server_exceptions=False)


