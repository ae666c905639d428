"""Result cache: latency of a cache hit vs a miss, over HTTP, against a real ``xaas serve``.

For each model and method, one client sends requests one after another (closed loop, concurrency 1):

* **miss**: ``--n`` requests on distinct images (each one's first request), so every answer is computed;
* **hit**: ``--n`` requests on one already-explained image, each with another ``colormap`` — a review screen
  re-rendering what it has seen — answered from the cached maps (the overlay still decodes the image and renders);
* **hit, heatmap only**: ``--n`` more hits asking for the grey heatmap alone (no decoding, one PNG): the floor.

Both ask for ``outputs=heatmap,overlay``, so they render the same pictures; the difference is the model work. Every
answer's ``X-Cache`` header is checked to be what the row claims. Models: the shipped demo model (128 px) and a
random-init ``torchvision:resnet50`` at 224 px (``weights: none``, written to a temporary models.yaml).

    python bench/cache.py                                        # demo + resnet50, gradcam + scorecam
    python bench/cache.py --models demo --methods gradcam --n 50
    python bench/cache.py --slow-n 3 --param resnet50:scorecam:channels=256   # default there: channels=64
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._server import running_server

RESNET50_REGISTRY = """models:
  - name: resnet50
    source: torchvision:resnet50
    weights: none
    labels: {labels}
    input_size: [224, 224]
    default: true
"""
COLORMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "gray", "cividis", "twilight")
SLOW_METHODS = ("scorecam", "rise", "occlusion", "integrated-gradients", "smoothgrad")
# Score-CAM on resnet50 scores every one of layer4's 2048 channels: 526 s per miss on 2 CPU cores. Faster Score-CAM
# (the 64 channels with the largest Grad-CAM weight) is 23 s; --param resnet50:scorecam:channels=0 for the full one.
DEFAULT_PARAMS = {("resnet50", "scorecam"): {"channels": "64"}}


@dataclass
class Row:
    model: str
    method: str
    params: dict[str, str]
    miss_ms: list[float]
    hit_ms: list[float]
    plain_hit_ms: list[float]

    @staticmethod
    def quantile(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    def cells(self) -> list[str]:
        miss50, hit50 = self.quantile(self.miss_ms, 50), self.quantile(self.hit_ms, 50)
        params = ", ".join(f"{k}={v}" for k, v in self.params.items()) or "–"
        return [self.model, self.method, params, f"{len(self.miss_ms)} / {len(self.hit_ms)}", f"{miss50:.1f}",
                f"{self.quantile(self.miss_ms, 95):.1f}", f"{hit50:.1f}", f"{self.quantile(self.hit_ms, 95):.1f}",
                f"{hit50 / miss50:.3f}", f"{miss50 / hit50:.0f}×", f"{self.quantile(self.plain_hit_ms, 50):.1f}"]


def demo_images(n: int, seed: int) -> list[bytes]:
    from service.demo.data import generate_sample, sample_rng

    out = []
    for i in range(n):
        image, _ = generate_sample(sample_rng(seed, i))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def noise_images(n: int, seed: int, size: int = 224) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def timed(client: httpx.Client, method: str, image: bytes, options: dict[str, str], expect: str) -> float:
    t0 = time.perf_counter()
    r = client.post(f"/explain/{method}", files={"image": ("x", image)}, data=options)
    elapsed = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{method}: {r.status_code} {r.text[:300]}")
    if r.headers.get("x-cache") != expect:
        raise RuntimeError(f"{method}: expected X-Cache {expect}, got {r.headers.get('x-cache')}")
    return elapsed


def measure(url: str, model: str, method: str, params: dict[str, str], images: list[bytes], n: int) -> Row:
    """``images[0]`` warms up (first-request costs: colour maps, allocator), ``images[1:n+1]`` are the misses."""
    base = {"model": model, "outputs": "heatmap,overlay", **params}
    with httpx.Client(base_url=url, timeout=900) as client:
        timed(client, method, images[0], {**base, "colormap": COLORMAPS[0]}, "miss")
        misses = [timed(client, method, image, {**base, "colormap": COLORMAPS[0]}, "miss") for image in images[1:n + 1]]
        hits = [timed(client, method, images[1], {**base, "colormap": COLORMAPS[1 + i % (len(COLORMAPS) - 1)]}, "hit")
                for i in range(n)]
        plain = [timed(client, method, images[1], {**base, "outputs": "heatmap"}, "hit") for _ in range(n)]
    return Row(model, method, params, misses, hits, plain)


def parse_params(items: list[str]) -> dict[tuple[str, str], dict[str, str]]:
    out: dict[tuple[str, str], dict[str, str]] = {}
    for item in items:
        model, method, assignment = item.split(":", 2)
        key, _, value = assignment.partition("=")
        out.setdefault((model, method), {})[key] = value
    return out


def print_table(rows: list[Row]) -> None:
    head = ["model", "method", "params", "n miss / hit", "miss p50 ms", "miss p95 ms", "hit p50 ms", "hit p95 ms",
            "hit/miss (p50)", "speed-up", "hit p50 ms, heatmap only"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,resnet50", help="comma-separated: demo, resnet50")
    ap.add_argument("--methods", default="gradcam,scorecam")
    ap.add_argument("--n", type=int, default=20, help="requests per row and kind (miss, hit)")
    ap.add_argument("--slow-n", type=int, default=3, help="--n for slow methods (scorecam, rise, ...)")
    ap.add_argument("--param", action="append", default=[], metavar="MODEL:METHOD:KEY=VALUE",
                    help="a method parameter for one row, e.g. resnet50:scorecam:channels=256 (repeatable)")
    ap.add_argument("--threads", type=int, default=None, help="XAAS_TORCH_THREADS of the server")
    args = ap.parse_args()
    params = {**DEFAULT_PARAMS, **parse_params(args.param)}
    methods = [m for m in args.methods.split(",") if m]
    env = {"XAAS_REQUEST_TIMEOUT": "900", "XAAS_DEVICE": "cpu"}
    if args.threads:
        env["XAAS_TORCH_THREADS"] = str(args.threads)
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="xaas-cache-bench-"))
    for model in [m for m in args.models.split(",") if m]:
        registry = None
        if model == "resnet50":
            labels = Path(__file__).resolve().parents[1] / "service" / "data" / "imagenet_labels.txt"
            registry = tmp / "models.yaml"
            registry.write_text(RESNET50_REGISTRY.format(labels=labels))
        elif model != "demo":
            ap.error(f"unknown model {model!r} (demo, resnet50)")
        with running_server(registry, env=env, ready_timeout=300) as server:
            for k, method in enumerate(methods):
                n = args.slow_n if method in SLOW_METHODS else args.n
                seed = 1000 * (k + 1)
                images = demo_images(n + 1, seed) if model == "demo" else noise_images(n + 1, seed)
                row = measure(server.url, model, method, params.get((model, method), {}), images, n)
                print(f"{model} {method}: miss p50 {statistics.median(row.miss_ms):.1f} ms, "
                      f"hit p50 {statistics.median(row.hit_ms):.1f} ms", file=sys.stderr)
                rows.append(row)
    print_table(rows)


if __name__ == "__main__":
    main()
