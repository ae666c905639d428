"""Overload over HTTP: a bounded queue answers 429 with Retry-After (never 5xx), deadlines answer 504."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.support import make_client, wait_ready


def test_flood_beyond_the_queue_gets_429s_and_every_accepted_request_completes(demo_sample):
    data = demo_sample[0]
    with make_client(max_queue=2, max_batch_size=1, max_batch_delay_ms=0, cache_bytes=0) as c:  # every request queues
        wait_ready(c)

        def ask(_):
            r = c.post("/explain/smoothgrad", files={"image": ("x.png", data)}, data={"samples": "30"})
            return r.status_code, r.headers.get("retry-after"), r.headers.get("content-type", "")

        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(ask, range(12)))
        batcher = c.app.state.runtime.batchers["demo"]
        assert batcher.queued_rows == 0
        metrics = c.get("/metrics").text
    statuses = [s for s, _, _ in outcomes]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 3
    for status, retry_after, ctype in outcomes:
        if status == 429:
            assert int(retry_after) >= 1 and ctype.startswith("application/problem+json")
    assert batcher.stats.items_run == statuses.count(200)
    assert f'xaas_rejections_total{{model="demo"}} {float(statuses.count(429))}' in metrics


def test_deadline_gives_504_and_the_job_never_runs(demo_sample):
    with make_client(max_batch_size=1, max_batch_delay_ms=0) as c:
        wait_ready(c)
        batcher = c.app.state.runtime.batchers["demo"]
        # occupy the worker, then send a request whose deadline expires while it waits in the queue
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(lambda: c.post("/explain/occlusion", files={"image": ("x.png", demo_sample[0])},
                                              data={"window": "8", "stride": "4"}))
            time.sleep(0.3)
            r = c.post("/predict", files={"image": ("x.png", demo_sample[0])}, data={"timeout": "1"})
            assert busy.result().status_code == 200
        assert r.status_code == 504 and r.headers["content-type"].startswith("application/problem+json")
        assert "within 1 s" in r.json()["detail"] or "deadline passed" in r.json()["detail"]
        time.sleep(0.2)
        assert batcher.stats.dropped_cancelled + batcher.stats.dropped_expired >= 1
        # the service is still serving
        assert c.post("/predict", files={"image": ("x.png", demo_sample[0])}).status_code == 200


def test_request_timeout_option_cannot_exceed_the_server_limit(demo_sample):
    with make_client(request_timeout=5) as c:
        wait_ready(c)
        assert c.app.state.runtime.timeout(3600) == 5
        assert c.app.state.runtime.timeout(0.5) == 0.5
        image = {"image": ("x.png", demo_sample[0])}
        assert c.post("/predict", files=image, data={"timeout": "7200"}).status_code == 422
        # Below one second a deadline cannot cover decoding, batching and rendering: refused, not a certain 504.
        assert c.post("/predict", files=image, data={"timeout": "0.5"}).status_code == 422
