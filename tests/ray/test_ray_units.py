"""The Ray pieces that need no cluster: the limits derived from the settings, the shared job records' leases and
per-replica admission, the metric twins, and the CLI's flags."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[ray]')")

from service.cli import main
from service.config import Settings
from service.errors import TooManyJobs
from service.jobs import Job
from service.metrics import Metrics
from service.ray_app import _Tee, mirror_to_ray, serve_limits
from service.ray_jobs import _JobRecords

pytestmark = pytest.mark.ray


def test_limits_line_up_with_the_settings():
    s = Settings(max_batch_size=16, max_queue=256, request_timeout=30, body_timeout=30, shutdown_grace=20)
    limits = serve_limits(s, replicas=3)
    assert limits.max_ongoing_requests == 32 <= s.max_queue
    assert limits.max_queued_requests == 32 * 3
    assert limits.request_timeout_s > s.request_timeout + s.body_timeout
    assert limits.graceful_shutdown_timeout_s > s.shutdown_grace
    small = serve_limits(Settings(max_batch_size=16, max_queue=10))
    assert small.max_ongoing_requests == 10   # never more in a replica than a model queue holds
    fixed = serve_limits(Settings(ray_max_ongoing_requests=3, ray_max_queued_requests=0, ray_retry_after=7))
    assert (fixed.max_ongoing_requests, fixed.max_queued_requests, fixed.retry_after_s) == (3, 0, 7)


def test_job_records_fail_the_jobs_of_a_replica_whose_lease_ran_out():
    records = _JobRecords()
    records.heartbeat("a", 0.2)
    records.heartbeat("b", 60)
    records.add(Job("j1", "explanation", "demo", status="running", owner="a"), 8)
    records.add(Job("j2", "explanation", "demo", status="running", owner="b"), 8)
    assert records.get("j1").status == "running"
    time.sleep(0.3)
    job = records.get("j1")
    assert job.status == "failed" and "replica" in job.error and job.finished is not None
    assert records.get("j2").status == "running"   # the live replica's job is untouched
    records.release("b")                           # a clean stop gives the lease back: what is left unfinished fails
    assert records.get("j2").status == "failed"


def test_job_admission_counts_the_submitting_replicas_jobs():
    records = _JobRecords()
    for owner in ("a", "b"):
        records.heartbeat(owner, 60)
    assert records.add(Job("a1", "explanation", "demo", owner="a"), 1) is None
    refused = records.add(Job("a2", "explanation", "demo", owner="a"), 1)
    assert refused is not None and refused[0] == 1 and 1 <= refused[1] <= 60
    assert records.add(Job("b1", "explanation", "demo", owner="b"), 1) is None   # another replica has room
    assert [j.id for j in records.active("a")] == ["a1"]
    assert TooManyJobs(*refused[:1], 1, refused[1]).status == 429


def test_every_metric_gets_a_ray_twin_and_still_renders():
    metrics = mirror_to_ray(Metrics())
    assert isinstance(metrics.requests, _Tee) and isinstance(metrics.latency, _Tee)
    metrics.requests.labels("/predict", "POST", "200").inc()
    metrics.latency.labels("/predict").observe(0.01)
    metrics.queue_depth("demo", 3)
    metrics.cache_hit()
    text = metrics.render().decode()
    assert 'xaas_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'xaas_queue_rows{model="demo"} 3.0' in text and "xaas_cache_hits_total 1.0" in text


def test_ray_flags_need_ray(capsys):
    assert main(["serve", "--replicas", "2"]) == 2
    assert "only apply with --ray" in capsys.readouterr().err
    assert main(["serve", "--ray", "--replicas", "0"]) == 2


def test_check_health_fails_with_the_runtimes_problems():
    from service.ray_app import XaasReplica

    class _Runtime:
        problems: list[str] = []

        def health(self) -> list[str]:
            return self.problems

    replica = object.__new__(XaasReplica)
    replica.runtime = _Runtime()
    replica.check_health()                       # healthy: returns
    replica.runtime.problems = ["the worker thread of model 'demo' died"]
    with pytest.raises(RuntimeError, match="worker thread of model 'demo' died"):
        replica.check_health()


def test_serves_plain_text_errors_become_problems_and_the_apps_pass_through():
    import asyncio

    from service.ray_proxy import ServeProblems

    def app_answering(status, content_type, body):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", content_type), (b"retry-after", b"2"), (b"x-request-id", b"r1"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        return app

    def run(app):
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(ServeProblems(app)({"type": "http"}, None, send))
        return sent

    start, body = run(app_answering(429, b"text/plain", b"Request dropped due to backpressure."))
    headers = dict(start["headers"])
    assert start["status"] == 429 and headers[b"content-type"] == b"application/problem+json"
    assert headers[b"retry-after"] == b"2" and headers[b"x-request-id"] == b"r1"
    doc = __import__("json").loads(body["body"])
    assert doc["status"] == 429 and doc["detail"].startswith("Request dropped due to backpressure.")
    ours = b'{"status": 429}'
    start, body = run(app_answering(429, b"application/problem+json", ours))
    assert body["body"] == ours                       # the app's own problem: untouched
    start, body = run(app_answering(200, b"application/json", b"{}"))
    assert start["status"] == 200 and body["body"] == b"{}"
