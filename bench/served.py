"""What a served explanation costs next to a served prediction, and a slow method through an async job.

Against one ``xaas serve`` (random-init torchvision models, 224 px, the same JPEG): for each method, the latency of
``POST /explain/{method}`` (target given, one heatmap PNG) divided by that of ``POST /predict`` at one client
(closed loop, medians), and the throughput of Grad-CAM and of /predict at 8 clients. Then Score-CAM on
efficientnet_b0 (1280 channels at its last layer) through ``Prefer: respond-async``: time to done, progress polls, and
/predict latency on the same model while the job runs.

    python bench/served.py                       # resnet50; all one-pass methods; 8 s per row
    python bench/served.py --model resnet18 --seconds 4 --skip-scorecam
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._server import running_server
from bench.load import closed_loop, make_image
from bench.peers import ENTRY, REGISTRY

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("gradcam", "cam", "layercam", "gradcam-pp", "hirescam", "saliency", "guided-backprop")
GOALS = {"gradcam": 1.15, "cam": 1.15, "layercam": 1.15, "gradcam-pp": 1.15, "saliency": 2.3, "guided-backprop": 2.3}


def scorecam_job(url: str, image: bytes) -> dict:
    """Score-CAM on efficientnet_b0 as a job; /predict on the same model meanwhile, one request at a time."""
    files = {"image": ("x.jpg", image, "image/jpeg")}
    with httpx.Client(base_url=url, timeout=120) as client:
        t0 = time.perf_counter()
        r = client.post("/explain/scorecam", files=files, data={"model": "efficientnet_b0", "target": "281"},
                        headers={"Prefer": "respond-async"})
        r.raise_for_status()
        job_id = r.json()["id"]
        polls, progress, latencies = 0, [], []
        while True:
            doc = client.get(f"/jobs/{job_id}").json()
            polls += 1
            progress.append(doc["progress"]["done"])
            if doc["status"] not in ("queued", "running"):
                break
            p0 = time.perf_counter()
            client.post("/predict", files=files, data={"model": "efficientnet_b0"}).raise_for_status()
            latencies.append(time.perf_counter() - p0)
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        idle = []
        for _ in range(10):
            p0 = time.perf_counter()
            client.post("/predict", files=files, data={"model": "efficientnet_b0"}).raise_for_status()
            idle.append(time.perf_counter() - p0)
    return {"status": doc["status"], "seconds": elapsed, "total": doc["progress"]["total"], "polls": polls,
            "distinct_progress": len(set(progress)), "predict_during_ms": statistics.median(latencies) * 1000,
            "predict_idle_ms": statistics.median(idle) * 1000, "error": doc.get("error")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--skip-scorecam", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="xaas-served-"))
    labels = ROOT / "service" / "data" / "imagenet_labels.txt"
    names = [args.model] + ([] if args.skip_scorecam else ["efficientnet_b0"])
    registry = tmp / "models.yaml"
    registry.write_text(REGISTRY.format(entries="".join(ENTRY.format(name=n, labels=labels) for n in names)))
    image = make_image(224)
    data = {"model": args.model, "target": "281"}
    rows = {}
    # the result cache off: every request here is identical, and a cache hit would measure no explanation at all
    with running_server(registry, {"XAAS_MAX_QUEUE": "1024", "XAAS_CACHE_BYTES": "0"}) as server:
        url = server.url
        asyncio.run(closed_loop(url, "predict", image, 2, 2.0, data))  # warm-up
        # Interleave: predict, method, predict, method... so drifts of this shared machine hit both alike.
        for method in args.methods:
            asyncio.run(closed_loop(url, f"explain/{method}", image, 1, 1.0, data))  # the method's first call
            before = asyncio.run(closed_loop(url, "predict", image, 1, args.seconds / 2, data))
            explained = asyncio.run(closed_loop(url, f"explain/{method}", image, 1, args.seconds, data))
            after = asyncio.run(closed_loop(url, "predict", image, 1, args.seconds / 2, data))
            predict_p50 = (before["p50"] + after["p50"]) / 2
            rows[method] = (explained["p50"], predict_p50, explained["errors"])
        p8 = asyncio.run(closed_loop(url, "predict", image, 8, args.seconds, data))
        g8 = asyncio.run(closed_loop(url, "explain/gradcam", image, 8, args.seconds, data))
        job = None if args.skip_scorecam else scorecam_job(url, image)

    print(f"\n{args.model}, 224 px, random init, target given, one heatmap PNG; medians over {args.seconds:g} s\n")
    print("| method | explain p50 ms | predict p50 ms | explain / predict | goal |")
    print("|---|---:|---:|---:|---:|")
    for method, (e, p, errors) in rows.items():
        goal = f"≤ {GOALS[method]}" if method in GOALS else "–"
        print(f"| {method} | {e:.0f} | {p:.0f} | {e / p:.2f} | {goal} |" + (f" errors {errors}" if errors else ""))
    print(f"\n8 clients: /predict {p8['throughput']:.1f} req/s, /explain/gradcam {g8['throughput']:.1f} req/s "
          f"→ {g8['throughput'] / p8['throughput']:.2f}× (goal ≥ 0.85); p50 {p8['p50']:.0f} vs {g8['p50']:.0f} ms")
    if job is not None:
        print(f"\nScore-CAM, efficientnet_b0 (1280 channels), async job: {job['status']} after {job['seconds']:.1f} s, "
              f"{job['total']} masked forwards, {job['polls']} polls, {job['distinct_progress']} distinct progress "
              f"values; /predict on the same model meanwhile {job['predict_during_ms']:.0f} ms (idle "
              f"{job['predict_idle_ms']:.0f} ms)" + (f"; error: {job['error']}" if job["error"] else ""))


if __name__ == "__main__":
    main()
