"""429 from a real server with a one-job queue: raised without retries, absorbed with them."""

from __future__ import annotations

import asyncio

import httpx

from xaas_client import AsyncClient, ExplainResponse, RateLimited

FLOOD = 4  # one job runs, one waits, the rest are turned away
SLOW = {"samples": 40, "seed": 0}  # smoothgrad: ~1 s of CPU per request on the demo model, tunable


def _rejections(url: str) -> float:
    """The server's count of jobs refused for a full queue (Prometheus text)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("xaas_rejections_total{"))


async def _flood(url: str, image, **client_options) -> list[ExplainResponse | BaseException]:
    async with AsyncClient(url, **client_options) as xaas:
        calls = [xaas.explain("smoothgrad", image, target=0, **SLOW) for _ in range(FLOOD)]
        return await asyncio.gather(*calls, return_exceptions=True)


def test_full_queue_raises_rate_limited_without_retries(busy_server: str, sample_png):
    rejected: list[RateLimited] = []
    for _ in range(3):  # bounded: normally the first round already overflows the queue
        results = asyncio.run(_flood(busy_server, sample_png, retries=0))
        unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, RateLimited)]
        assert not unexpected, unexpected
        rejected = [r for r in results if isinstance(r, RateLimited)]
        if rejected:
            break
    assert rejected, "no request was turned away by a one-job queue"
    err = rejected[0]
    assert err.status == 429 and err.retry_after is not None and err.retry_after >= 1 and err.request_id


def test_full_queue_is_absorbed_by_retries(busy_server: str, sample_png):
    for _ in range(3):  # bounded: repeat only if, by chance, no request was turned away (nothing was retried)
        before = _rejections(busy_server)
        results = asyncio.run(_flood(busy_server, sample_png, retries=20, max_retry_time=45.0))
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors
        assert all(isinstance(r, ExplainResponse) and r.explanations[0].index == 0 for r in results)
        if _rejections(busy_server) > before:
            return
    raise AssertionError("the server never answered 429, so retrying was not exercised")
