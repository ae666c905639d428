"""A job store shared by every replica of a Ray Serve deployment: a detached, named Ray actor holds the records.

A job is created on the replica that received its request and its *work* runs there (on that replica's model
worker), but its *record* — status, progress, result — lives in one actor, so a poll, a ``DELETE`` or the result read
reaches it through any replica, and the result outlives the replica that did not compute it (each replica keeps its
own :class:`~service.jobs.JobScheduler`; only :class:`~service.jobs.JobStore` is shared).

Liveness: each replica's store holds a lease in the actor, renewed by a heartbeat thread every ``lease / 3``
seconds. When a lease runs out (the replica crashed, was killed or lost the network) the actor marks that replica's
unfinished jobs ``failed`` with an error saying so, at the next call that reaches it. A replica that shuts down
cleanly cancels its own jobs first (``JobScheduler.stop``) and then gives its lease back.

Limits: ``max_active`` (``XAAS_MAX_JOBS``) counts the unfinished jobs *of the replica that submits*, since that is
where they run: the job capacity of a deployment grows with its replicas. Each call is one actor round trip (about a
millisecond on one node); job slices make two or three per slice, polls one.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import ray

from .errors import TooManyJobs
from .jobs import ACTIVE, Job, JobStore, _retry_after

log = logging.getLogger("xaas.jobs")

ACTOR_NAME = "xaas-jobs"
NAMESPACE = "xaas"


class _JobRecords:
    """The actor's state: every job record plus one lease per replica. Its methods run one at a time (a plain,
    non-async Ray actor with one thread), so no lock is needed."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.leases: dict[str, tuple[float, float]] = {}  # owner -> (last heartbeat, lease seconds)

    def heartbeat(self, owner: str, lease: float) -> None:
        self.leases[owner] = (time.time(), lease)

    def release(self, owner: str) -> None:
        self.leases.pop(owner, None)
        self._expire()

    def add(self, job: Job, max_active: int) -> tuple[int, int] | None:
        """None when stored; else (unfinished jobs of the owner, Retry-After) — the caller raises TooManyJobs (an
        exception raised in an actor would reach the caller re-wrapped)."""
        self._expire()
        active = [j for j in self.jobs.values() if j.status in ACTIVE and j.owner == job.owner]
        if len(active) >= max_active:
            return len(active), _retry_after(active)
        self.jobs[job.id] = job
        return None

    def get(self, job_id: str) -> Job | None:
        self._expire()
        return self.jobs.get(job_id)

    def update(self, job_id: str, changes: dict[str, Any]) -> Job | None:
        job = self.jobs.get(job_id)
        if job is not None:
            for name, value in changes.items():
                setattr(job, name, value)
        return job

    def delete(self, job_id: str) -> Job | None:
        return self.jobs.pop(job_id, None)

    def active(self, owner: str | None = None) -> list[Job]:
        self._expire()
        return [j for j in self.jobs.values() if j.status in ACTIVE and (owner is None or j.owner == owner)]

    def purge(self, older_than: float) -> None:
        for job_id in [j.id for j in self.jobs.values() if j.finished is not None and j.finished < older_than]:
            del self.jobs[job_id]

    def _expire(self) -> None:
        """Fail the unfinished jobs of replicas whose lease ran out (or that gave it back with jobs unfinished)."""
        now = time.time()
        dead = {owner for owner, (seen, lease) in self.leases.items() if now - seen > lease}
        for owner in dead:
            del self.leases[owner]
        for job in self.jobs.values():
            if job.status in ACTIVE and job.owner and job.owner not in self.leases:
                job.status, job.finished = "failed", now
                job.error = "the replica running this job stopped before it finished; submit it again"
                job.result = None


# max_restarts: a crashed actor comes back (empty; the replicas' heartbeats re-register their leases) instead of
# leaving every replica without a job store.
JobRecordsActor = ray.remote(num_cpus=0, max_restarts=-1)(_JobRecords)


class RayJobStore(JobStore):
    """The :class:`JobStore` of one replica, backed by the cluster's detached ``xaas-jobs`` actor (created by the
    first replica that needs it; later ones find it by name)."""

    def __init__(self, *, owner: str | None = None, lease: float = 15.0, timeout: float = 10.0) -> None:
        self.owner = owner or uuid.uuid4().hex
        self.lease = lease
        self.timeout = timeout
        # get_if_exists: replicas starting together race to create it; exactly one wins, the others get its handle.
        self._actor = JobRecordsActor.options(name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached",
                                              get_if_exists=True).remote()
        self._call("heartbeat", self.owner, self.lease)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="xaas-jobs-lease", daemon=True)
        self._beat.start()

    def _call(self, method: str, *args: Any) -> Any:
        return ray.get(getattr(self._actor, method).remote(*args), timeout=self.timeout)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self._call("heartbeat", self.owner, self.lease)
            except Exception as exc:  # noqa: BLE001 - a transient failure must not end the heartbeat (leases allow misses)
                log.warning("job-store heartbeat failed: %s", exc)

    def close(self) -> None:
        """Give the lease back (after ``JobScheduler.stop`` has cancelled this replica's jobs)."""
        self._stop.set()
        try:
            self._call("release", self.owner)
        except Exception as exc:  # noqa: BLE001 - the cluster may be going away too; the lease then runs out
            log.warning("job-store release failed: %s", exc)

    # -- JobStore --------------------------------------------------------------------------------------------------
    def add(self, job: Job, *, max_active: int) -> None:
        job.owner = self.owner
        refused = self._call("add", job, max_active)
        if refused is not None:
            raise TooManyJobs(refused[0], max_active, refused[1])

    def get(self, job_id: str) -> Job | None:
        return self._call("get", job_id)

    def update(self, job_id: str, **changes: Any) -> Job | None:
        return self._call("update", job_id, changes)

    def delete(self, job_id: str) -> Job | None:
        return self._call("delete", job_id)

    def active(self) -> list[Job]:
        return self._call("active", self.owner)

    def purge(self, older_than: float) -> None:
        self._call("purge", older_than)
