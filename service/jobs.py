"""Asynchronous jobs: slow explanations and class impressions, run on a model's worker in short slices.

One job system for every kind of long work. A job is a record (:class:`Job`, kept in a :class:`JobStore` — in memory
by default; a shared store lets replicas answer each other's polls) plus, on the replica that runs it, its *work*: an
object advanced one step at a time on the model's worker thread (:class:`JobWork`; :class:`StepsWork` adapts an
engine method's generator of progress, so Score-CAM advances by chunks of masked forwards, RISE by masks, occlusion
by windows, IG by steps).

Scheduling (:class:`JobScheduler`): each slice is queued as *background* work on the model's
:class:`~service.batching.DynamicBatcher`, which runs it between request batches only after a pause in live traffic
(or, so that a job is never starved, once it has waited ``BACKGROUND_MAX_WAIT_S``). A slice does at most
``slice_steps`` steps and ``slice_seconds`` of work and stops after the current step as soon as requests are waiting,
then re-queues itself. So live traffic waits for at most one step, and the model is never used by two threads.
When the work is done its raw result is turned into the job's JSON ``result`` (PNG encoding and the like) in the
I/O thread pool, not on the worker.

Admission: at most ``max_active`` unfinished jobs (queued or running); more → :class:`TooManyJobs` (429 with
Retry-After). Finished jobs (done, failed, cancelled by shutdown) are kept for ``ttl`` seconds, then forgotten
(404); a job deleted by its client is gone at once, as REST clients expect of ``DELETE``; a job running longer than
``max_seconds`` fails.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from .engine.passes import Progress, Steps
from .errors import TooManyJobs, UnknownJob, XaasError

log = logging.getLogger("xaas.jobs")

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")

__all__ = ["ACTIVE", "FINISHED", "Job", "JobScheduler", "JobStore", "JobWork", "MemoryJobStore", "ReadyWork",
           "StepsWork"]


# --------------------------------------------------------------------------------------------------- work


class JobWork(ABC):
    """What a job does on its model's worker. Not thread-safe: only the worker touches it."""

    progress: Progress = Progress(0, 0, "steps")

    @abstractmethod
    def advance(self) -> bool:
        """One step; True once the work is finished (then :meth:`outcome` holds its raw result)."""

    @abstractmethod
    def outcome(self) -> Any:
        """The raw result (CPU data), read on the worker once :meth:`advance` returned True."""

    def live(self) -> dict[str, Any]:
        """Fields a poll shows while the job runs (e.g. a class impression's current probability)."""
        return {}


class StepsWork(JobWork):
    """An engine method's steps (a generator of :class:`Progress` returning its result) as job work. The generator
    is made on the worker at the first step (``make``), so nothing of it exists before the job runs."""

    def __init__(self, make: Callable[[], Steps[Any]], unit: str = "steps") -> None:
        self._make = make
        self._steps: Steps[Any] | None = None
        self._value: Any = None
        self.progress = Progress(0, 0, unit)

    def advance(self) -> bool:
        if self._steps is None:
            self._steps = self._make()
        try:
            self.progress = next(self._steps)
        except StopIteration as done:
            self._value = done.value
            self.progress = Progress(self.progress.total, self.progress.total, self.progress.unit)
            self._steps = None
            return True
        return False

    def outcome(self) -> Any:
        return self._value


class ReadyWork(JobWork):
    """Work whose outcome is already known (a cached result): one step, no model work."""

    def __init__(self, value: Any) -> None:
        self._value = value
        self.progress = Progress(0, 1, "steps")

    def advance(self) -> bool:
        self.progress = Progress(1, 1, "steps")
        return True

    def outcome(self) -> Any:
        return self._value


class BackgroundRunner(Protocol):
    """The side of a model's batcher that jobs use."""

    accepting: bool
    live_traffic: bool

    def call_exclusive(self, fn: Callable[[], None], *, background: bool = False) -> None: ...


# --------------------------------------------------------------------------------------------------- records


@dataclass
class Job:
    """A job's record: what a poll answers. ``result`` is, when done, exactly the body of the synchronous call."""

    id: str
    kind: str
    model: str
    status: str = "queued"
    progress: Progress = Progress(0, 0, "steps")
    meta: dict[str, Any] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    owner: str = ""  # the replica whose worker runs the job (a shared store fails its jobs when that replica dies)

    def to_json(self) -> dict[str, Any]:
        p = self.progress
        # step/steps: the names of the first job API (class impressions), kept for its clients.
        doc: dict[str, Any] = {"id": self.id, "kind": self.kind, "model": self.model, "status": self.status,
                               "progress": {"done": p.done, "total": p.total, "unit": p.unit, "step": p.done,
                                            "steps": p.total},
                               **self.meta, **self.live}
        if self.status == "done" and self.result is not None:
            doc["result"] = self.result
        if self.error:
            doc["error"] = self.error
        return doc


class JobStore(ABC):
    """Where job records live. Thread-safe. In memory by default; a shared implementation lets every replica see
    every job (the record only: the work itself stays with the replica running it)."""

    @abstractmethod
    def add(self, job: Job, *, max_active: int) -> None:
        """Store a new job, or raise :class:`TooManyJobs` when ``max_active`` unfinished jobs exist already."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def update(self, job_id: str, **changes: Any) -> Job | None:
        """Apply ``changes`` to a stored job (None when it is gone, e.g. deleted meanwhile)."""

    @abstractmethod
    def delete(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def active(self) -> list[Job]: ...

    @abstractmethod
    def purge(self, older_than: float) -> None:
        """Forget jobs that finished before ``older_than`` (a ``time.time()`` value)."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for stores that hold no lease
        """Called once this replica's scheduler has stopped (a shared store gives its replica's lease back)."""


class MemoryJobStore(JobStore):
    """The default store: a dict behind a lock (one process)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def add(self, job: Job, *, max_active: int) -> None:
        with self._lock:
            active = [j for j in self._jobs.values() if j.status in ACTIVE]
            if len(active) >= max_active:
                raise TooManyJobs(len(active), max_active, _retry_after(active))
            self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def update(self, job_id: str, **changes: Any) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                for name, value in changes.items():
                    setattr(job, name, value)
            return job

    def delete(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.pop(job_id, None)

    def active(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.status in ACTIVE]

    def purge(self, older_than: float) -> None:
        with self._lock:
            for job_id in [j.id for j in self._jobs.values() if j.finished is not None and j.finished < older_than]:
                del self._jobs[job_id]


def _retry_after(active: list[Job]) -> int:
    """Seconds until the soonest unfinished job should finish, from its pace so far (1..60)."""
    now = time.time()
    best = 60.0
    for j in active:
        p = j.progress
        if j.started is not None and p.done > 0 and p.total >= p.done:
            best = min(best, (now - j.started) / p.done * (p.total - p.done))
    return int(max(1, min(60, round(best))))


# --------------------------------------------------------------------------------------------------- scheduler


@dataclass
class _Task:
    """The local, runnable side of a job on this replica."""

    job_id: str
    work: JobWork
    batcher: BackgroundRunner
    finish: Callable[[Any], dict[str, Any]]
    deadline: float
    cancelled: bool = False


class JobScheduler:
    """Submits, slices, finishes and deletes jobs; ``executor`` runs the finishing (rendering) off the worker."""

    def __init__(self, store: JobStore | None = None, *, max_active: int = 8, ttl: float = 600.0,
                 slice_steps: int = 10, slice_seconds: float = 0.25, max_seconds: float = 3600.0,
                 executor: Executor | None = None) -> None:
        self.store = store or MemoryJobStore()
        self.max_active = max_active
        self.ttl = ttl
        self.slice_steps = max(1, slice_steps)
        self.slice_seconds = slice_seconds
        self.max_seconds = max_seconds
        self._executor = executor
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()
        self._stopping = False

    # -- public ----------------------------------------------------------------------------------------------------
    def submit(self, batcher: BackgroundRunner, work: JobWork, *, kind: str, model: str,
               finish: Callable[[Any], dict[str, Any]], meta: dict[str, Any] | None = None) -> Job:
        """Record and queue a job; ``finish(raw)`` turns the work's outcome into the job's JSON ``result``."""
        self.store.purge(time.time() - self.ttl)
        job = Job(uuid.uuid4().hex, kind, model, progress=work.progress, meta=dict(meta or {}))
        self.store.add(job, max_active=self.max_active)
        task = _Task(job.id, work, batcher, finish, time.monotonic() + self.max_seconds)
        with self._lock:
            self._tasks[job.id] = task
        batcher.call_exclusive(lambda: self._slice(task), background=True)
        return job

    def get(self, job_id: str) -> Job:
        self.store.purge(time.time() - self.ttl)
        job = self.store.get(job_id)
        if job is None:
            raise UnknownJob(job_id, self.ttl)
        return job

    def cancel(self, job_id: str) -> Job:
        """Delete a job: an unfinished one stops before its next step. Either way it is gone (404) afterwards."""
        job = self.store.delete(job_id)
        if job is None:
            raise UnknownJob(job_id, self.ttl)
        with self._lock:
            task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancelled = True
            task.work = _Released()  # free what the work holds (activations, masks, optimiser state) now
        if job.status in ACTIVE:
            job.status, job.finished = "cancelled", time.time()
        return job

    def active(self) -> int:
        return len(self.store.active())

    def stop(self) -> None:
        """Cancel every unfinished job of this replica; pending slices end without re-queuing (workers can drain)."""
        with self._lock:
            self._stopping = True
            tasks = list(self._tasks.values())
            self._tasks.clear()
        for task in tasks:
            task.cancelled = True
            self.store.update(task.job_id, status="cancelled", finished=time.time())

    # -- worker side -------------------------------------------------------------------------------------------------
    def _slice(self, task: _Task) -> None:
        """Runs on the model's worker thread: a few steps, then re-queue (or finish)."""
        if task.cancelled or self._stopping or not task.batcher.accepting:
            self._end(task, "cancelled")
            return
        job = self.store.get(task.job_id)
        if job is None or job.status not in ACTIVE:
            # Deleted between two slices (perhaps through another replica, with a shared store) or ended by the store
            # (its replica was taken for dead): drop the local side too, so its tensors are freed now.
            with self._lock:
                self._tasks.pop(task.job_id, None)
            task.cancelled = True
            task.work = _Released()
            return
        if job.status == "queued":
            self.store.update(task.job_id, status="running", started=time.time())
        t0 = time.monotonic()
        steps = 0
        try:
            while True:
                finished = task.work.advance()
                steps += 1
                if finished or steps >= self.slice_steps or time.monotonic() - t0 >= self.slice_seconds:
                    break
                if task.batcher.live_traffic or task.cancelled:
                    break  # requests are waiting: they get the model after this step
            outcome = task.work.outcome() if finished else None
        except XaasError as exc:
            self._end(task, "failed", error=exc.detail)
            return
        except Exception as exc:
            log.exception("job %s failed", task.job_id)
            self._end(task, "failed", error=f"the job failed ({exc.__class__.__name__})")
            return
        self.store.update(task.job_id, progress=task.work.progress, live=task.work.live())
        if task.cancelled:
            return
        if finished:
            self._finish(task, outcome)
        elif time.monotonic() > task.deadline:
            self._end(task, "failed", error=f"the job ran longer than {self.max_seconds:g} s (XAAS_JOB_MAX_SECONDS)")
        else:
            task.batcher.call_exclusive(lambda: self._slice(task), background=True)

    def _finish(self, task: _Task, outcome: Any) -> None:
        def render() -> None:
            try:
                result = task.finish(outcome)
            except XaasError as exc:
                self._end(task, "failed", error=exc.detail)
                return
            except Exception as exc:
                log.exception("job %s failed while finishing", task.job_id)
                self._end(task, "failed", error=f"the job failed ({exc.__class__.__name__})")
                return
            self._end(task, "done", result=result)

        if self._executor is None:
            render()
        else:
            self._executor.submit(render)

    def _end(self, task: _Task, status: str, *, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        with self._lock:
            self._tasks.pop(task.job_id, None)
        task.work = _Released()
        job = self.store.get(task.job_id)
        if job is not None and job.status in ACTIVE:
            self.store.update(task.job_id, status=status, result=result, error=error, finished=time.time())


class _Released(JobWork):
    """What a cancelled or ended task holds instead of its work (so its tensors can be freed at once)."""

    def advance(self) -> bool:
        return True

    def outcome(self) -> Any:
        return None
