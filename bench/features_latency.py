"""Live-traffic latency with and without a running class-impression job (same server, same process).

    python bench/features_latency.py --concurrency 4 --seconds 10

Closed-loop /predict load (demo model) at the given concurrency: once idle, once while a long class-impression job
runs on the same model's worker. Reports p50/p95/p99 and the ratio (goal: within 1.5x at concurrency 4).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._server import running_server
from bench.load import closed_loop


def demo_png() -> bytes:
    from service.demo.data import generate_sample, sample_rng

    img, _ = generate_sample(sample_rng(99, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    image = demo_png()
    with running_server(env={"XAAS_DEVICE": "cpu", "XAAS_JOB_MAX_STEPS": "100000"}) as server:
        asyncio.run(closed_loop(server.url, "predict", image, args.concurrency, 2.0))  # warm-up
        idle = asyncio.run(closed_loop(server.url, "predict", image, args.concurrency, args.seconds))
        r = httpx.post(server.url + "/models/demo/class-impressions", json={"target": "circle", "steps": 100000},
                       timeout=10)
        r.raise_for_status()
        job = r.json()["id"]
        busy = asyncio.run(closed_loop(server.url, "predict", image, args.concurrency, args.seconds))
        progress = httpx.get(f"{server.url}/jobs/{job}", timeout=10).json()["progress"]
        httpx.delete(f"{server.url}/jobs/{job}", timeout=10)
    print(f"\n/predict, demo model, concurrency {args.concurrency}, {args.seconds:g} s each\n")
    print("| condition | req/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, res in (("idle", idle), ("class-impression job running", busy)):
        print(f"| {name} | {res['throughput']:.1f} | {res['p50']:.1f} | {res['p95']:.1f} | {res['p99']:.1f} |")
    print(f"\njob progressed {progress['step']} steps meanwhile; p50 ratio {busy['p50'] / idle['p50']:.2f}x, "
          f"p95 ratio {busy['p95'] / idle['p95']:.2f}x")


if __name__ == "__main__":
    main()
