"""HTTP tests of /activations, /models/{name}/filters, class-impression jobs
(/models/{name}/class-impressions, /jobs)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.support import decode_png, make_client, wait_ready


@pytest.fixture(scope="module")
def fclient():
    """Own app (own job table): at most 2 jobs, 1000 steps per job, 5 steps per worker slice."""
    with make_client(max_jobs=2, job_max_steps=1000, job_slice_steps=5) as c:
        wait_ready(c)
        yield c
        for job in c.app.state.runtime.jobs.store.active():
            c.delete(f"/jobs/{job.id}")


def _files(demo_sample):
    return {"image": ("sample.png", demo_sample[0], "image/png")}


def _wait(client, job_id, statuses=("done", "failed", "cancelled"), timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get(f"/jobs/{job_id}").json()
        if doc["status"] in statuses:
            return doc
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {doc['status']}")


# ------------------------------------------------------------------------------------------------ activations


def test_activations_grid_default_layer(client, demo_sample):
    r = client.post("/activations", files=_files(demo_sample))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == "demo" and doc["layer"] == client.get("/models/demo").json()["target_layer"]
    c, h, w = doc["shape"]
    assert (c, h, w) == (160, 16, 16)
    assert len(doc["channels"]) == 16
    means = [s["mean"] for s in doc["channels"]]
    assert means == sorted(means, reverse=True)
    for s in doc["channels"]:
        assert s["max"] >= s["mean"] and 0 <= s["fraction_positive"] <= 1
    g = doc["grid_info"]
    grid = decode_png(doc["grid"])
    assert grid.ndim == 2 and grid.shape == (g["rows"] * g["tile"][0] + (g["rows"] - 1) * g["pad"],
                                             g["cols"] * g["tile"][1] + (g["cols"] - 1) * g["pad"])
    assert "channel" not in doc


def test_activations_single_channel_and_top(client, demo_sample):
    r = client.post("/activations", files=_files(demo_sample), data={"layer": "features.block2", "channel": "7"})
    assert r.status_code == 200, r.text
    doc = r.json()
    img = decode_png(doc["channel"])
    assert img.shape == tuple(doc["shape"][1:]) == (32, 32) and img.dtype == np.uint8
    assert [s["index"] for s in doc["channels"]] == [7] and "grid" not in doc

    r = client.post("/activations", files=_files(demo_sample), data={"top": "64", "layer": "features.block1.conv"})
    assert r.status_code == 200 and len(r.json()["channels"]) == 32  # the layer has only 32 channels


@pytest.mark.parametrize("data,field", [({"layer": "classifier"}, "layer"), ({"layer": "nope"}, "layer"),
                                        ({"channel": "160"}, "channel"), ({"top": "65"}, "top"),
                                        ({"top": "0"}, "top"), ({"channel": "-1"}, "channel")])
def test_activations_bad_options(client, demo_sample, data, field):
    r = client.post("/activations", files=_files(demo_sample), data=data)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    doc = r.json()
    assert any(e["field"] == field for e in doc.get("errors") or []) or field in doc["detail"]
    if data.get("layer"):
        assert "features.block6" in doc["detail"]  # lists the valid layers


# ------------------------------------------------------------------------------------------------ filters


def test_filters_default_and_named_layer(client):
    r = client.get("/models/demo/filters")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["layer"] == "features.block1.conv" and doc["mode"] == "rgb" and doc["count"] == 32
    assert doc["conv_layers"][0] == "features.block1.conv"
    grid = decode_png(doc["grid"])
    assert grid.ndim == 3 and grid.shape[2] == 3
    assert client.get("/models/demo/filters").json() == doc  # cached: identical

    r = client.get("/models/demo/filters", params={"layer": "features.block4.conv"})
    assert r.status_code == 200 and r.json()["mode"] == "grey-mean" and decode_png(r.json()["grid"]).ndim == 2


def test_filters_errors(client):
    r = client.get("/models/demo/filters", params={"layer": "features.block4"})
    assert r.status_code == 422 and "features.block1.conv" in r.json()["detail"]
    assert client.get("/models/nope/filters").status_code == 404


# ------------------------------------------------------------------------------------------------ class impressions


def test_class_impression_job_runs_to_done(fclient):
    r = fclient.post("/models/demo/class-impressions", json={"target": "circle", "steps": 200, "seed": 1})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and r.headers["location"] == f"/jobs/{job['id']}"
    doc = _wait(fclient, job["id"])
    assert doc["status"] == "done", doc
    assert doc["progress"] == {"done": 200, "total": 200, "unit": "steps", "step": 200, "steps": 200}
    assert doc["kind"] == "class-impression"
    assert doc["target"] == 0 and doc["label"] == "circle" and doc["probability"] >= 0.9
    img = decode_png(doc["result"]["image"])
    assert img.shape == (128, 128, 3)
    # The impression is itself classified as circle by /predict.
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    p = fclient.post("/predict", json={"image": base64.b64encode(buf.getvalue()).decode(), "target": "circle"})
    assert p.status_code == 200 and p.json()["predictions"][0]["score"] >= 0.9
    # A finished job can be deleted; then it is gone.
    assert fclient.delete(f"/jobs/{job['id']}").status_code == 204
    assert fclient.get(f"/jobs/{job['id']}").status_code == 404


def test_unknown_job_404(fclient):
    for method in (fclient.get, fclient.delete):
        r = method("/jobs/0123456789abcdef")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("body", [
    {"target": "circle", "steps": 0}, {"target": "circle", "steps": 1001}, {"target": "circle", "lr": 0},
    {"target": "circle", "lr": 5}, {"target": "circle", "jitter": 65}, {"target": "circle", "rotation": -1},
    {"target": "circle", "scale": [2.0, 1.0]}, {"target": "circle", "tv_weight": -1}, {"target": "hexagon"},
    {"target": 6}, {}, {"target": "circle", "bogus": 1},
])
def test_class_impression_bad_params_422(fclient, body):
    r = fclient.post("/models/demo/class-impressions", json=body)
    assert r.status_code == 422, (body, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")


def test_class_impression_unknown_model_404(fclient):
    assert fclient.post("/models/nope/class-impressions", json={"target": 0}).status_code == 404


def test_too_many_jobs_429_cancel_and_predict_meanwhile(fclient, demo_sample):
    ids = []
    for _ in range(2):
        r = fclient.post("/models/demo/class-impressions", json={"target": "star", "steps": 1000})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    r = fclient.post("/models/demo/class-impressions", json={"target": "star", "steps": 10})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1

    _wait(fclient, ids[0], statuses=("running",))
    # Live traffic is served between job slices: a predict completes while both jobs are still running.
    t0 = time.monotonic()
    p = fclient.post("/predict", files=_files(demo_sample))
    took = time.monotonic() - t0
    assert p.status_code == 200, p.text
    states = [fclient.get(f"/jobs/{i}").json() for i in ids]
    assert all(s["status"] in ("queued", "running") and s["progress"]["step"] < 1000 for s in states), states
    print(f"predict during 2 running jobs: {took * 1000:.0f} ms")

    runtime = fclient.app.state.runtime
    deleted = [runtime.jobs.get(i) for i in ids]
    runners = [runtime.jobs._tasks[i].work.runner for i in ids]   # the optimisations the worker advances
    for i in ids:
        assert fclient.delete(f"/jobs/{i}").status_code == 204
        gone = fclient.get(f"/jobs/{i}")  # deleted means gone, as REST clients expect
        assert gone.status_code == 404 and gone.headers["content-type"].startswith("application/problem+json")
    # The worker stops the cancelled jobs: their step counters freeze and no slice is queued any more.
    time.sleep(0.5)
    frozen = [r.step for r in runners]
    time.sleep(0.5)
    assert [r.step for r in runners] == frozen and all(step < 1000 for step in frozen)
    assert all(job.status == "cancelled" for job in deleted)
    assert not runtime.batchers["demo"]._background
    # Capacity is free again.
    r = fclient.post("/models/demo/class-impressions", json={"target": 1, "steps": 5})
    assert r.status_code == 202
    assert _wait(fclient, r.json()["id"])["status"] == "done"
    model = fclient.app.state.runtime.registry.get("demo").module
    assert all(not m._forward_hooks for m in model.modules())
    assert all(not p.requires_grad for p in model.parameters())
