"""Retry/backoff and error mapping, against ``httpx.MockTransport`` (no server: exact attempt counts and timing)."""

from __future__ import annotations

import asyncio
import inspect
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from xaas_client import (
    AsyncClient,
    BadRequest,
    Client,
    InvalidInput,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServerError,
    Unavailable,
    UnexpectedResponse,
    XaasConnectionError,
    parse_retry_after,
)

HEALTHY = {"status": "ok"}


class Script:
    """A MockTransport handler that plays a list of answers (the last one repeats) and counts attempts."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(time.monotonic())
        answer = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def attempts(self) -> int:
        return len(self.requests)


def problem(status: int, retry_after: str | None = None, detail: str = "busy") -> httpx.Response:
    headers = {"X-Request-ID": f"rid-{status}"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = {"type": "https://xaas.dev/problems/x", "title": "T", "status": status, "detail": detail}
    return httpx.Response(status, json=body, headers=headers)


def client(script: Script, **options) -> Client:
    return Client("http://xaas.test", transport=httpx.MockTransport(script), **options)


# --- Retry-After parsing and the delay formula ---------------------------------------------------------------------

def test_parse_retry_after_seconds_and_dates():
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=10), usegmt=True), now=now) == 10.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=10), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("nan") is None


def test_delay_is_the_larger_of_hint_and_backoff_plus_bounded_jitter():
    policy = RetryPolicy(backoff=0.5, max_backoff=4.0, jitter=0.25)
    assert [policy.delay(n, None, rand=lambda: 0.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(1, None, rand=lambda: 1.0) == 0.625
    assert policy.delay(1, 3.0, rand=lambda: 0.0) == 3.0  # the server's hint is a floor
    assert policy.delay(1, 3.0, rand=lambda: 1.0) == 3.75
    assert policy.next_delay(4, None, elapsed=0.0) is None  # attempts exhausted (retries=3)
    assert policy.next_delay(1, 5.0, elapsed=26.0) is None  # would end past max_retry_time=30


# --- attempt counts and time bounds -------------------------------------------------------------------------------

def test_429_then_success_is_retried_honouring_retry_after():
    script = Script(problem(429, "0.1"), problem(503, "0.1"), httpx.Response(200, json=HEALTHY))
    with client(script, retry_policy=RetryPolicy(retries=3, backoff=0.01)) as c:
        assert c.health().status == "ok"
    assert script.attempts == 3
    gaps = [b - a for a, b in zip(script.times, script.times[1:])]
    assert all(0.1 <= g < 0.1 * 1.25 + 0.1 for g in gaps), gaps


def test_attempts_are_bounded_by_retries():
    script = Script(problem(429, "0"))
    with client(script, retry_policy=RetryPolicy(retries=2, backoff=0.01)) as c, pytest.raises(RateLimited) as info:
        c.health()
    assert script.attempts == 3
    assert info.value.status == 429 and info.value.retry_after == 0.0 and info.value.request_id == "rid-429"


def test_total_time_is_bounded_by_max_retry_time():
    script = Script(problem(503, "0.2"))
    t0 = time.monotonic()
    policy = RetryPolicy(retries=100, max_retry_time=0.5, backoff=0.01)
    with client(script, retry_policy=policy) as c, pytest.raises(Unavailable):
        c.health()
    elapsed = time.monotonic() - t0
    assert elapsed < 0.5 + 0.2, elapsed
    assert 2 <= script.attempts <= 3  # sleeps of 0.2-0.25 s: a third one would end past 0.5 s


def test_a_retry_after_longer_than_the_budget_fails_at_once():
    script = Script(problem(429, "30"))
    t0 = time.monotonic()
    with client(script, retries=5, max_retry_time=2.0) as c, pytest.raises(RateLimited) as info:
        c.health()
    assert script.attempts == 1 and time.monotonic() - t0 < 0.5
    assert info.value.retry_after == 30.0


def test_retry_after_as_http_date():
    when = format_datetime(datetime.now(UTC) - timedelta(seconds=5), usegmt=True)  # already passed: go now
    script = Script(problem(429, when), httpx.Response(200, json=HEALTHY))
    with client(script, retry_policy=RetryPolicy(backoff=0.01)) as c:
        c.health()
    assert script.attempts == 2


def test_retries_disabled_raise_rate_limited_with_retry_after():
    script = Script(problem(429, "2"))
    with client(script, retries=0) as c, pytest.raises(RateLimited) as info:
        c.health()
    assert script.attempts == 1 and info.value.retry_after == 2.0


@pytest.mark.parametrize(("status", "error"),
                         [(400, BadRequest), (404, NotFound), (422, InvalidInput), (500, ServerError)])
def test_other_errors_are_not_retried(status, error):
    script = Script(problem(status, "0"))
    with client(script, retries=5) as c, pytest.raises(error) as info:
        c.health()
    assert script.attempts == 1
    assert info.value.status == status and info.value.title == "T" and info.value.detail == "busy"
    assert info.value.type == "https://xaas.dev/problems/x" and info.value.request_id == f"rid-{status}"


def test_connect_errors_are_retried_and_then_raised():
    script = Script(httpx.ConnectError("refused"))
    with (client(script, retry_policy=RetryPolicy(retries=2, backoff=0.01)) as c,
          pytest.raises(XaasConnectionError) as info):
        c.health()
    assert script.attempts == 3
    assert isinstance(info.value.__cause__, httpx.ConnectError) and info.value.status is None


def test_connect_retry_can_be_switched_off_and_read_timeouts_are_never_retried():
    for policy, failure in [(RetryPolicy(retry_connect=False, backoff=0.01), httpx.ConnectError("refused")),
                            (RetryPolicy(backoff=0.01), httpx.ReadTimeout("slow"))]:
        script = Script(failure)
        with client(script, retry_policy=policy) as c, pytest.raises(XaasConnectionError):
            c.health()
        assert script.attempts == 1


def test_async_client_shares_the_retry_logic():
    script = Script(problem(429, "0.05"), problem(429, "0.05"), httpx.Response(200, json=HEALTHY))

    async def main() -> str:
        async with AsyncClient("http://xaas.test", transport=httpx.MockTransport(script),
                               retry_policy=RetryPolicy(backoff=0.01)) as c:
            return (await c.health()).status

    assert asyncio.run(main()) == "ok"
    assert script.attempts == 3

    script = Script(problem(429, "0"))

    async def exhausted() -> None:
        async with AsyncClient("http://xaas.test", transport=httpx.MockTransport(script),
                               retry_policy=RetryPolicy(retries=1, backoff=0.01)) as c:
            await c.health()

    with pytest.raises(RateLimited):
        asyncio.run(exhausted())
    assert script.attempts == 2


# --- request encoding and response edge cases -----------------------------------------------------------------------

def test_request_carries_api_key_and_repeated_form_fields():
    script = Script(httpx.Response(200, json={"model": "m", "task": "multilabel", "image": {"width": 2, "height": 1},
                                              "predictions": [], "future_field": 1}))
    with client(script, api_key="s3cret") as c:
        result = c.predict(b"\x89PNG...", target=["circle", 3], top_k=2, model="m")
    request = script.requests[0]
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.url.path == "/predict" and request.headers["content-type"].startswith("multipart/form-data")
    body = request.content.decode("latin-1")
    assert body.count('name="target"') == 2 and 'name="top_k"' in body and 'name="image"; filename="image"' in body
    assert "frame" not in body  # None options are left to the server's defaults
    assert result.future_field == 1  # unknown fields from a newer server are kept, not rejected
    assert result.to_json()["future_field"] == 1


def test_non_problem_error_bodies_and_bad_success_bodies():
    script = Script(httpx.Response(502, text="<html>bad gateway</html>"))
    with client(script) as c, pytest.raises(ServerError) as info:
        c.health()
    assert info.value.status == 502 and "bad gateway" in info.value.detail

    script = Script(httpx.Response(200, text="not json"))
    with client(script) as c, pytest.raises(UnexpectedResponse):
        c.health()


def test_ready_returns_the_state_on_503_instead_of_raising():
    script = Script(httpx.Response(503, json={"status": "loading", "models": {"demo": "loading"}},
                                   headers={"Retry-After": "5"}))
    with client(script) as c:
        state = c.ready()
    assert script.attempts == 1 and not state.is_ready and state.models == {"demo": "loading"}


def test_sync_and_async_clients_expose_the_same_methods():
    names = ["health", "ready", "models", "model", "methods", "predict", "explain", "localize"]
    for name in names:
        sync, coro = getattr(Client, name), getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(coro) and not inspect.iscoroutinefunction(sync)
        sync_params = list(inspect.signature(sync).parameters.values())[1:]
        async_params = list(inspect.signature(coro).parameters.values())[1:]
        assert sync_params == async_params and sync.__doc__ == coro.__doc__, name
    with Client("http://xaas.test") as c:
        bound = inspect.signature(c.explain)
    assert list(bound.parameters)[:3] == ["method", "image", "model"] and bound.return_annotation == "ExplainResponse"
