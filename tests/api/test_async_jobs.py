"""Asynchronous explanations: ``Prefer: respond-async`` → 202 + Location; ``GET /jobs/{id}`` → progress, then exactly
the synchronous body; ``DELETE`` → gone; bounded by ``XAAS_MAX_JOBS``; a sync request past its deadline is told how
to go async; live traffic is served while a job runs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.support import decode_png, decode_raw, make_client, wait_ready

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture(scope="module")
def jclient():
    with make_client(max_jobs=3, job_step_ms=5) as c:   # tiny steps: many progress updates on the demo model
        wait_ready(c)
        yield c


def assert_same_body(job_result: dict, sync: dict) -> None:
    """The same document: identical structure and fields; numbers equal up to float rounding (a job runs its
    forwards in smaller chunks than a synchronous call, and batched convolutions round differently)."""
    assert job_result.keys() == sync.keys()
    for key in job_result:
        if key not in ("explanations", "boxes"):
            assert job_result[key] == sync[key], key
    for a, b in zip(job_result.get("explanations", []), sync.get("explanations", []), strict=True):
        assert a.keys() == b.keys() and (a["index"], a["label"]) == (b["index"], b["label"])
        assert a["score"] == pytest.approx(b["score"], rel=1e-4) and a["empty"] == b["empty"]
        if "heatmap" in a:
            diff = decode_png(a["heatmap"]).astype(int) - decode_png(b["heatmap"]).astype(int)
            assert abs(diff).max() <= 1
        if "raw" in a:
            assert a["raw"]["shape"] == b["raw"]["shape"]
            np.testing.assert_allclose(decode_raw(a["raw"]), decode_raw(b["raw"]), rtol=1e-3, atol=1e-5)
    assert job_result.get("boxes") == sync.get("boxes")


def _files(demo_sample):
    return {"image": ("sample.png", demo_sample[0], "image/png")}


def _wait(client, job_id, timeout=120.0, seen=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        doc = r.json()
        if seen is not None:
            seen.append(doc)
        if doc["status"] not in ("queued", "running"):
            return doc
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {doc}")


@pytest.mark.parametrize(("method", "params", "unit"), [
    ("scorecam", {}, "masked forwards"),
    ("rise", {"masks": "300"}, "masks"),
    ("occlusion", {"window": "16", "stride": "8"}, "windows"),
    ("integrated-gradients", {"steps": "64"}, "steps"),
    ("gradcam", {}, "steps"),
])
def test_async_explanation_reports_progress_and_returns_the_sync_body(jclient, demo_sample, method, params, unit):
    data = {"outputs": "heatmap,raw", "top_k": "2", **params}
    r = jclient.post(f"/explain/{method}", files=_files(demo_sample), data=data, headers=ASYNC)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert set(accepted) == {"id", "status"} and accepted["status"] in ("queued", "running")
    assert r.headers["location"] == f"/jobs/{accepted['id']}" and r.headers["preference-applied"] == "respond-async"
    seen: list[dict] = []
    doc = _wait(jclient, accepted["id"], seen=seen)
    assert doc["status"] == "done" and doc["kind"] == "explanation" and doc["method"] == method, doc
    progress = [s["progress"] for s in seen if s["status"] == "running" and s["progress"]["total"]]
    if method != "gradcam":
        assert progress and {p["unit"] for p in progress} == {unit}
        assert len({p["done"] for p in progress}) >= 2, progress          # it moved while we watched
        assert all(a["done"] <= b["done"] for a, b in zip(progress, progress[1:]))
    assert doc["progress"]["done"] == doc["progress"]["total"]
    sync = jclient.post(f"/explain/{method}", files=_files(demo_sample), data=data)
    assert sync.status_code == 200
    assert_same_body(doc["result"], sync.json())                          # the synchronous body


def test_async_localize_returns_the_sync_body(jclient, demo_sample):
    r = jclient.post("/localize", files=_files(demo_sample), headers={"Prefer": "wait=5, respond-async"})
    assert r.status_code == 202, r.text
    doc = _wait(jclient, r.json()["id"])
    assert doc["status"] == "done" and doc["kind"] == "localization"
    assert_same_body(doc["result"], jclient.post("/localize", files=_files(demo_sample)).json())


def test_without_the_preference_the_call_is_synchronous(jclient, demo_sample):
    for prefer in (None, "return=minimal", "respond-asynchronously"):
        headers = {"Prefer": prefer} if prefer else {}
        r = jclient.post("/explain/gradcam", files=_files(demo_sample), headers=headers)
        assert r.status_code == 200 and "explanations" in r.json(), prefer


@pytest.mark.parametrize(("path", "files_kind", "data", "status"), [
    ("/explain/rise", "good", {"masks": "0"}, 422),             # bad parameter: refused at once, no job
    ("/explain/rise", "good", {"bogus": "1"}, 400),
    ("/explain/nope", "good", {}, 404),
    ("/explain/gradcam", "broken", {}, 422),                    # undecodable image: refused at once
    ("/localize", "good", {"target": "hexagon"}, 422),
])
def test_bad_async_requests_are_refused_before_any_job(jclient, demo_sample, path, files_kind, data, status):
    before = len(jclient.app.state.runtime.jobs.store.active())
    files = _files(demo_sample) if files_kind == "good" else {"image": ("x.png", b"\x89PNG broken")}
    r = jclient.post(path, files=files, data=data, headers=ASYNC)
    assert r.status_code == status and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert len(jclient.app.state.runtime.jobs.store.active()) == before


def test_delete_cancels_a_running_job_and_live_traffic_is_served_meanwhile(jclient, demo_sample):
    r = jclient.post("/explain/rise", files=_files(demo_sample), data={"masks": "20000"}, headers=ASYNC)
    job_id = r.json()["id"]
    deadline = time.monotonic() + 30
    while jclient.get(f"/jobs/{job_id}").json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    p = jclient.post("/predict", files=_files(demo_sample))
    assert p.status_code == 200
    assert jclient.get(f"/jobs/{job_id}").json()["status"] == "running"
    assert jclient.delete(f"/jobs/{job_id}").status_code == 204
    assert jclient.get(f"/jobs/{job_id}").status_code == 404
    runtime = jclient.app.state.runtime
    time.sleep(0.3)
    assert not runtime.batchers["demo"]._background and not runtime.jobs.store.active()
    model = runtime.registry.get("demo").module
    assert all(not m._forward_hooks for m in model.modules())


def test_job_admission_is_bounded_with_retry_after(demo_sample):
    with make_client(max_jobs=1, job_step_ms=5) as c:
        wait_ready(c)
        first = c.post("/explain/rise", files=_files(demo_sample), data={"masks": "20000"}, headers=ASYNC)
        assert first.status_code == 202
        second = c.post("/explain/scorecam", files=_files(demo_sample), headers=ASYNC)
        assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
        assert second.headers["content-type"].startswith("application/problem+json")
        assert c.delete(f"/jobs/{first.json()['id']}").status_code == 204
        third = c.post("/explain/gradcam", files=_files(demo_sample), headers=ASYNC)
        assert third.status_code == 202


def test_a_job_that_fails_says_why(jclient, demo_sample):
    r = jclient.post("/explain/fused-cam", files=_files(demo_sample), data={"fine_layer": "no.such.layer"},
                     headers=ASYNC)
    assert r.status_code == 202
    doc = _wait(jclient, r.json()["id"])
    assert doc["status"] == "failed" and "no.such.layer" in doc["error"] and "result" not in doc


def test_a_sync_request_past_its_deadline_is_told_to_go_async(demo_sample):
    with make_client(request_timeout=1, max_batch_size=1, max_batch_delay_ms=0) as c:
        wait_ready(c)
        t0 = time.monotonic()
        r = c.post("/explain/rise", files=_files(demo_sample), data={"masks": "20000"})
        assert r.status_code == 504
        assert "Prefer: respond-async" in r.json()["detail"]
        # Nobody waits for it any more: the batch stops after its current chunk instead of running to the end.
        batcher = c.app.state.runtime.batchers["demo"]
        deadline = time.monotonic() + 10
        while batcher.stats.abandoned == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert batcher.stats.abandoned == 1
        assert c.post("/predict", files=_files(demo_sample)).status_code == 200
        assert time.monotonic() - t0 < 10   # the full 20000 masks take ~25 s on the demo model


def test_an_async_request_whose_maps_are_cached_is_done_without_model_work(jclient, demo_sample):
    data = {"top_k": "1", "masks": "250"}
    sync = jclient.post("/explain/rise", files=_files(demo_sample), data=data)
    assert sync.status_code == 200 and sync.headers["x-cache"] == "miss"
    batcher = jclient.app.state.runtime.batchers["demo"]
    before = batcher.stats.batches
    r = jclient.post("/explain/rise", files=_files(demo_sample), data=data, headers=ASYNC)
    doc = _wait(jclient, r.json()["id"])
    assert doc["status"] == "done" and doc["progress"]["total"] == 1
    assert doc["result"] == sync.json() and batcher.stats.batches == before
    # and a job's maps serve later synchronous calls
    r = jclient.post("/explain/rise", files=_files(demo_sample), data={"top_k": "1", "masks": "260"}, headers=ASYNC)
    _wait(jclient, r.json()["id"])
    again = jclient.post("/explain/rise", files=_files(demo_sample), data={"top_k": "1", "masks": "260"})
    assert again.headers["x-cache"] == "hit"
