"""Scale-out on Ray Serve: the whole xaas app as one deployment, N replicas, each a complete server.

Each replica hosts the unchanged FastAPI app (every route, problem+json, middleware) with every registry model warm
and its own :class:`~service.batching.DynamicBatcher` per model — batching stays ours (``@serve.batch`` knows nothing
of methods, parameters, failing-batch splits, deadlines or job slices). Serve adds what one process cannot: replicas
over a cluster's CPUs and GPUs (fractional ``num_gpus``), routing, health checks, rolling updates and draining.

- The app is built inside each replica (``__serve_build_asgi_app__``, the late-bound builder form of
  ``@serve.ingress``): the class form breaks on apps made of ``include_router`` on recent FastAPI (Ray #64475), and the
  builder gets at the runtime the constructor loaded.
- ``__init__`` loads and warms the models before the replica takes traffic (Serve routes only to constructed
  replicas); a registry that fails to load fails the constructor, with the reason, so Serve reports it.
- ``check_health`` fails when a model is not loaded or a model's worker thread died: Serve then replaces the replica.
- Shutdown (scale-down, rolling update, ``serve shutdown``): Serve stops routing to the replica, waits for its
  ongoing requests, then runs the app's lifespan shutdown — the same drain as ``xaas serve`` (``Runtime.stop``:
  queued work finishes within ``XAAS_SHUTDOWN_GRACE``).
- Jobs: every replica's job records live in one detached actor (service/ray_jobs.py), so any replica answers a poll.
- Metrics: each metric is also recorded through ``ray.serve.metrics`` (tagged with deployment, replica and
  application), so one scrape of Ray's metrics endpoints sees every replica; ``/metrics`` answers for the replica
  that served it.

Entry points: ``xaas serve --ray`` (service/cli.py), ``serve run service.ray_app:app`` (settings from ``XAAS_*``),
``serve run service.ray_app:app_builder replicas=2`` and ``serve deploy deploy/ray/serve.yaml``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig

from .config import Settings
from .metrics import Metrics

log = logging.getLogger("xaas.ray")

APP_NAME = "xaas"
DEPLOYMENT_NAME = "xaas"


# --------------------------------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class ServeLimits:
    """Serve's knobs, set so that they line up with the service's own (see README, "Scale-out on Ray Serve")."""

    max_ongoing_requests: int        # per replica; ≤ the model queue, so our 429 is the rare one
    max_queued_requests: int         # per proxy; past it Serve answers 429 + Retry-After
    retry_after_s: float
    request_timeout_s: float         # Serve's proxy gives up later than our deadline: clients see our 504 problem
    graceful_shutdown_timeout_s: float  # Serve kills a draining replica later than our drain ends
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def serve_limits(settings: Settings, replicas: int = 1) -> ServeLimits:
    from .registry import read_registry_file

    specs = read_registry_file(Path(settings.models))
    smallest_queue = min(spec.batching.max_queue or settings.max_queue for spec in specs)
    largest_batch = max(spec.batching.max_batch_size or settings.max_batch_size for spec in specs)
    # Enough requests in a replica at once to fill a batch twice over (one running, one gathering), never more than a
    # model queue holds: past that Serve queues them at the proxy, where they can still go to another replica.
    ongoing = settings.ray_max_ongoing_requests or max(1, min(smallest_queue, 2 * largest_batch))
    queued = settings.ray_max_queued_requests
    if queued is None:
        queued = ongoing * max(1, replicas)
    return ServeLimits(
        max_ongoing_requests=ongoing,
        max_queued_requests=queued,
        retry_after_s=settings.ray_retry_after,
        # Our deadline starts once the body is in (XAAS_BODY_TIMEOUT for the upload, then XAAS_REQUEST_TIMEOUT);
        # Serve's starts when the proxy gets the request. 5 s on top for decoding, rendering and the hops.
        request_timeout_s=settings.request_timeout + settings.body_timeout + 5,
        # Runtime.stop: up to XAAS_SHUTDOWN_GRACE for the queues, +5 s for the worker to finish its last batch.
        graceful_shutdown_timeout_s=settings.shutdown_grace + 10,
    )


# --------------------------------------------------------------------------------------------------- metrics


class _TeeChild:
    def __init__(self, prom: Any, ray_metric: Any, tags: dict[str, str]) -> None:
        self._prom, self._ray, self._tags = prom, ray_metric, tags

    def inc(self, amount: float = 1) -> None:
        self._prom.inc(amount)
        self._ray.inc(amount, tags=self._tags)

    def set(self, value: float) -> None:
        self._prom.set(value)
        self._ray.set(value, tags=self._tags)

    def observe(self, value: float) -> None:
        self._prom.observe(value)
        self._ray.observe(value, tags=self._tags)


class _Tee(_TeeChild):
    """A Prometheus metric that records every update through a ``ray.serve.metrics`` twin as well."""

    def __init__(self, prom: Any, ray_metric: Any, label_names: tuple[str, ...]) -> None:
        super().__init__(prom, ray_metric, {})
        self._names = label_names

    def labels(self, *values: Any) -> _TeeChild:
        return _TeeChild(self._prom.labels(*values), self._ray, dict(zip(self._names, map(str, values))))


def mirror_to_ray(metrics: Metrics) -> Metrics:
    """Give every metric of ``metrics`` a ``ray.serve.metrics`` twin (same name — Ray exports it as ``ray_<name>``,
    counters with ``_total`` — same labels, plus Serve's ``deployment``, ``replica`` and ``application``)."""
    from prometheus_client import Counter, Gauge, Histogram
    from ray.serve import metrics as ray_metrics

    for attr, prom in list(vars(metrics).items()):
        if not isinstance(prom, (Counter, Gauge, Histogram)):
            continue
        # prometheus_client keeps name, help and labels in these attributes (stable since 0.4); the counter's name
        # is stored without its "_total", which Ray adds back on export.
        name, doc, labels = prom._name, prom._documentation, tuple(prom._labelnames)
        if isinstance(prom, Counter):
            twin = ray_metrics.Counter(name, description=doc, tag_keys=labels)
        elif isinstance(prom, Gauge):
            twin = ray_metrics.Gauge(name, description=doc, tag_keys=labels)
        else:
            bounds = [b for b in prom._upper_bounds if math.isfinite(b)]
            twin = ray_metrics.Histogram(name, description=doc, boundaries=bounds, tag_keys=labels)
        setattr(metrics, attr, _Tee(prom, twin, labels))
    return metrics


# --------------------------------------------------------------------------------------------------- deployment


class XaasReplica:
    """One replica: loads and warms the runtime, then builds the app around it."""

    async def __init__(self, settings: dict[str, Any]) -> None:
        from .logs import setup_logging
        from .ray_jobs import RayJobStore
        from .runtime import Runtime

        self.settings = Settings(**settings)
        setup_logging(self.settings.log_level)
        context = serve.get_replica_context()
        self.replica = context.replica_tag
        self.store = RayJobStore(owner=self.replica, lease=self.settings.job_lease)
        self.runtime = Runtime(self.settings, metrics=mirror_to_ray(Metrics()), job_store=self.store)
        failure: list[str] = []
        self.runtime.start(on_failure=failure.append)
        await asyncio.to_thread(self.runtime.wait_loaded)
        if not self.runtime.ready:
            self.store.close()
            # Serve shows this in `serve status` and retries the constructor; no traffic reaches this replica.
            raise RuntimeError(f"xaas replica could not load its models: {failure[0] if failure else 'unknown'}")
        log.info("replica ready", extra={"replica": self.replica, "models": self.runtime.registry.names()})

    def __serve_build_asgi_app__(self) -> Any:
        from .app import create_app

        return create_app(self.settings, runtime=self.runtime, request_id_from_proxy=True, served_by=self.replica)

    def check_health(self) -> None:
        problems = self.runtime.health()
        if problems:
            raise RuntimeError("; ".join(problems))

    # No __del__ of our own: Serve runs the app's lifespan shutdown, whose Runtime.stop drains the workers, cancels
    # this replica's unfinished jobs and gives its job-store lease back.


XaasDeployment = serve.deployment(name=DEPLOYMENT_NAME)(serve.ingress()(XaasReplica))


def build_app(settings: Settings | None = None, *, replicas: int = 1, gpus_per_replica: float = 0.0,
              cpus_per_replica: float | None = None) -> Any:
    """The Serve application: ``replicas`` copies of the app, each reserving ``cpus_per_replica`` CPUs (default
    ``XAAS_RAY_CPUS_PER_REPLICA``) and ``gpus_per_replica`` GPUs (fractions share a GPU: 0.5 puts two replicas on
    one)."""
    settings = settings or Settings()
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    if gpus_per_replica < 0:
        raise ValueError("gpus_per_replica must be >= 0")
    limits = serve_limits(settings, replicas)
    cpus = settings.ray_cpus_per_replica if cpus_per_replica is None else cpus_per_replica
    actor_options: dict[str, Any] = {"num_cpus": cpus}
    if gpus_per_replica:
        actor_options["num_gpus"] = gpus_per_replica
    deployment = XaasDeployment.options(
        num_replicas=replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=limits.max_ongoing_requests,
        max_queued_requests=limits.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=limits.retry_after_s),
        graceful_shutdown_timeout_s=limits.graceful_shutdown_timeout_s,
        health_check_period_s=limits.health_check_period_s,
        health_check_timeout_s=limits.health_check_timeout_s,
    )
    # The settings travel as values: a replica on another node does not see this process's environment.
    return deployment.bind(settings.model_dump(mode="json"))


def app_builder(args: dict[str, Any]) -> Any:
    """For ``serve run service.ray_app:app_builder replicas=2 gpus_per_replica=0.5`` and the ``args`` of a Serve
    config file (deploy/ray/serve.yaml)."""
    known = {"replicas", "gpus_per_replica", "cpus_per_replica"}
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    cpus = args.get("cpus_per_replica")
    return build_app(replicas=int(args.get("replicas", 1)), gpus_per_replica=float(args.get("gpus_per_replica", 0)),
                     cpus_per_replica=None if cpus is None else float(cpus))


def __getattr__(name: str) -> Any:
    # `serve run service.ray_app:app`: one replica, settings from XAAS_*. Built on first access, not at import: every
    # replica imports this module, and must not read the registry of its own environment for a deployment it is not.
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
