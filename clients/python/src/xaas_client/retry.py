"""When to retry and how long to wait: pure functions, shared by the sync and async clients.

The server answers 429 (queue full) and 503 (loading, draining) with ``Retry-After``; both mean "nothing was done,
try again", so even POSTs are safe to repeat. The wait is the larger of the server's hint and an exponential backoff,
plus up to ``jitter`` of it on top, so that a crowd of rejected clients does not come back in the same instant.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "parse_retry_after"]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; ``None`` when absent/garbled."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying: at most ``retries`` extra attempts, and never a sleep that would end more than
    ``max_retry_time`` seconds after the first attempt started (the call then fails with the last error)."""

    retries: int = 3
    max_retry_time: float = 30.0
    backoff: float = 0.5
    max_backoff: float = 10.0
    jitter: float = 0.25
    statuses: frozenset[int] = frozenset({429, 503})
    retry_connect: bool = True

    def __post_init__(self) -> None:
        if self.retries < 0 or self.max_retry_time < 0 or self.backoff < 0 or self.jitter < 0:
            raise ValueError("retry settings must not be negative")

    def delay(self, attempt: int, retry_after: float | None, rand: Callable[[], float] = random.random) -> float:
        """Wait before attempt ``attempt + 1`` (``attempt`` counts from 1): max(hint, backoff) widened by jitter."""
        exponential = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        base = max(retry_after or 0.0, exponential)
        return base * (1.0 + self.jitter * rand())

    def next_delay(self, attempt: int, retry_after: float | None, elapsed: float,
                   rand: Callable[[], float] = random.random) -> float | None:
        """The wait before retrying after failed attempt ``attempt``, or ``None`` when a bound says stop."""
        if attempt > self.retries:
            return None
        wait = self.delay(attempt, retry_after, rand)
        if elapsed + wait > self.max_retry_time:
            return None
        return wait
