"""xaas against what users hand-glue today: FastAPI + ``pytorch_grad_cam.GradCAM`` behind a lock.

Both servers run on this machine, one after the other, with the same models (random-init torchvision resnet50 and
resnet18 at 224 px), the same image (a 224x224 JPEG) and the same request: Grad-CAM of one given class, one heatmap PNG
at the image size. The peer is the usual glue: the model and a ``GradCAM`` object built once at start-up, a
``threading.Lock`` around the shared model (pytorch-grad-cam's hooks are not thread-safe), PIL decoding, torchvision
transforms, the CAM resized and PNG-encoded in the response. Closed-loop clients (each sends, waits, sends again) at
concurrency 1 and 8 for ``--seconds``; reported: requests/s, p50, p99 and the xaas/peer throughput ratio.

    python bench/peers.py                          # resnet50 and resnet18, c = 1 and 8, 8 s per row
    python bench/peers.py --models resnet18 --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from fastapi import FastAPI, File, Form, UploadFile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._server import free_port, running_server
from bench.load import closed_loop, make_image

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = """models:
{entries}
"""
ENTRY = """  - name: {name}
    source: torchvision:{name}
    weights: none
    labels: {labels}
    input_size: [224, 224]
"""
TARGET = "281"  # a class index (tabby cat): the target is given, as a review screen gives it


# --------------------------------------------------------------------------------------------------- the peer


def peer_app(names: list[str]):
    """The hand-glued server: FastAPI + pytorch_grad_cam.GradCAM, one lock per model."""
    import base64
    import io
    import threading

    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchvision import transforms

    models = {}
    for name in names:
        model = torchvision.models.get_model(name, weights=None).eval()
        models[name] = (model, GradCAM(model=model, target_layers=[model.layer4]), threading.Lock())
    preprocess = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                     transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    app = FastAPI()

    @app.post("/explain/gradcam")
    def explain(image: UploadFile = File(...), target: int = Form(...), model: str = Form(names[0])) -> dict:
        pil = Image.open(io.BytesIO(image.file.read())).convert("RGB")
        x = preprocess(pil)[None]
        _, cam, lock = models[model]
        with lock:
            grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
            # the class probability next to the map, from GradCAM's own forward (no extra pass)
            score = float(torch.softmax(cam.outputs.detach(), 1)[0, target])
        heat = Image.fromarray(np.uint8(255 * grayscale)).resize(pil.size, Image.BILINEAR)
        buf = io.BytesIO()
        heat.save(buf, format="PNG")
        return {"model": model, "score": score, "heatmap": base64.b64encode(buf.getvalue()).decode()}

    return app


@contextlib.contextmanager
def running_peer(names: list[str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-peer", str(port), "--models", *names],
                            env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"peer server exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/docs", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("peer server not ready")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------------------------------- the run


def measure(url: str, model: str, image: bytes, concurrency: list[int], seconds: float) -> dict[int, dict]:
    data = {"target": TARGET, "model": model}
    asyncio.run(closed_loop(url, "explain/gradcam", image, 2, 2.0, data))  # warm-up
    return {c: asyncio.run(closed_loop(url, "explain/gradcam", image, c, seconds, data)) for c in concurrency}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnet18"])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--serve-peer", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_peer is not None:
        import uvicorn

        uvicorn.run(peer_app(args.models), host="127.0.0.1", port=args.serve_peer, log_level="warning")
        return

    tmp = Path(tempfile.mkdtemp(prefix="xaas-peers-"))
    labels = ROOT / "service" / "data" / "imagenet_labels.txt"
    registry = tmp / "models.yaml"
    registry.write_text(REGISTRY.format(entries="".join(ENTRY.format(name=n, labels=labels) for n in args.models)))
    image = make_image(224)
    results: dict[str, dict[str, dict[int, dict]]] = {}
    # the result cache off: every request here is identical, and a cache hit would measure no explanation at all
    with running_server(registry, {"XAAS_MAX_QUEUE": "1024", "XAAS_CACHE_BYTES": "0"}) as server:
        for name in args.models:
            results.setdefault(name, {})["xaas"] = measure(server.url, name, image, args.concurrency, args.seconds)
    with running_peer(args.models) as url:
        for name in args.models:
            results[name]["peer"] = measure(url, name, image, args.concurrency, args.seconds)

    print(f"\nGrad-CAM of a given class, one heatmap PNG, 224 px, {args.seconds:g} s per row\n")
    print("| model | clients | xaas req/s | xaas p50 ms | xaas p99 ms | peer req/s | peer p50 ms | peer p99 ms | "
          "xaas / peer |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, both in results.items():
        for c in args.concurrency:
            x, p = both["xaas"][c], both["peer"][c]
            print(f"| {name} | {c} | {x['throughput']:.1f} | {x['p50']:.0f} | {x['p99']:.0f} | {p['throughput']:.1f} "
                  f"| {p['p50']:.0f} | {p['p99']:.0f} | {x['throughput'] / p['throughput']:.2f}× |")
    errors = sum(r[c]["errors"] for both in results.values() for r in both.values() for c in args.concurrency)
    print(f"\nerrors: {errors}")


if __name__ == "__main__":
    main()
