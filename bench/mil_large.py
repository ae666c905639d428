"""Large images through a served attention-MIL model: latency, the server's peak memory and where the map points.

A real ``xaas serve`` holds only ``demo-mil`` (the shipped entry, ``max_patches`` raised to ``--max-patches`` so that
4096² fits: 16 384 patches of 32 px). Sizes are sent in increasing order; each row is one synthetic lesion image
(:func:`service.demo.mil.lesion_image` at that size, the nuclei density of the training images) as PNG through
``POST /explain/attention-mil`` (``outputs=raw``), with the request's wall time, the server's peak resident memory
after it (``VmHWM`` of the server process, which only grows) and whether the centre of the map's maximum cell lies
within 15 px (plus half a cell) of a lesion. The last row is the shipped registry's limit: an image of more patches
than ``max_patches`` is refused from its header (413), before any decoding. Both servers accept bodies up to 64 MiB
(``XAAS_MAX_BODY_BYTES``; a 4096² PNG of this texture is 36 MB).

Usage::

    python bench/mil_large.py                      # 512 1024 2048 4096
    python bench/mil_large.py --sizes 512 2048
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._server import running_server
from service.demo.mil import POINTING_TOLERANCE, lesion_image

REGISTRY = """models:
  - name: demo-mil
    source: python:service.demo.mil:create_demo_mil_model
    weights: {weights}
    labels: [normal, lesion]
    task: mil
    patch_size: 32
    stride: 32
    max_patches: {max_patches}
    mean: [0.883, 0.682, 0.831]
    std: [0.086, 0.085, 0.055]
    channels: 3
"""


#: A 4096² PNG of this texture is ~36 MB, above the default 32 MiB body limit.
BODY = {"XAAS_MAX_BODY_BYTES": str(64 * 1024 * 1024)}


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_raw(raw: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(raw["data"]), dtype="<f4").reshape(raw["shape"])


def explain(url: str, data: bytes) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    resp = httpx.post(url + "/explain/attention-mil", files={"image": ("x.png", data, "image/png")},
                      data={"model": "demo-mil", "target": "lesion", "outputs": "raw"}, timeout=600)
    return resp, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--max-patches", type=int, default=16384)
    args = ap.parse_args()
    weights = Path(__file__).resolve().parents[1] / "service" / "demo" / "demo_mil.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models.yaml"
        models.write_text(REGISTRY.format(weights=weights, max_patches=args.max_patches))
        with running_server(models, env=BODY) as server:
            print(f"{'image':>11} {'patches':>8} {'PNG MB':>7} {'status':>6} {'seconds':>8} {'server peak MB':>15} "
                  f"{'points at lesion':>17}")
            print(f"{'(idle)':>11} {'':>8} {'':>7} {'':>6} {'':>8} {vm_hwm_mb(server.process.pid):>15.0f}")
            for size in sorted(args.sizes):
                pixels, mask, _ = lesion_image(7, 1, size, label=1)
                data = png(pixels)
                resp, seconds = explain(server.url, data)
                hit = ""
                if resp.status_code == 200:
                    cells = decode_raw(resp.json()["explanations"][0]["raw"])   # one value per stride x stride cell
                    cy, cx = np.unravel_index(int(cells.argmax()), cells.shape)
                    centre = (min(size - 1, cy * 32 + 16), min(size - 1, cx * 32 + 16))
                    hit = str(bool(ndimage.distance_transform_edt(~mask)[centre] <= POINTING_TOLERANCE + 16))
                print(f"{size:>5} x {size:<4} {(size // 32) ** 2:>8} {len(data) / 1e6:>7.1f} {resp.status_code:>6} "
                      f"{seconds:>8.2f} {vm_hwm_mb(server.process.pid):>15.0f} {hit:>17}", flush=True)
        models.write_text(REGISTRY.format(weights=weights, max_patches=4096))
        with running_server(models, env=BODY) as server:
            size = max(args.sizes)
            data = png(lesion_image(7, 1, size, label=1)[0])
            resp, seconds = explain(server.url, data)
            print(f"{size:>5} x {size:<4} {(size // 32) ** 2:>8} {len(data) / 1e6:>7.1f} {resp.status_code:>6} "
                  f"{seconds:>8.2f} {vm_hwm_mb(server.process.pid):>15.0f}"
                  f"   max_patches 4096: {resp.json()['detail']}")


if __name__ == "__main__":
    main()
