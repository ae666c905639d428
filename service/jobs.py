"""Background jobs (class impressions) that run on a model's worker thread in short slices.

A job is a resumable *runner* (an object with ``run(n, should_yield) -> steps_run``, ``done``, ``step``,
``probability``) bound to one model's :class:`~service.batching.DynamicBatcher`. Each slice is submitted with
``call_exclusive``, so it runs on the worker *between* request batches (the batcher only runs exclusive work when no
request rows are queued), does at most ``slice_steps`` steps (fewer as soon as request rows are waiting: the runner
is asked after every step) and re-queues itself. Live traffic waits for at most one optimisation step, and the model
is never used by two threads at once.

Admission: at most ``max_running`` unfinished jobs (queued or running) at once; more → ``TooManyJobs`` (429 with
Retry-After). Finished jobs (done, failed, cancelled by shutdown) are kept for ``ttl`` seconds, then forgotten
(404); a job deleted by its client (``cancel``) is gone at once, as REST clients expect of ``DELETE``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import TooManyJobs, UnknownJob

log = logging.getLogger("xaas.jobs")

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")


class Runner(Protocol):
    step: int
    probability: float | None

    @property
    def done(self) -> bool: ...

    def run(self, n: int, should_yield: Callable[[], bool] | None = None) -> int: ...


class ExclusiveRunner(Protocol):
    accepting: bool
    live_traffic: bool

    def call_exclusive(self, fn: Callable[[], None], *, background: bool = False) -> None: ...


@dataclass
class Job:
    id: str
    kind: str
    model: str
    steps: int
    runner: Any
    finish: Callable[[Any], dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "queued"
    step: int = 0
    probability: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    slices: int = 0
    cancel_requested: bool = False

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "kind": self.kind, "model": self.model, "status": self.status,
                               "progress": {"step": self.step, "steps": self.steps}, **self.meta}
        if self.probability is not None:
            doc["probability"] = self.probability
        if self.status == "done" and self.result is not None:
            doc.update(self.result)
        if self.error:
            doc["error"] = self.error
        return doc


class JobManager:
    def __init__(self, *, max_running: int = 2, ttl: float = 600.0, slice_steps: int = 10):
        self.max_running = max_running
        self.ttl = ttl
        self.slice_steps = max(1, slice_steps)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stopping = False

    # -- public ----------------------------------------------------------------------------------------------------
    def submit(self, batcher: ExclusiveRunner, runner: Runner, *, kind: str, model: str, steps: int,
               finish: Callable[[Any], dict[str, Any]], meta: dict[str, Any] | None = None) -> Job:
        with self._lock:
            self._purge_locked()
            active = [j for j in self._jobs.values() if j.status in ACTIVE]
            if len(active) >= self.max_running:
                raise TooManyJobs(len(active), self.max_running, self._retry_after(active))
            job = Job(uuid.uuid4().hex, kind, model, steps, runner, finish, dict(meta or {}))
            self._jobs[job.id] = job
        batcher.call_exclusive(lambda: self._slice(job, batcher), background=True)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            self._purge_locked()
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(job_id, self.ttl)
        return job

    def cancel(self, job_id: str) -> Job:
        """Delete a job: an unfinished one stops before its next slice. Either way it is gone (404) afterwards."""
        with self._lock:
            self._purge_locked()
            job = self._jobs.pop(job_id, None)
            if job is None:
                raise UnknownJob(job_id, self.ttl)
            if job.status in ACTIVE:
                job.cancel_requested = True
                job.status = "cancelled"
                job.finished = time.monotonic()
                job.runner = None  # free the optimiser state now; the pending slice sees cancel_requested
        return job

    def active(self) -> int:
        with self._lock:
            return sum(j.status in ACTIVE for j in self._jobs.values())

    def stop(self) -> None:
        """Cancel every unfinished job; pending slices end without re-queuing (so the workers can drain)."""
        with self._lock:
            self._stopping = True
            for job in self._jobs.values():
                if job.status in ACTIVE:
                    job.cancel_requested = True
                    job.status = "cancelled"
                    job.finished = time.monotonic()
                    job.runner = None

    # -- worker side -------------------------------------------------------------------------------------------------
    def _slice(self, job: Job, batcher: ExclusiveRunner) -> None:
        """Runs on the model's worker thread: a few steps, then re-queue (or finish)."""
        with self._lock:
            if job.cancel_requested or self._stopping or not batcher.accepting:
                if job.status in ACTIVE:
                    job.status, job.finished, job.runner = "cancelled", time.monotonic(), None
                return
            runner = job.runner
            if job.status == "queued":
                job.status, job.started = "running", time.monotonic()
        try:
            # Yield the worker as soon as requests are queued or being decoded (one step of delay at most).
            runner.run(self.slice_steps, should_yield=lambda: batcher.live_traffic)
            done = runner.done
            result = job.finish(runner) if done else None
        except Exception as exc:
            log.exception("job %s failed", job.id)
            with self._lock:
                if job.status in ACTIVE:
                    job.status, job.error, job.finished, job.runner = ("failed", f"{exc.__class__.__name__}: {exc}",
                                                                       time.monotonic(), None)
            return
        with self._lock:
            job.slices += 1
            job.step, job.probability = runner.step, runner.probability
            if job.status not in ACTIVE:  # cancelled while this slice ran
                return
            if done:
                job.status, job.result, job.finished, job.runner = "done", result, time.monotonic(), None
                return
        batcher.call_exclusive(lambda: self._slice(job, batcher), background=True)

    # -- internals ---------------------------------------------------------------------------------------------------
    def _purge_locked(self) -> None:
        now = time.monotonic()
        for jid in [j.id for j in self._jobs.values() if j.finished is not None and now - j.finished > self.ttl]:
            del self._jobs[jid]

    def _retry_after(self, active: list[Job]) -> int:
        """Seconds until the soonest running job should finish, from its pace so far (1..60)."""
        now = time.monotonic()
        best = 60.0
        for j in active:
            if j.started is not None and j.step > 0:
                best = min(best, (now - j.started) / j.step * max(0, j.steps - j.step))
        return int(max(1, min(60, round(best))))
