"""Closed-loop HTTP load against a real ``xaas serve``: batching on vs off vs the in-process ceiling.

For each server configuration (batching on: ``max_batch_size`` 16; off: 1) and each concurrency level, ``c`` async
clients each send one request, wait for the answer, and send the next, for ``--seconds``. Reported per row:
throughput (requests/s), latency p50/p95/p99 (ms), mean rows per model pass (from the server's /metrics) and errors.
The ceiling is the model called in this process on ready-made batches of 16 (no HTTP, no decoding).

    python bench/load.py                                   # resnet18 @ 224 px, /predict, c = 1 4 16 64
    python bench/load.py --endpoint explain/gradcam --concurrency 1 4 16 --seconds 10
    python bench/load.py --model demo                      # the shipped demo model (128 px)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._server import running_server

RESNET_REGISTRY = """models:
  - name: resnet18
    source: torchvision:resnet18
    weights: none
    labels: {labels}
    input_size: [224, 224]
    default: true
"""


def make_image(size: int) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def batch_rows(metrics_text: str) -> tuple[float, float]:
    total = sum(float(v) for v in re.findall(r"^xaas_batch_rows_sum\{[^}]*\} (\S+)$", metrics_text, re.M))
    count = sum(float(v) for v in re.findall(r"^xaas_batch_rows_count\{[^}]*\} (\S+)$", metrics_text, re.M))
    return total, count


async def closed_loop(url: str, endpoint: str, image: bytes, concurrency: int, seconds: float,
                      data: dict[str, str] | None = None) -> dict:
    latencies: list[float] = []
    errors: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        before = batch_rows((await client.get("/metrics")).text)
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.post("/" + endpoint, files={"image": ("x.jpg", image, "image/jpeg")}, data=data)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t_start
        after = batch_rows((await client.get("/metrics")).text)
    rows, passes = after[0] - before[0], after[1] - before[1]
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "throughput": len(latencies) / elapsed,
        "p50": q[49] * 1000, "p95": q[94] * 1000, "p99": q[98] * 1000,
        "mean_batch": rows / passes if passes else float("nan"),
        "errors": sum(errors.values()),
    }


def in_process_ceiling(models: Path | None, model_name: str | None, endpoint: str, batch: int, seconds: float) -> float:
    """Requests/s of the bare model (or explainer) on ready-made batches: the upper bound HTTP can approach."""
    import torch

    from service.config import DEFAULT_MODELS_FILE
    from service.engine import get_method, validate_params
    from service.registry import ModelRegistry

    reg = ModelRegistry.from_file(models or DEFAULT_MODELS_FILE, device_policy="auto")
    reg.load_all()
    model = reg.get(model_name)
    x = torch.randn(batch, *model.input_shape, device=model.device)
    targets = torch.zeros(batch, dtype=torch.long, device=model.device)
    if endpoint.startswith("explain/"):
        method = get_method(endpoint.split("/", 1)[1])
        params = validate_params(method, {})
        layer = model.target_layer if method.uses_layer else None

        def step() -> None:  # one pass: the method's own forward also scores the images
            method.explain(model.module, x, targets, layer=layer, task=model.task, **params)
    else:
        def step() -> None:
            with torch.inference_mode():
                model.module(x)
    step()
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        n += batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18", help="resnet18 (random init, 224 px) or demo")
    ap.add_argument("--endpoint", default="predict", help="predict | explain/<method>")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=16, help="max_batch_size with batching on")
    ap.add_argument("--delay-ms", type=float, default=5.0)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="xaas-load-"))
    models = None
    size = 128
    if args.model == "resnet18":
        labels = Path(__file__).resolve().parents[1] / "service" / "data" / "imagenet_labels.txt"
        models = tmp / "models.yaml"
        models.write_text(RESNET_REGISTRY.format(labels=labels))
        size = 224
    image = make_image(size)
    results: list[tuple[str, int, dict]] = []
    for label, bs in (("batching on", args.batch), ("batching off", 1)):
        env = {"XAAS_MAX_BATCH_SIZE": str(bs), "XAAS_MAX_BATCH_DELAY_MS": str(args.delay_ms), "XAAS_MAX_QUEUE": "1024"}
        with running_server(models, env) as server:
            url = server.url
            asyncio.run(closed_loop(url, args.endpoint, image, 4, 2.0))  # warm-up
            for c in args.concurrency:
                results.append((label, c, asyncio.run(closed_loop(url, args.endpoint, image, c, args.seconds))))
    ceiling = in_process_ceiling(models, None if args.model == "resnet18" else args.model, args.endpoint, args.batch,
                                 args.seconds)

    print(f"\n{args.model} /{args.endpoint}, {args.seconds:g} s per row, max_batch_size {args.batch} vs 1\n")
    print("| config | concurrency | req/s | p50 ms | p95 ms | p99 ms | mean rows/pass | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, c, r in results:
        print(f"| {label} | {c} | {r['throughput']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | "
              f"{r['mean_batch']:.1f} | {r['errors']} |")
    print(f"| in-process ceiling (batch {args.batch}) | – | {ceiling:.1f} | | | | {args.batch} | |")
    on = {c: r for label, c, r in results if label == "batching on"}
    off = {c: r for label, c, r in results if label == "batching off"}
    print()
    for c in args.concurrency:
        print(f"c={c}: batching on / off = {on[c]['throughput'] / off[c]['throughput']:.2f}x; "
              f"on / ceiling = {on[c]['throughput'] / ceiling:.2f}; p99/p50 (on) = {on[c]['p99'] / on[c]['p50']:.2f}")


if __name__ == "__main__":
    main()
