"""Prometheus metrics, one ``CollectorRegistry`` per app (so several apps in one process — tests — don't collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .batching import BatchObserver
from .cache import CacheObserver

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics(BatchObserver, CacheObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("xaas_requests_total", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("xaas_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("xaas_queue_rows", "Rows waiting in a model's queue", ["model"], registry=r)
        self.queue_wait_s = Histogram("xaas_queue_wait_seconds", "Time a job waited before its batch ran", ["model"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("xaas_batch_rows", "Rows per model pass", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.model_s = Histogram("xaas_model_seconds", "Model time per batch", ["model"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.rejections = Counter("xaas_rejections_total", "Jobs refused because the queue was full", ["model"],
                                  registry=r)
        self.model_ready = Gauge("xaas_model_ready", "1 when the model is loaded and warm", ["model"], registry=r)
        # The result cache (service/cache.py): lookups that found their maps, lookups that did not, entries dropped.
        self.cache_hits = Counter("xaas_cache_hits_total", "Explanations answered from the result cache", registry=r)
        self.cache_misses = Counter("xaas_cache_misses_total", "Explanations computed: not in the result cache",
                                    registry=r)
        self.cache_evictions = Counter("xaas_cache_evictions_total", "Result-cache entries evicted to stay in bound",
                                       registry=r)
        self.cache_bytes = Gauge("xaas_cache_bytes", "Bytes held by the result cache (maps + overhead)", registry=r)

    def queue_depth(self, model: str, rows: int) -> None:
        self.queue.labels(model).set(rows)

    def queue_wait(self, model: str, seconds: float) -> None:
        self.queue_wait_s.labels(model).observe(seconds)

    def batch(self, model: str, rows: int, seconds: float) -> None:
        self.batch_rows.labels(model).observe(rows)
        self.model_s.labels(model).observe(seconds)

    def rejected(self, model: str) -> None:
        self.rejections.labels(model).inc()

    def cache_hit(self) -> None:
        self.cache_hits.inc()

    def cache_miss(self) -> None:
        self.cache_misses.inc()

    def cache_evicted(self, entries: int) -> None:
        self.cache_evictions.inc(entries)

    def cache_size(self, nbytes: int) -> None:
        self.cache_bytes.set(nbytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
