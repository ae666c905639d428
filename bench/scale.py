"""Throughput on Ray Serve: 1 replica vs 2 replicas on this machine, batching on vs off under Ray, and plain
``xaas serve`` as the reference (what Serve's proxy and routing cost).

A local Ray cluster with every core of the machine; each configuration is deployed fresh (the cores split evenly
between its replicas: Ray reserves them, and each replica's torch gets as many threads), warmed up, then driven by a
closed loop (``c`` async clients each send a request, wait, send the next) for ``--seconds``. Reported per row:
requests/s, p50/p95/p99 latency, mean rows per model pass (summed over the replicas' own /metrics), the replicas
that answered, and errors (non-200 answers).

Ray's processes listen on every interface whatever their settings, so the script re-runs itself in private network
and mount namespaces (``unshare --pid -n -m``, root or CAP_SYS_ADMIN): loopback only, a private /tmp/ray, and no
Ray process outlives the run.

    python bench/scale.py                                     # resnet18 @ 224 px (random init), /predict, c = 4 16
    python bench/scale.py --model demo --concurrency 16 --seconds 10
    python bench/scale.py --gpus-per-replica 0.5              # on a GPU machine: two replicas share one GPU
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._server import running_server
from bench.load import RESNET_REGISTRY, make_image

ROOT = Path(__file__).resolve().parents[1]

PORT = 8000
IN_NAMESPACE = "XAAS_SCALE_IN_NAMESPACE"


async def closed_loop(url: str, endpoint: str, image: bytes, concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: dict[int, int] = {}
    served: set[str] = set()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.post("/" + endpoint, files={"image": ("x.jpg", image, "image/jpeg")})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                    served.add(r.headers.get("x-served-by", "-"))
                else:
                    errors[r.status_code] = errors.get(r.status_code, 0) + 1

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t_start
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {"throughput": len(latencies) / elapsed, "p50": q[49] * 1000, "p95": q[94] * 1000, "p99": q[98] * 1000,
            "errors": sum(errors.values()), "served": served}


def batch_rows(url: str, replicas: set[str]) -> tuple[float, float]:
    """Sum and count of rows per model pass over ``replicas``, from each replica's own /metrics: asked through the
    proxy until every replica has answered once (``X-Served-By`` says which one did)."""
    per: dict[str, tuple[float, float]] = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(60):
            r = client.get("/metrics")
            text = r.text
            total = sum(float(v) for v in re.findall(r"^xaas_batch_rows_sum\{[^}]*\} (\S+)$", text, re.M))
            count = sum(float(v) for v in re.findall(r"^xaas_batch_rows_count\{[^}]*\} (\S+)$", text, re.M))
            per[r.headers.get("x-served-by", "-")] = (total, count)
            if replicas <= set(per):
                break
    return sum(v[0] for v in per.values()), sum(v[1] for v in per.values())


def run(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    from service.config import Settings
    from service.ray_app import APP_NAME, build_app, serve_limits

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    Path("/tmp/ray").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", "/tmp/ray"], check=True)
    cpus = args.cpus or os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="xaas-scale-"))
    models, size = None, 128
    if args.model == "resnet18":
        models = tmp / "models.yaml"
        models.write_text(RESNET_REGISTRY.format(labels=ROOT / "service" / "data" / "imagenet_labels.txt"))
        size = 224
    image = make_image(size)
    env_settings = {"XAAS_MAX_QUEUE": "1024", "XAAS_LOG_LEVEL": "warning"}
    if models is not None:
        env_settings["XAAS_MODELS"] = str(models)
    os.environ.update(env_settings)
    rows: list[tuple[str, int, dict]] = []

    # The reference: one plain `xaas serve` process with every core.
    with running_server(models, {**env_settings, "XAAS_MAX_BATCH_SIZE": str(args.batch)}) as server:
        asyncio.run(closed_loop(server.url, args.endpoint, image, 4, 2.0))
        for c in args.concurrency:
            before = batch_rows(server.url, {"-"})
            r = asyncio.run(closed_loop(server.url, args.endpoint, image, c, args.seconds))
            after = batch_rows(server.url, {"-"})
            r["mean_batch"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
            rows.append(("xaas serve (no Ray)", c, r))

    ray.init(num_cpus=cpus, num_gpus=args.gpus or None, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    base = Settings(max_batch_size=args.batch)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT,
                              "request_timeout_s": serve_limits(base).request_timeout_s})
    url = f"http://127.0.0.1:{PORT}"
    configs = [("Ray, 1 replica", 1, args.batch), ("Ray, 2 replicas", 2, args.batch),
               ("Ray, 2 replicas, batching off", 2, 1)]
    for label, replicas, batch in configs:
        share = cpus / replicas
        settings = Settings(max_batch_size=batch, torch_threads=max(1, int(share)),
                            ray_max_ongoing_requests=max(args.concurrency) + 4)
        t0 = time.monotonic()
        serve.run(build_app(settings, replicas=replicas, cpus_per_replica=share,
                            gpus_per_replica=args.gpus_per_replica), name=APP_NAME, route_prefix="/")
        print(f"{label}: deployed in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        replicas_seen = asyncio.run(closed_loop(url, args.endpoint, image, 4, 2.0))["served"]  # warm-up
        for c in args.concurrency:
            before = batch_rows(url, replicas_seen)
            r = asyncio.run(closed_loop(url, args.endpoint, image, c, args.seconds))
            replicas_seen |= r["served"]
            after = batch_rows(url, replicas_seen)
            passes = after[1] - before[1]
            r["mean_batch"] = (after[0] - before[0]) / passes if passes > 0 else float("nan")
            rows.append((label, c, r))
        serve.delete(APP_NAME)
    serve.shutdown()
    ray.shutdown()

    print(f"\n{args.model} /{args.endpoint}, {cpus} CPUs, {args.seconds:g} s per row, max_batch_size {args.batch}\n")
    print("| config | concurrency | req/s | p50 ms | p95 ms | p99 ms | mean rows/pass | replicas answering | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, c, r in rows:
        mean = "" if r["mean_batch"] != r["mean_batch"] else f"{r['mean_batch']:.1f}"
        answering = len(r["served"] - {"-"}) or 1
        print(f"| {label} | {c} | {r['throughput']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {mean} | "
              f"{answering} | {r['errors']} |")
    by = {(label, c): r["throughput"] for label, c, r in rows}
    print()
    for c in args.concurrency:
        one, two, off = by[("Ray, 1 replica", c)], by[("Ray, 2 replicas", c)], by[("Ray, 2 replicas, batching off", c)]
        plain = by[("xaas serve (no Ray)", c)]
        print(f"c={c}: 2 replicas / 1 = {two / one:.2f}x; batching on / off (2 replicas) = {two / off:.2f}x; "
              f"Ray 1 replica / xaas serve = {one / plain:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18", help="resnet18 (random init, 224 px) or demo")
    ap.add_argument("--endpoint", default="predict", help="predict | explain/<method>")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=16, help="max_batch_size with batching on")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the Ray cluster (default: all)")
    ap.add_argument("--gpus", type=float, default=0, help="GPUs of the Ray cluster (default: none)")
    ap.add_argument("--gpus-per-replica", type=float, default=0.0)
    args = ap.parse_args()
    if os.environ.get(IN_NAMESPACE):
        run(args)
        return
    env = {**os.environ, IN_NAMESPACE: "1", "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # own PID namespace too: every Ray process of the run ends with it, however it ends
    sys.exit(subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "-n", "-m", sys.executable,
                             *sys.argv], env=env).returncode)


if __name__ == "__main__":
    main()
