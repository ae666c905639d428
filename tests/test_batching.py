"""DynamicBatcher behaviour with a fake runner (no model): grouping, bounds, deadlines, isolation, draining."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batching import DynamicBatcher
from service.errors import DeadlineExceeded, ModelExecutionError, QueueFull, ServiceUnavailable


class Recorder:
    """A run_batch that records every batch and returns (key, payload * 10); can be slowed or poisoned."""

    def __init__(self, delay: float = 0.0, poison: object = None, gate: threading.Event | None = None):
        self.batches: list[tuple[object, list]] = []
        self.delay = delay
        self.poison = poison
        self.gate = gate
        self.lock = threading.Lock()

    def __call__(self, key, payloads):
        if self.gate is not None:
            self.gate.wait(5)
        with self.lock:
            self.batches.append((key, list(payloads)))
        if self.delay:
            time.sleep(self.delay)
        if self.poison is not None and self.poison in payloads:
            raise RuntimeError("poisoned batch")
        return [(key, p * 10) for p in payloads]


def make(runner, **kw) -> DynamicBatcher:
    b = DynamicBatcher("m", runner, **kw)
    b.start()
    return b


def test_groups_by_key_and_returns_each_job_its_own_result():
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = make(rec, max_batch_size=8, max_batch_delay_ms=50)
    futs = [b.submit(("a" if i % 2 else "b",), i) for i in range(8)]
    gate.set()
    results = [f.result(5) for f in futs]
    b.stop()
    assert results == [(("a" if i % 2 else "b",), i * 10) for i in range(8)]
    for key, payloads in rec.batches:
        assert all((p % 2 == 1) == (key == ("a",)) for p in payloads), "a batch mixed keys"
    assert sum(len(p) for _, p in rec.batches) == 8
    assert max(len(p) for _, p in rec.batches) > 1, "nothing was batched"


def test_batch_never_exceeds_max_rows_and_big_jobs_run_alone():
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = make(rec, max_batch_size=4, max_batch_delay_ms=20, max_queue=100)
    futs = [b.submit(("k",), i, size=1) for i in range(10)] + [b.submit(("k",), 99, size=6)]
    gate.set()
    for f in futs:
        f.result(5)
    b.stop()
    for _, payloads in rec.batches:
        rows = sum(6 if p == 99 else 1 for p in payloads)
        assert rows <= 4 or payloads == [99]


def test_waits_for_delay_to_fill_a_batch():
    rec = Recorder()
    b = make(rec, max_batch_size=4, max_batch_delay_ms=200)
    f1 = b.submit(("k",), 1)
    time.sleep(0.05)
    f2 = b.submit(("k",), 2)
    assert f1.result(5) and f2.result(5)
    b.stop()
    assert rec.batches == [(("k",), [1, 2])]


def test_full_queue_rejects_at_once_with_retry_after():
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = make(rec, max_batch_size=1, max_batch_delay_ms=0, max_queue=3)
    accepted = []
    rejected = 0
    for i in range(20):
        try:
            accepted.append(b.submit(("k",), i))
        except QueueFull as exc:
            rejected += 1
            assert int(exc.headers["Retry-After"]) >= 1
    assert b.queued_rows <= 3
    assert rejected >= 16
    gate.set()
    assert all(f.result(5) for f in accepted)
    b.stop()
    assert b.stats.rejected_full == rejected


def test_poisoned_job_fails_alone():
    gate = threading.Event()
    rec = Recorder(poison=13, gate=gate)
    b = make(rec, max_batch_size=8, max_batch_delay_ms=50)
    futs = {i: b.submit(("k",), i) for i in (11, 12, 13, 14, 15)}
    gate.set()
    for i, f in futs.items():
        if i == 13:
            with pytest.raises(ModelExecutionError):
                f.result(5)
        else:
            assert f.result(5) == (("k",), i * 10)
    b.stop()
    assert b.stats.splits >= 1


def test_expired_and_cancelled_jobs_never_reach_the_model():
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = make(rec, max_batch_size=1, max_batch_delay_ms=0)
    blocker = b.submit(("k",), 0)
    time.sleep(0.05)  # the worker is now blocked on the gate with job 0
    expired = b.submit(("k",), 1, timeout=0.01)
    cancelled = b.submit(("k",), 2)
    cancelled.cancel()
    alive = b.submit(("k",), 3)
    time.sleep(0.05)
    gate.set()
    assert blocker.result(5) and alive.result(5)
    with pytest.raises(DeadlineExceeded):
        expired.result(5)
    b.stop()
    ran = [p for _, ps in rec.batches for p in ps]
    assert 1 not in ran and 2 not in ran
    assert b.stats.dropped_expired == 1 and b.stats.dropped_cancelled == 1


def test_async_run_times_out_with_504_error():
    rec = Recorder(delay=0.5)
    b = make(rec, max_batch_size=1, max_batch_delay_ms=0)

    async def go():
        with pytest.raises(DeadlineExceeded):
            await b.run(("k",), 1, timeout=0.05)
        return await b.run(("k",), 2, timeout=5)

    assert asyncio.run(go()) == (("k",), 20)
    b.stop()


def test_stop_drains_queued_work_then_refuses():
    rec = Recorder(delay=0.02)
    b = make(rec, max_batch_size=2, max_batch_delay_ms=0)
    futs = [b.submit(("k",), i) for i in range(10)]
    b.stop(grace=5)
    assert [f.result(0) for f in futs] == [(("k",), i * 10) for i in range(10)]
    with pytest.raises(ServiceUnavailable):
        b.submit(("k",), 1)


def test_stop_fails_what_the_grace_period_cannot_finish():
    rec = Recorder(delay=0.2)
    b = make(rec, max_batch_size=1, max_batch_delay_ms=0)
    futs = [b.submit(("k",), i) for i in range(10)]
    b.stop(grace=0.3)
    outcomes = []
    for f in futs:
        try:
            f.result(0)
            outcomes.append("ok")
        except ServiceUnavailable:
            outcomes.append("503")
    assert "ok" in outcomes and "503" in outcomes


def test_no_delay_when_no_more_jobs_are_expected():
    rec = Recorder()
    expecting = {"more": False}
    b = DynamicBatcher("m", rec, max_batch_size=8, max_batch_delay_ms=2000, expecting_more=lambda: expecting["more"])
    b.start()
    t0 = time.monotonic()
    assert b.submit(("k",), 1).result(5) == (("k",), 10)
    assert time.monotonic() - t0 < 1.0, "a lone job waited for company that could not come"
    expecting["more"] = True
    f1 = b.submit(("k",), 2)
    time.sleep(0.2)
    expecting["more"] = False
    f2 = b.submit(("k",), 3)  # its submit re-checks: nobody else is coming, so the batch of two runs now
    assert f1.result(5) and f2.result(5)
    b.stop()
    assert rec.batches[-1] == (("k",), [2, 3])


def test_background_work_waits_for_live_traffic_to_pause():
    gate = threading.Event()
    rec = Recorder(gate=gate)
    decoding = {"n": 1}
    b = DynamicBatcher("m", rec, max_batch_size=4, max_batch_delay_ms=0, expecting_more=lambda: decoding["n"] > 0)
    b.start()
    ran = threading.Event()
    b.call_exclusive(ran.set, background=True)
    time.sleep(0.2)
    assert not ran.is_set(), "background work ran while a request was being decoded"
    f = b.submit(("k",), 1)
    decoding["n"] = 0
    gate.set()
    assert f.result(5)
    assert ran.wait(2), "background work never ran once traffic paused"
    b.stop()


def test_a_batch_whose_submitters_gave_up_can_stop_early():
    """Long batch work checks ``batch_abandoned()`` between chunks; once every submitter's deadline passed it stops
    with ``Abandoned`` (no retry, no split) and the worker serves the next batch."""
    import asyncio

    from service.batching import Abandoned, batch_abandoned

    chunks_run = []

    def run_batch(key, payloads):
        if key == "slow":
            for k in range(500):
                time.sleep(0.01)
                chunks_run.append(k)
                if batch_abandoned():
                    raise Abandoned()
        return [p for p in payloads]

    b = DynamicBatcher("m", run_batch, max_batch_size=4, max_batch_delay_ms=0)
    b.start()
    try:
        async def scenario():
            with pytest.raises(DeadlineExceeded):
                await b.run("slow", 1, timeout=0.2)
            return await b.run("fast", 2, timeout=5)

        assert asyncio.run(scenario()) == 2
        assert b.stats.abandoned == 1 and b.stats.splits == 0
        assert 5 <= len(chunks_run) < 100   # stopped a few chunks after the 0.2 s deadline, not after 5 s
    finally:
        b.stop(1.0)
