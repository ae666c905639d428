"""Locust load test for any xaas deployment (staging, the compose `scale` profile, ...).

    pip install locust                      # its own virtualenv is best: locust monkey-patches the stdlib (gevent)
    locust -f bench/locustfile.py --host https://xaas.staging.example --headless -u 32 -r 8 -t 5m --csv out/xaas

Environment: XAAS_API_KEY (sent as a Bearer token), XAAS_LOCUST_IMAGE (an image file to upload; default: a
generated 224×224 PNG), XAAS_LOCUST_MODEL (registry name; default: the server's default model).
429 and 503 answers are counted as failures with their reason, so the error rate shows back-pressure.
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

from locust import HttpUser, between, task


def _synthetic_png(size: int = 224) -> bytes:
    """A textured RGB PNG built with the standard library only (no numpy/Pillow in the locust environment)."""
    rng = random.Random(0)
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            v = (x * 3 + y * 5 + rng.randrange(40)) % 256
            row += bytes((v, (v * 7) % 256, 255 - v))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


IMAGE_PATH = os.environ.get("XAAS_LOCUST_IMAGE")
IMAGE = Path(IMAGE_PATH).read_bytes() if IMAGE_PATH else _synthetic_png()
MODEL = os.environ.get("XAAS_LOCUST_MODEL")
API_KEY = os.environ.get("XAAS_API_KEY")


class XaasUser(HttpUser):
    wait_time = between(0.0, 0.2)

    def on_start(self) -> None:
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    def _post(self, path: str, name: str, **fields: str) -> None:
        data = {k: v for k, v in {"model": MODEL, **fields}.items() if v is not None}
        with self.client.post(path, files={"image": ("image.png", IMAGE, "image/png")}, data=data, name=name,
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code} {r.headers.get('retry-after', '')}".strip())

    @task(6)
    def predict(self) -> None:
        self._post("/predict", "/predict")

    @task(3)
    def gradcam(self) -> None:
        self._post("/explain/gradcam", "/explain/gradcam", outputs="heatmap")

    @task(1)
    def localize(self) -> None:
        self._post("/localize", "/localize")

    @task(1)
    def health(self) -> None:
        self.client.get("/healthz", name="/healthz")
