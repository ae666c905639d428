"""xaas on Ray Serve: a real local cluster (2 CPUs, 127.0.0.1, its own network namespace), 2 replicas of the whole app.

One cluster for the module, started by ``xaas serve --ray``: tests/ray/serve_scenarios.py runs every scenario in order
inside ``unshare --pid -n -m`` and reports what it saw as JSON; each test here checks one scenario. About 1.5 minutes
on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[ray]')")

pytestmark = pytest.mark.ray


def _namespace_reason() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare/ip are needed to give the Ray cluster a private network namespace"
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "-n", "-m", "true"],
                      capture_output=True).returncode != 0:
        return "cannot create PID, network and mount namespaces here (unshare needs CAP_SYS_ADMIN)"
    return None


@pytest.fixture(scope="module")
def seen() -> dict:
    reason = _namespace_reason()
    if reason:
        pytest.skip(reason)
    script = Path(__file__).with_name("serve_scenarios.py")
    # Own PID namespace too (--pid --fork --kill-child): however the run ends, even killed by the timeout, every Ray
    # process it started dies with it — none is left behind on a shared machine.
    run = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "-n", "-m", sys.executable,
                          str(script)], capture_output=True, text=True, timeout=280,
                         env={**os.environ, "PYTHONPATH": str(script.parents[2]), "RAY_USAGE_STATS_ENABLED": "0"})
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _ok(seen: dict, name: str) -> dict:
    result = seen[name]
    assert "step_error" not in result, result.get("trace", result)
    return result


def test_requests_spread_over_both_replicas_with_one_request_id(seen):
    r = _ok(seen, "spread")
    assert set(r["statuses"]) == {200} and r["ready"] == 200
    assert len(set(r["served_by"])) == 2
    assert all(len(ids) == 1 for ids in r["request_ids"])  # Serve's proxy adds it; the app does not add a second
    assert r["echoed"] == ["client-chosen-id"]


def test_each_replica_batches_with_its_own_batcher(seen):
    r = _ok(seen, "batching")
    # Serve counts a request against max_queued_requests until it is assigned to a replica, so even within the limits
    # a burst may see a few 429 + Retry-After (never another error)
    assert set(r["statuses"]) <= {200, 429} and r["statuses"].count(200) >= len(r["statuses"]) * 0.8, r
    assert len(r["per_replica"]) == 2
    # mean rows per model pass above 1 on at least one replica: concurrent requests shared a pass
    assert any(m["xaas_batch_rows_sum"] > m["xaas_batch_rows_count"] for m in r["per_replica"].values())


def test_a_job_is_polled_read_and_deleted_through_any_replica(seen):
    r = _ok(seen, "jobs")
    assert r["accepted"] == 202
    assert {who for who, _, _ in r["polls"]} >= {r["created_on"]} and len({who for who, _, _ in r["polls"]}) == 2
    assert all(code == 200 for _, code, _ in r["polls"])
    assert r["done_has_heatmap"]
    assert r["deleted"] == 204
    assert {code for _, code in r["after_delete"]} == {404} and len(r["after_delete"]) == 2


def test_a_rolling_redeploy_with_requests_in_flight_loses_none(seen):
    r = _ok(seen, "redeploy")
    assert set(r["codes"]) == {"200"} and r["codes"]["200"] > 10
    assert set(r["all_served"]) - set(r["before"])  # the new replicas served too


def test_overflow_is_429_with_retry_after(seen):
    r = _ok(seen, "overflow")
    assert set(r["codes"]) == {200, 429}
    assert r["retry_after"] == ["3"]     # XAAS_RAY_RETRY_AFTER
    # Serve's own answer, rewritten in its proxy (service/ray_proxy.py) into the service's problem shape
    assert r["content_types"] == ["application/problem+json"]
    assert r["problem"]["status"] == 429 and r["problem"]["type"].endswith("/queue-full")
    assert "Ray Serve" in r["problem"]["detail"]
    assert r["request_ids"] == [1]


def test_a_dead_replicas_running_job_fails_and_reads_so_elsewhere(seen):
    r = _ok(seen, "replica_dies")
    assert r["accepted"] == 202
    assert r["status"] == "failed" and "replica" in r["error"]
    assert r["read_by"] != r["owner"]


def test_sigterm_with_requests_in_flight_loses_none_and_exits_cleanly(seen):
    r = _ok(seen, "sigterm")
    assert r["codes"] == [200, 200, 200, 200], r
    assert r["exit"] == 0, r


def test_the_services_metrics_reach_rays_endpoint_per_replica(seen):
    r = _ok(seen, "ray_metrics")
    assert set(r["served_replicas"]) <= set(r["requests_replicas"]), r   # one scrape sees every replica
    assert {"ray_xaas_request_seconds_bucket", "ray_xaas_batch_rows_sum", "ray_xaas_model_ready"} <= set(r["names"])
