"""The job system without a model: slicing between batches, admission, progress, deletion, TTL, shutdown, failure."""

from __future__ import annotations

import pytest

from service.engine.passes import Progress
from service.errors import InvalidOption, NotFound, QueueFull
from service.jobs import JobScheduler, JobWork, StepsWork


class _FakeBatcher:
    """Runs exclusive calls when ``pump`` is called (no thread), like the worker between batches."""

    def __init__(self):
        self.accepting, self.queued_rows, self.pending = True, 0, []

    @property
    def live_traffic(self):
        return self.queued_rows > 0

    def call_exclusive(self, fn, *, background=False):
        assert background, "jobs run as background work"
        self.pending.append(fn)

    def pump(self, n=1000):
        for _ in range(n):
            if not self.pending:
                return
            self.pending.pop(0)()


class _Counter(JobWork):
    def __init__(self, steps):
        self.steps, self.step = steps, 0
        self.progress = Progress(0, steps, "steps")

    def advance(self):
        self.step += 1
        self.progress = Progress(self.step, self.steps, "steps")
        return self.step >= self.steps

    def outcome(self):
        return self.step

    def live(self):
        return {"probability": self.step / self.steps}


@pytest.fixture()
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("service.jobs.time.time", lambda: now[0])
    return now


def test_slices_limit_yield_delete_ttl_and_stop(clock):
    jobs, b = JobScheduler(max_active=2, ttl=60, slice_steps=10, slice_seconds=60), _FakeBatcher()
    submit = lambda steps: jobs.submit(b, _Counter(steps), kind="t", model="m",  # noqa: E731
                                       finish=lambda raw: {"steps": raw})
    a, c = submit(25), submit(1000)
    with pytest.raises(QueueFull) as exc:
        submit(5)
    assert int(exc.value.headers["Retry-After"]) >= 1
    b.pump(2)  # one slice each: 10 steps, re-queued
    a_doc, c_doc = jobs.get(a.id).to_json(), jobs.get(c.id).to_json()
    assert (a_doc["status"], a_doc["progress"]["done"], c_doc["progress"]["done"], len(b.pending)) == \
        ("running", 10, 10, 2)
    assert a_doc["probability"] == 10 / 25 and a_doc["progress"]["total"] == 25
    b.queued_rows = 3  # requests waiting: a slice yields after one step
    b.pump(2)
    assert (jobs.get(a.id).progress.done, jobs.get(c.id).progress.done) == (11, 11)
    b.queued_rows = 0
    jobs.cancel(c.id)
    with pytest.raises(NotFound):  # a deleted job is gone at once
        jobs.get(c.id)
    b.pump()
    done = jobs.get(a.id).to_json()
    assert done["status"] == "done" and done["result"] == {"steps": 25} and done["progress"]["done"] == 25
    assert not b.pending  # the deleted job's pending slice ended without re-queuing
    clock[0] += 61  # past the TTL: finished jobs are forgotten
    with pytest.raises(NotFound):
        jobs.get(a.id)
    d = submit(50)
    jobs.stop()
    b.pump()
    assert jobs.get(d.id).status == "cancelled" and not b.pending  # a stopped scheduler never re-queues


def test_time_bounded_slices_and_a_failing_job_fails_alone(clock):
    jobs, b = JobScheduler(max_active=4, slice_steps=1000, slice_seconds=0.0), _FakeBatcher()
    slow = jobs.submit(b, _Counter(5), kind="t", model="m", finish=lambda raw: {})
    b.pump(1)
    assert jobs.get(slow.id).progress.done == 1   # a zero time budget still makes one step per slice

    class Broken(_Counter):
        def advance(self):
            raise InvalidOption("bad parameter for this model")

    broken = jobs.submit(b, Broken(3), kind="t", model="m", finish=lambda raw: {})
    b.pump()
    assert jobs.get(broken.id).status == "failed" and "bad parameter" in jobs.get(broken.id).error
    assert jobs.get(slow.id).status == "done"


def test_steps_work_runs_a_generator_and_reports_its_progress():
    def steps():
        for k in range(3):
            yield Progress(k + 1, 3, "masks")
        return "value"

    work = StepsWork(steps, unit="masks")
    assert work.progress == Progress(0, 0, "masks")
    finished = [work.advance() for _ in range(4)]
    assert finished == [False, False, False, True] and work.outcome() == "value"
    assert work.progress == Progress(3, 3, "masks")


def test_jobs_that_run_too_long_fail(clock, monkeypatch):
    mono = [0.0]
    monkeypatch.setattr("service.jobs.time.monotonic", lambda: mono[0])
    jobs, b = JobScheduler(max_active=1, slice_steps=1, max_seconds=10), _FakeBatcher()
    job = jobs.submit(b, _Counter(100), kind="t", model="m", finish=lambda raw: {})
    b.pump(1)
    mono[0] = 11.0
    b.pump(1)
    assert jobs.get(job.id).status == "failed" and "longer than 10 s" in jobs.get(job.id).error
