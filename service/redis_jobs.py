"""A job store in Redis, shared by replicas behind a plain load balancer (the compose ``scale`` profile).

The same contract as the Ray store (service/ray_jobs.py): the record lives in Redis, the work on the replica that
accepted the job, so a poll, a ``DELETE`` or the result read reaches it through any replica. Records are JSON (never
pickle: whoever can write to Redis must not be able to run code in the service). Keys, under ``xaas:``:

- ``xaas:job:<id>``: the record (JSON), written with a transaction (``WATCH``) so concurrent updates do not lose
  each other's fields;
- ``xaas:jobs``: the set of job ids (for purging and counting);
- ``xaas:lease:<owner>``: one key per replica with a TTL of ``XAAS_JOB_LEASE`` seconds, renewed every third of it.
  A job whose replica's lease key has gone (it crashed or lost Redis) reads ``failed``.

Admission counts the unfinished jobs of the submitting replica (``XAAS_MAX_JOBS`` per replica, as under Ray).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict
from typing import Any

from .engine.passes import Progress
from .errors import ConfigError, TooManyJobs
from .jobs import ACTIVE, Job, JobStore, _retry_after

log = logging.getLogger("xaas.jobs")

PREFIX = "xaas:"
DEAD_REPLICA = "the replica running this job stopped before it finished; submit it again"


def _safe(url: str) -> str:
    """The URL without its password (``redis://:secret@host`` must not reach the logs)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def _dump(job: Job) -> str:
    return json.dumps(asdict(job))


def _load(raw: bytes | str | None) -> Job | None:
    if raw is None:
        return None
    doc = json.loads(raw)
    doc["progress"] = Progress(**doc["progress"])
    return Job(**doc)


class RedisJobStore(JobStore):
    def __init__(self, client: Any, *, owner: str | None = None, lease: float = 15.0) -> None:
        self.redis = client
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lease = lease
        self._lock = threading.Lock()  # admission: count-then-add must not interleave within this replica
        self._renew()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="xaas-jobs-lease", daemon=True)
        self._beat.start()

    @classmethod
    def from_settings(cls, settings: Any) -> RedisJobStore:
        if not settings.redis_url:
            raise ConfigError("XAAS_JOB_STORE=redis needs XAAS_REDIS_URL (e.g. redis://redis:6379/0)")
        try:
            import redis
        except ImportError:
            raise ConfigError("XAAS_JOB_STORE=redis needs the redis client: pip install 'xaas[redis]'") from None
        try:
            client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=10)
            return cls(client, lease=settings.job_lease)
        except (redis.RedisError, ValueError) as exc:  # a start-up fault of the configuration: one line, no traceback
            raise ConfigError(f"XAAS_REDIS_URL: cannot use Redis at {_safe(settings.redis_url)}: {exc}") from None

    # -- lease -----------------------------------------------------------------------------------------------------
    def _renew(self) -> None:
        self.redis.set(f"{PREFIX}lease:{self.owner}", "1", px=int(self.lease * 1000))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self._renew()
            except Exception as exc:  # noqa: BLE001 - Redis briefly away: retry next beat; the lease tolerates misses
                log.warning("job-store heartbeat failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        try:
            self.redis.delete(f"{PREFIX}lease:{self.owner}")
        except Exception as exc:  # noqa: BLE001 - Redis going away too: the lease then simply runs out
            log.warning("job-store release failed: %s", exc)

    def _alive(self, owners: set[str]) -> set[str]:
        owners = {o for o in owners if o}
        if not owners:
            return set()
        names = sorted(owners)
        pipe = self.redis.pipeline(transaction=False)
        for o in names:
            pipe.exists(f"{PREFIX}lease:{o}")
        return {o for o, ok in zip(names, pipe.execute()) if ok}

    def _checked(self, job: Job | None) -> Job | None:
        """The record, with an unfinished job of a dead replica turned ``failed`` (and written back)."""
        if job is None or job.status not in ACTIVE or not job.owner or job.owner in self._alive({job.owner}):
            return job
        return self.update(job.id, status="failed", finished=time.time(), error=DEAD_REPLICA, result=None)

    # -- JobStore --------------------------------------------------------------------------------------------------
    def add(self, job: Job, *, max_active: int) -> None:
        job.owner = self.owner
        with self._lock:
            mine = [j for j in self._all() if j.owner == self.owner and j.status in ACTIVE]
            if len(mine) >= max_active:
                raise TooManyJobs(len(mine), max_active, _retry_after(mine))
            pipe = self.redis.pipeline()
            pipe.set(f"{PREFIX}job:{job.id}", _dump(job))
            pipe.sadd(f"{PREFIX}jobs", job.id)
            pipe.execute()

    def get(self, job_id: str) -> Job | None:
        return self._checked(_load(self.redis.get(f"{PREFIX}job:{job_id}")))

    def update(self, job_id: str, **changes: Any) -> Job | None:
        import redis

        key = f"{PREFIX}job:{job_id}"
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    job = _load(pipe.get(key))
                    if job is None:
                        return None
                    for name, value in changes.items():
                        setattr(job, name, value)
                    pipe.multi()
                    pipe.set(key, _dump(job))
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue  # written meanwhile (another replica, or this one's worker): apply on top of that

    def delete(self, job_id: str) -> Job | None:
        pipe = self.redis.pipeline()
        pipe.getdel(f"{PREFIX}job:{job_id}")
        pipe.srem(f"{PREFIX}jobs", job_id)
        raw, _ = pipe.execute()
        return _load(raw)

    def active(self) -> list[Job]:
        return [j for j in self._all() if j.owner == self.owner and j.status in ACTIVE]

    def purge(self, older_than: float) -> None:
        gone = [j.id for j in self._all() if j.finished is not None and j.finished < older_than]
        if gone:
            pipe = self.redis.pipeline()
            pipe.delete(*[f"{PREFIX}job:{i}" for i in gone])
            pipe.srem(f"{PREFIX}jobs", *gone)
            pipe.execute()

    def _all(self) -> list[Job]:
        ids = sorted(i.decode() if isinstance(i, bytes) else i for i in self.redis.smembers(f"{PREFIX}jobs"))
        if not ids:
            return []
        jobs = [_load(raw) for raw in self.redis.mget([f"{PREFIX}job:{i}" for i in ids])]
        present = [j for j in jobs if j is not None]
        alive = self._alive({j.owner for j in present if j.status in ACTIVE})
        out = []
        for job in present:
            if job.status in ACTIVE and job.owner and job.owner not in alive:
                job = self._checked(job) or job
            out.append(job)
        return out
