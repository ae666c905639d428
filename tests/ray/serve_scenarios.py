"""Ray Serve scenarios against a real local cluster; run by tests/ray/test_ray_serve.py inside ``unshare -n``.

Ray's processes and Serve's replicas listen on every interface whatever their settings, so the head, the replicas
and this client live in a private network namespace (loopback only). One cluster (2 CPUs), started by
``xaas serve --ray --replicas 2 --cpus-per-replica 0.5`` on the shipped demo registry (this script then joins it as a
second driver for the redeploy and the replica kill). The scenarios run in order and the last stdout line is one
JSON object of what was seen, which the tests assert on (a failing step records its error instead of ending the run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from service.config import Settings  # noqa: E402
from service.ray_app import APP_NAME, build_app  # noqa: E402
from tests.support import demo_png  # noqa: E402

PORT = 8000
BASE = f"http://127.0.0.1:{PORT}"
ASYNC = {"Prefer": "respond-async"}
seen: dict[str, Any] = {"timings": {}}


def step(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            t0 = time.monotonic()
            try:
                seen[name] = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - recorded, so the other scenarios still run
                seen[name] = {"step_error": f"{exc.__class__.__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
            seen["timings"][name] = round(time.monotonic() - t0, 2)
            print(f"step {name}: {seen['timings'][name]} s", file=sys.stderr, flush=True)
        return run
    return wrap


def image(i: int) -> dict[str, Any]:
    return {"image": (f"{i}.png", demo_png(9000 + i), "image/png")}


def settings(**overrides: Any) -> Settings:
    # a short lease so that a killed replica's jobs fail within the test's time
    return Settings(device="cpu", job_lease=3, workers_threads=2, torch_threads=1, **overrides)


def deploy(s: Settings) -> None:
    serve.run(build_app(s, replicas=2, cpus_per_replica=0.5), name=APP_NAME, route_prefix="/")


@step("spread")
def spread(client: httpx.Client) -> dict[str, Any]:
    served, ids, statuses = [], [], []
    for i in range(12):
        r = client.post("/predict", files=image(i))
        statuses.append(r.status_code)
        served.append(r.headers.get("x-served-by"))
        ids.append(r.headers.get_list("x-request-id"))
    r = client.get("/healthz", headers={"X-Request-ID": "client-chosen-id"})
    return {"statuses": statuses, "served_by": served, "request_ids": ids,
            "echoed": r.headers.get_list("x-request-id"), "ready": client.get("/readyz").status_code}


@step("batching")
def batching(client: httpx.Client) -> dict[str, Any]:
    """Concurrent requests: each replica batches what reaches it (its own DynamicBatcher). 6 clients: within what the
    deployment takes at once (4 ongoing per replica + 2 queued; Serve's admission is approximate: not at its edge)."""
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda i: client.post("/predict", files=image(100 + i % 4)).status_code, range(48)))
    per_replica: dict[str, dict[str, float]] = {}
    for _ in range(40):
        r = client.get("/metrics")
        replica = r.headers.get("x-served-by", "?")
        values = {}
        for line in r.text.splitlines():
            for name in ("xaas_batch_rows_sum", "xaas_batch_rows_count"):
                if line.startswith(name + '{model="demo"}'):
                    values[name] = float(line.split()[-1])
        per_replica[replica] = values
        if len(per_replica) >= 2:
            break
    return {"statuses": statuses, "per_replica": per_replica}


@step("jobs")
def jobs(client: httpx.Client) -> dict[str, Any]:
    """A job created on one replica, polled (and deleted) through the others."""
    r = client.post("/explain/rise", files=image(200), data={"masks": "400"}, headers=ASYNC)
    created_on, location = r.headers.get("x-served-by"), r.headers.get("location")
    polls: list[tuple[str, int, str]] = []
    done: dict[str, Any] | None = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        p = client.get(location)
        body = p.json()
        polls.append((p.headers.get("x-served-by"), p.status_code, body.get("status")))
        if body.get("status") == "done":
            done = body
        replicas_polled = {who for who, _, _ in polls}
        if done is not None and len(replicas_polled) >= 2:
            break
        time.sleep(0.05)
    # the result is read through a replica that did not compute it
    other_reads = [who for who, code, status in polls if status == "done" and who != created_on]
    deleted = client.delete(location)
    after = [client.get(location) for _ in range(6)]
    return {"accepted": r.status_code, "created_on": created_on, "polls": polls,
            "done_has_heatmap": bool(done and done.get("result", {}).get("explanations")),
            "done_read_elsewhere": bool(other_reads), "deleted": deleted.status_code,
            "after_delete": sorted({(a.headers.get("x-served-by"), a.status_code) for a in after})}


@step("redeploy")
def redeploy(client: httpx.Client, new_settings: Settings) -> dict[str, Any]:
    """A rolling update (new settings, so new replicas) while requests are in flight: none is lost."""
    stop = time.monotonic() + 60
    results: list[int] = []
    served: set[str] = set()

    def load(i: int) -> None:
        n = 0
        while time.monotonic() < stop and not done_flag:
            r = client.post("/predict", files=image(300 + (i * 7 + n) % 20), timeout=60)
            results.append(r.status_code)
            served.add(r.headers.get("x-served-by", "?"))
            n += 1

    done_flag = False
    # two clients: enough to always have requests in flight, few enough that the new replicas (which start on the
    # same two cores) are not starved
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(load, i) for i in range(2)]
        time.sleep(1.0)
        before = set(served)
        t0 = time.monotonic()
        deploy(new_settings)
        took = time.monotonic() - t0
        time.sleep(1.0)
        done_flag = True
        for f in futures:
            f.result()
    codes: dict[str, int] = {}
    for code in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    return {"codes": codes, "before": sorted(before), "all_served": sorted(served), "redeploy_s": round(took, 1)}


@step("overflow")
def overflow(client: httpx.Client) -> dict[str, Any]:
    """With 4 ongoing requests per replica and 2 queued per proxy, a burst overflows: 429 + Retry-After from Serve."""
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda i: client.post("/explain/gradcam", files=image(400 + i % 8)), range(24)))
    refused = [r for r in responses if r.status_code == 429]
    return {"codes": sorted(r.status_code for r in responses),
            "retry_after": sorted({r.headers.get("retry-after") for r in refused}),
            "content_types": sorted({r.headers.get("content-type") for r in refused}),
            "problem": refused[0].json() if refused else None,
            "request_ids": sorted({len(r.headers.get_list("x-request-id")) for r in responses})}


@step("ray_metrics")
def ray_metrics(client: httpx.Client, replicas: set[str]) -> dict[str, Any]:
    """The service's metrics reach Ray's metrics endpoint (what Prometheus scrapes per node), one series per replica."""
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
    deadline = time.monotonic() + 30  # Ray exports every few seconds
    found: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=10).text
        found = {}
        for line in text.splitlines():
            if line.startswith("ray_xaas_") and "replica=" in line:
                name = line.split("{", 1)[0]
                replica = line.split('replica="', 1)[1].split('"', 1)[0]
                found.setdefault(name, set()).add(replica)
        if replicas <= found.get("ray_xaas_requests_total", set()):
            break
        time.sleep(1)
    return {"names": sorted(found), "requests_replicas": sorted(found.get("ray_xaas_requests_total", set())),
            "served_replicas": sorted(replicas)}


@step("replica_dies")
def replica_dies(client: httpx.Client) -> dict[str, Any]:
    """A replica killed with a job running: the job reads 'failed' through the survivor once the lease runs out."""
    r = client.post("/explain/rise", files=image(500), data={"masks": "20000"}, headers=ASYNC)
    owner, location = r.headers.get("x-served-by"), r.headers.get("location")
    time.sleep(0.5)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    victim = next(n for n in names if n.startswith("SERVE_REPLICA::") and n.endswith("#" + owner))
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    t0 = time.monotonic()
    status, error, by = None, None, None
    while time.monotonic() - t0 < 40:
        p = client.get(location)
        if p.status_code == 200:
            body = p.json()
            status, error, by = body["status"], body.get("error"), p.headers.get("x-served-by")
            if status == "failed":
                break
        time.sleep(0.25)
    return {"accepted": r.status_code, "owner": owner, "status": status, "error": error, "read_by": by,
            "seconds": round(time.monotonic() - t0, 1)}


@step("sigterm")
def sigterm(client: httpx.Client, server: subprocess.Popen) -> dict[str, Any]:
    """SIGTERM to `xaas serve --ray` with requests in flight: they all complete, then the server drains and exits."""
    wait_ready(client, server)  # Serve has replaced the killed replica
    # Serve counts a request against max_queued_requests (2 here) until it is assigned to a replica, so a burst
    # larger than that may be refused with a 429 even with room in the replicas: 2 at once, then 2 more.
    with ThreadPoolExecutor(4) as pool:
        futures = []
        for i in range(4):
            futures.append(pool.submit(client.post, "/explain/rise", files=image(600 + i), data={"masks": "300"}))
            time.sleep(0.1 if i % 2 else 0.0)
        time.sleep(0.3)
        t0 = time.monotonic()
        server.send_signal(signal.SIGTERM)
        codes = []
        for f in futures:
            try:
                codes.append(f.result().status_code)
            except httpx.HTTPError as exc:
                codes.append(exc.__class__.__name__)
    rc = server.wait(timeout=90)
    return {"codes": codes, "exit": rc, "stop_s": round(time.monotonic() - t0, 1)}


def wait_ready(client: httpx.Client, server: subprocess.Popen, timeout: float = 120) -> None:
    """Until both replicas have answered /readyz (the proxy routes to the first one as soon as it is up)."""
    deadline = time.monotonic() + timeout
    ready: set[str] = set()
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"xaas serve --ray exited with {server.returncode}")
        try:
            r = client.get("/readyz")
            if r.status_code == 200:
                ready.add(r.headers["x-served-by"])
                if len(ready) == 2:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("xaas serve --ray did not become ready")


# The limits every deployment of this run uses (set in the environment of `xaas serve --ray`, and in the settings of
# the redeploy): 4 ongoing requests per replica, 2 queued at the proxy, so a burst of 24 overflows.
LIMITS = {"ray_max_ongoing_requests": 4, "ray_max_queued_requests": 2, "ray_retry_after": 3}


def main() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # A private, empty /tmp/ray (this process runs in its own mount namespace too): no stale cluster files, and
    # `ray.init(address="auto")` finds exactly the cluster `xaas serve --ray` starts.
    Path("/tmp/ray").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", "/tmp/ray"], check=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XAAS_JOB_LEASE": "3", "XAAS_WORKERS_THREADS": "2",
           "XAAS_TORCH_THREADS": "1", **{f"XAAS_{k.upper()}": str(v) for k, v in LIMITS.items()}}
    env.pop("RAY_ADDRESS", None)
    t0 = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--ray", "--replicas", "2",
                               "--cpus-per-replica", "0.5", "--host", "127.0.0.1", "--port", str(PORT),
                               "--device", "cpu"], env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    try:
        with httpx.Client(base_url=BASE, timeout=60) as client:
            wait_ready(client, server)
            seen["timings"]["start"] = round(time.monotonic() - t0, 2)
            spread(client)
            batching(client)
            jobs(client)
            overflow(client)
            ray.init(address="auto", log_to_driver=False)
            redeploy(client, settings(max_batch_delay_ms=3, **LIMITS))
            current = {client.post("/predict", files=image(i)).headers["x-served-by"] for i in range(12)}
            ray_metrics(client, current)
            replica_dies(client)
            ray.shutdown()
            sigterm(client, server)
    finally:
        if server.poll() is None:
            server.kill()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
