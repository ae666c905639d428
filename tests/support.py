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


def demo_png(seed: int, index: int = 0) -> bytes:
    """A synthetic demo image as PNG bytes. Tests that must see model work (a result-cache miss) on the session's
    shared client use a seed of their own, since an identical earlier request would be answered from the cache."""
    from service.demo.data import generate_sample, sample_rng

    image, _ = generate_sample(sample_rng(seed, index))
    return png_bytes(np.asarray(image))


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




def decode_png(b64: str) -> np.ndarray:
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def decode_raw(raw: dict) -> np.ndarray:
    import base64

    assert raw["dtype"] == "float32"
    return np.frombuffer(base64.b64decode(raw["data"]), dtype="<f4").reshape(raw["shape"])


def blind_net(num_classes: int = 3):
    """Registry test model whose logits ignore the image, so every gradient map is exactly zero."""
    from torch import nn

    class Blind(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1) * 0.0)

    return Blind()
