"""DynamicBatcher: groups compatible items from many requests into one model pass, on one worker thread per model.

A batch forms when ``max_batch_size`` rows of the same *key* wait or ``max_batch_delay_ms`` passed since the oldest
of them arrived. Only items with equal keys share a pass (the key encodes the work: predict, or explain with one method
and one parameter set), so every item gets exactly the answer it would get alone.

The queue is bounded (``max_queue`` rows): a full queue raises ``QueueFull`` at once instead of growing memory. An item
whose future was cancelled (client gone) or whose deadline passed is dropped before it costs model time. A failing
batch is split in halves and retried, so one poisoned item fails alone and an out-of-memory batch shrinks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DeadlineExceeded, ModelExecutionError, OutOfMemory, QueueFull, ShuttingDown, XaasError

log = logging.getLogger("xaas.batching")

BACKGROUND_QUIET_S = 0.05
"""Background work (job slices) starts only after this long without live traffic..."""
BACKGROUND_MAX_WAIT_S = 1.0
"""... or once it has waited this long, so that sustained traffic slows a job down but never starves it (the slice
then yields after one step, since requests are waiting)."""

RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]
"""``run_batch(key, payloads) -> results``: one result (or an Exception instance) per payload, in order."""


@dataclass
class QueuedWork:
    """One submitted unit of work in (or taken from) a model's queue: batch key, payload (the work itself, e.g. an
    ``inference.ExplainWork``), row count, deadline, and the future its submitter awaits."""

    key: Hashable
    payload: Any
    size: int
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class BatcherStats:
    """Counters kept by the batcher itself (the metrics module reads them; tests assert on them)."""

    batches: int = 0
    items_run: int = 0
    rows_run: int = 0
    dropped_cancelled: int = 0
    dropped_expired: int = 0
    abandoned: int = 0
    rejected_full: int = 0
    splits: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class DynamicBatcher:
    """One model's queue and worker thread. Thread-safe ``submit``; ``run`` for asyncio callers."""

    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 16,
        max_batch_delay_ms: float = 5.0,
        max_queue: int = 256,
        observer: BatchObserver | None = None,
        expecting_more: Callable[[], bool] | None = None,
    ):
        """``expecting_more()`` says whether more items are on their way (e.g. requests still being decoded); when it
        returns False the worker does not wait ``max_batch_delay_ms`` for company that cannot come, so a lone
        client pays no batching delay."""
        if max_batch_size < 1 or max_queue < 1 or max_batch_delay_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_batch_delay_ms >= 0")
        self.name = name
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay_ms / 1000.0
        self.max_queue = max_queue
        self.stats = BatcherStats()
        self._observer = observer
        self._expecting_fn = expecting_more
        self._queues: dict[Hashable, deque[QueuedWork]] = {}
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._accepting = True
        self._stop_by: float | None = None
        self._thread: threading.Thread | None = None
        self._exclusive: deque[Callable[[], None]] = deque()
        self._background: deque[tuple[float, Callable[[], None]]] = deque()
        self._last_traffic = 0.0

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"xaas-worker-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, finish queued work for up to ``grace`` seconds, fail the rest with 503, join the worker."""
        with self._cond:
            self._accepting = False
            self._stop_by = time.monotonic() + grace
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=grace + 5.0)
        with self._cond:
            leftovers = [item for q in self._queues.values() for item in q]
            self._queues.clear()
            self._queued_rows = 0
        for item in leftovers:
            _fail(item, ShuttingDown())

    @property
    def alive(self) -> bool:
        """The worker thread runs (False before ``start`` and once it has ended, e.g. after ``stop``)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def accepting(self) -> bool:
        return self._accepting

    # -- submission ------------------------------------------------------------------------------------------------
    def submit(self, key: Hashable, payload: Any, *, size: int = 1, timeout: float = 30.0) -> concurrent.futures.Future:
        item = QueuedWork(key, payload, max(1, size), time.monotonic() + timeout)
        with self._cond:
            if not self._accepting:
                raise ShuttingDown()
            if self._queued_rows + item.size > self.max_queue and self._queued_rows > 0:
                self.stats.rejected_full += 1
                if self._observer:
                    self._observer.rejected(self.name)
                raise QueueFull(self.name, self._queued_rows, self.max_queue, self.retry_after())
            self._last_traffic = item.enqueued
            self._queues.setdefault(key, deque()).append(item)
            self._queued_rows += item.size
            self._cond.notify_all()
        if self._observer:
            self._observer.queue_depth(self.name, self._queued_rows)
        return item.future

    async def run(self, key: Hashable, payload: Any, *, size: int = 1, timeout: float = 30.0) -> Any:
        """Submit and await the result; cancellation of the caller cancels the item (it is dropped if still queued)."""
        return await _await_with_deadline(self.submit(key, payload, size=size, timeout=timeout), timeout)

    async def run_exclusive(self, fn: Callable[[], Any], *, timeout: float = 30.0) -> Any:
        """Run ``fn`` on the worker between batches (interactive priority) and await its result under a deadline;
        a caller that gives up before it starts costs no model time."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def task() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except XaasError as exc:
                future.set_exception(exc)
            except Exception as exc:
                log.exception("exclusive call failed on worker %s", self.name)
                future.set_exception(
                    ModelExecutionError(f"the model failed on this request ({exc.__class__.__name__})"))

        self.call_exclusive(task)
        return await _await_with_deadline(future, timeout)

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: roughly the time to drain the current queue, at least 1."""
        recent = self.stats.batch_sizes[-20:]
        per_batch = max(1, sum(recent) // len(recent)) if recent else self.max_batch_size
        return max(1, min(30, round(self._queued_rows / per_batch * 0.1)))

    def call_exclusive(self, fn: Callable[[], None], *, background: bool = False) -> None:
        """Run ``fn`` on the worker thread between batches. Interactive work (a request's own hooked forward) runs as
        soon as no rows are queued; ``background`` work (job slices) when the model has had no live traffic for
        ``BACKGROUND_QUIET_S`` — nothing queued and nothing being decoded — or when it has waited
        ``BACKGROUND_MAX_WAIT_S`` (so a job slows down under sustained load but is never starved)."""
        with self._cond:
            if background:
                self._background.append((time.monotonic(), fn))
            else:
                self._exclusive.append(fn)
            self._cond.notify_all()

    @property
    def live_traffic(self) -> bool:
        """Requests are queued or on their way: background work should yield."""
        return self._queued_rows > 0 or (self._expecting_fn is not None and self._expecting_fn())

    def _quiet_for(self) -> float:
        """Seconds since live traffic was last seen (0 while there is some): background work waits for a real pause,
        not the few milliseconds between a closed-loop client's requests."""
        now = time.monotonic()
        if self.live_traffic:
            self._last_traffic = now
        return now - self._last_traffic

    def _expecting_more(self) -> bool:
        # Unknown (no hint given) counts as "more may come", which keeps the plain max-delay behaviour.
        return self._expecting_fn() if self._expecting_fn is not None else True

    # -- worker ----------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch, exclusive = self._next_batch()
            if exclusive is not None:
                try:
                    exclusive()
                except Exception:
                    log.exception("exclusive task failed on worker %s", self.name)
                continue
            if batch is None:
                return
            try:
                self._execute(batch)
            except Exception:
                log.exception("worker %s crashed on a batch; failing its items and serving on", self.name)
                for item in batch:
                    _fail(item, ModelExecutionError("the model worker failed on this request"))

    def _next_batch(self) -> tuple[list[QueuedWork] | None, Callable[[], None] | None]:
        with self._cond:
            while True:
                if self._exclusive and not self._queued_rows:
                    return None, self._exclusive.popleft()
                if self._background and self._stop_by is None and (
                        self._quiet_for() >= BACKGROUND_QUIET_S
                        or time.monotonic() - self._background[0][0] >= BACKGROUND_MAX_WAIT_S):
                    return None, self._background.popleft()[1]
                if self._stop_by is not None and (not self._queued_rows or time.monotonic() > self._stop_by):
                    return None, None
                if self._queued_rows:
                    break
                # With background work pending, poll: a request whose decoding fails never submits (no notify).
                self._cond.wait(0.02 if self._background else None)
            key = min(self._queues, key=lambda k: self._queues[k][0].enqueued)
            queue = self._queues[key]
            flush_at = queue[0].enqueued + self.max_batch_delay
            while sum(j.size for j in queue) < self.max_batch_size and self._accepting and self._expecting_more():
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[QueuedWork] = []
            rows = 0
            while queue and (not batch or rows + queue[0].size <= self.max_batch_size):
                item = queue.popleft()
                batch.append(item)
                rows += item.size
            if not queue:
                del self._queues[key]
            self._queued_rows -= rows
        if self._observer:
            self._observer.queue_depth(self.name, self._queued_rows)
        return batch, None

    def _execute(self, items: list[QueuedWork]) -> None:
        now = time.monotonic()
        live: list[QueuedWork] = []
        for item in items:
            if item.deadline <= now:
                self.stats.dropped_expired += 1
                _fail(item, DeadlineExceeded("the request's deadline passed while it was queued"))
            elif not item.future.set_running_or_notify_cancel():
                self.stats.dropped_cancelled += 1
            else:
                live.append(item)
        if not live:
            return
        if self._observer:
            for item in live:
                self._observer.queue_wait(self.name, now - item.enqueued)
        self._run(live)

    def _run(self, items: list[QueuedWork]) -> None:
        rows = sum(j.size for j in items)
        t0 = time.perf_counter()
        _worker.items = items
        try:
            results = self._run_batch(items[0].key, [j.payload for j in items])
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        except Abandoned:
            self.stats.abandoned += len(items)
            for item in items:
                _fail(item, DeadlineExceeded("the request was abandoned while it ran"))
            return
        except Exception as exc:
            if len(items) > 1:
                self.stats.splits += 1
                log.warning("batch of %d items on %s failed (%s); splitting", len(items), self.name,
                            exc.__class__.__name__)
                half = len(items) // 2
                self._run(items[:half])
                self._run(items[half:])
                return
            if _is_oom(exc):
                _free_cuda_cache()
                _fail(items[0], OutOfMemory())
            elif isinstance(exc, XaasError):
                _fail(items[0], exc)
            else:
                log.exception("item failed on model %s", self.name)
                _fail(items[0], ModelExecutionError(f"the model failed on this request ({exc.__class__.__name__})"))
            return
        finally:
            _worker.items = None
        elapsed = time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.items_run += len(items)
        self.stats.rows_run += rows
        self.stats.batch_sizes.append(rows)
        del self.stats.batch_sizes[:-1000]
        if self._observer:
            self._observer.batch(self.name, rows, elapsed)
        for item, result in zip(items, results):
            if isinstance(result, BaseException):
                _fail(item, result)
            elif not item.future.done():
                item.future.set_result(result)


class BatchObserver:
    """Receives batching events (the metrics module implements it); methods must be cheap and never raise."""

    def queue_depth(self, model: str, rows: int) -> None: ...
    def queue_wait(self, model: str, seconds: float) -> None: ...
    def batch(self, model: str, rows: int, seconds: float) -> None: ...
    def rejected(self, model: str) -> None: ...


class Abandoned(Exception):
    """Raised by batch work that noticed (:func:`batch_abandoned`) that nobody waits for its results any more."""


_worker = threading.local()


def batch_abandoned() -> bool:
    """On a worker thread, during a batch: whether every submitter of the batch has given up (deadline passed or
    client gone). Long batch work (chunked methods) checks it between chunks and stops with :class:`Abandoned`, so a
    request that has already been answered 504 does not keep the model busy."""
    items = getattr(_worker, "items", None)
    return bool(items) and all(getattr(i.future, "abandoned", False) or i.future.cancelled() for i in items)


async def _await_with_deadline(future: concurrent.futures.Future, timeout: float) -> Any:
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except asyncio.CancelledError:
        future.abandoned = True  # type: ignore[attr-defined]  # a running future cannot be cancelled: flag it
        raise
    except TimeoutError:
        future.abandoned = True  # type: ignore[attr-defined]
        future.cancel()
        raise DeadlineExceeded(f"the request did not finish within {timeout:g} s") from None


def _fail(item: QueuedWork, exc: BaseException) -> None:
    if not item.future.done():
        try:
            item.future.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass


def _is_oom(exc: BaseException) -> bool:
    import torch

    return (isinstance(exc, torch.cuda.OutOfMemoryError)
            or (isinstance(exc, RuntimeError) and "out of memory" in str(exc)))


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
