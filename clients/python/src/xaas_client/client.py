"""``Client`` (blocking) and ``AsyncClient`` (asyncio): thin transports over :mod:`xaas_client._core`.

The endpoint methods are generated from the endpoint functions of ``_core`` so that both clients expose exactly the
same, documented signatures without a hand-written copy per client; only sending and sleeping differ.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

import httpx

from . import _core
from ._core import Call, Flow, Sleep
from .errors import XaasError
from .retry import RetryPolicy
from .types import Job

__all__ = ["AsyncClient", "AsyncJobHandle", "Client", "DEFAULT_URL", "JobHandle"]

try:
    __version__ = version("xaas-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)

P = ParamSpec("P")
T = TypeVar("T")


class _BaseClient:
    """Configuration shared by both clients: base URL, auth header, timeouts, retry policy."""

    _http_class: type[httpx.Client] | type[httpx.AsyncClient]  # set by each client

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT, retries: int = 3,
                 max_retry_time: float = 30.0, retry_policy: RetryPolicy | None = None,
                 headers: Mapping[str, str] | None = None, limits: httpx.Limits | None = None,
                 transport: Any = None) -> None:
        """``base_url`` defaults to ``$XAAS_URL`` (else http://127.0.0.1:8000) and ``api_key`` to
        ``$XAAS_API_KEY``; the key is sent as ``Authorization: Bearer``. ``retries``/``max_retry_time`` bound the
        retrying of 429/503 and connect failures (``retries=0`` disables it); ``retry_policy`` overrides both.
        ``transport`` is passed to httpx (tests use ``httpx.MockTransport``)."""
        self.base_url = (base_url or os.environ.get("XAAS_URL") or DEFAULT_URL).rstrip("/")
        self.retry_policy = retry_policy or RetryPolicy(retries=retries, max_retry_time=max_retry_time)
        api_key = api_key if api_key is not None else os.environ.get("XAAS_API_KEY")
        all_headers = {"User-Agent": f"xaas-client/{__version__}",
                       "Accept": "application/json, application/problem+json"}
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        all_headers.update(headers or {})
        # One httpx client per xaas client: its connection pool is shared by every call (and, for AsyncClient,
        # by concurrent tasks), so keep one client for the life of the application.
        http_options: dict[str, Any] = {"base_url": self.base_url, "headers": all_headers, "timeout": timeout,
                                        "limits": limits or httpx.Limits(max_connections=20)}
        if transport is not None:
            http_options["transport"] = transport
        self._http = self._http_class(**http_options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


def _adopt(method: Callable[..., Any], endpoint: Callable[..., Any], owner: str) -> None:
    """Give a generated method the endpoint's name, docstring and signature (with ``self`` prepended and the result
    type as return annotation), so ``help()`` and IDEs show the real parameters."""
    functools.update_wrapper(method, endpoint)
    method.__qualname__ = f"{owner}.{endpoint.__name__}"
    sig = inspect.signature(endpoint)
    returns = str(sig.return_annotation)
    returns = returns[len("Call["):-1] if returns.startswith("Call[") else returns
    returns = returns[len("Flow["):-1] if returns.startswith("Flow[") else returns
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY, annotation=owner)
    method.__signature__ = sig.replace(parameters=[this, *sig.parameters.values()],  # type: ignore[attr-defined]
                                       return_annotation=returns)


def _blocking(endpoint: Callable[P, Call[T] | Flow[T]]) -> Callable[Concatenate[Client, P], T]:
    """A ``Client`` method that sends ``endpoint``'s call (or drives its flow) and returns its result."""
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        work = endpoint(*args, **kwargs)
        if not isinstance(work, Call):
            return self._drive(work)
        result = self._run(work)
        return JobHandle(self, result, work.job_result) if work.job_result else result  # type: ignore[return-value]

    _adopt(method, endpoint, "Client")
    return method


def _awaitable(endpoint: Callable[P, Call[T] | Flow[T]]) -> Callable[Concatenate[AsyncClient, P],
                                                                       Coroutine[Any, Any, T]]:
    """An ``AsyncClient`` coroutine method that sends ``endpoint``'s call (or drives its flow) and returns its
    result."""
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        work = endpoint(*args, **kwargs)
        if not isinstance(work, Call):
            return await self._drive(work)
        result = await self._run(work)
        return AsyncJobHandle(self, result, work.job_result) if work.job_result else result  # type: ignore

    _adopt(method, endpoint, "AsyncClient")
    return method


class JobHandle(Generic[T]):
    """A job started by ``explain(..., wait=False)`` or ``localize(..., wait=False)``: poll it, wait for it, cancel
    it. ``job`` is the last state seen (``job.progress``: done / total / unit)."""

    def __init__(self, client: Client, job: Job, read: Callable[[Job], T]) -> None:
        self._client, self.job, self._read = client, job, read

    @property
    def id(self) -> str:
        return self.job.id

    def refresh(self) -> Job:
        """Ask the server for the job's current state (``NotFound`` once deleted or expired)."""
        self.job = self._client.job(self.id)
        return self.job

    def result(self, timeout: float | None = 600.0, *, poll_interval: float = 0.5,
               on_progress: Callable[[Job], None] | None = None) -> T:
        """Wait for the job and return its result — the same object the synchronous call returns. Raises
        :class:`JobFailed` / :class:`JobCancelled`, or :class:`JobTimeout` after ``timeout`` seconds (the job keeps
        running: call ``result`` again, or ``cancel``)."""
        self.job = self._client._drive(_core.wait_for_job(self.job, timeout=timeout, poll_interval=poll_interval,
                                                          on_progress=on_progress))
        return self._read(self.job)

    def cancel(self) -> None:
        """Cancel the job (or delete it, when it has finished); it is gone from the server afterwards."""
        self._client.cancel_job(self.id)

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r}, status={self.job.status!r})"


class AsyncJobHandle(Generic[T]):
    """:class:`JobHandle` for :class:`AsyncClient`: the same methods, as coroutines."""

    def __init__(self, client: AsyncClient, job: Job, read: Callable[[Job], T]) -> None:
        self._client, self.job, self._read = client, job, read

    @property
    def id(self) -> str:
        return self.job.id

    async def refresh(self) -> Job:
        self.job = await self._client.job(self.id)
        return self.job

    async def result(self, timeout: float | None = 600.0, *, poll_interval: float = 0.5,
                     on_progress: Callable[[Job], None] | None = None) -> T:
        self.job = await self._client._drive(_core.wait_for_job(self.job, timeout=timeout,
                                                                poll_interval=poll_interval, on_progress=on_progress))
        return self._read(self.job)

    async def cancel(self) -> None:
        await self._client.cancel_job(self.id)

    def __repr__(self) -> str:
        return f"AsyncJobHandle({self.id!r}, status={self.job.status!r})"


class Client(_BaseClient):
    """Blocking client. Use as a context manager (or call :meth:`close`) to release pooled connections.

    >>> with Client("http://127.0.0.1:8000") as xaas:
    ...     xaas.predict("cat.png").predictions[0].label
    """

    _http_class = httpx.Client
    _http: httpx.Client

    def _run(self, call: Call[T]) -> T:
        steps = _core.exchange(call, self.retry_policy)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = steps.send(None)
                    continue
                try:
                    response = self._http.send(call.request(self._http))
                except httpx.TransportError as exc:
                    step = steps.throw(exc)
                else:
                    step = steps.send(response)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _drive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    result = self._run(step)
                except XaasError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    health = _blocking(_core.health)
    ready = _blocking(_core.ready)
    models = _blocking(_core.models)
    model = _blocking(_core.model)
    methods = _blocking(_core.methods)
    predict = _blocking(_core.predict)
    explain = _blocking(_core.explain)
    explain_dicomweb = _blocking(_core.explain_dicomweb)
    localize_dicomweb = _blocking(_core.localize_dicomweb)
    localize = _blocking(_core.localize)
    activations = _blocking(_core.activations)
    filters = _blocking(_core.filters)
    start_class_impression = _blocking(_core.start_class_impression)
    job = _blocking(_core.job)
    cancel_job = _blocking(_core.cancel_job)
    audit = _blocking(_core.audit)
    audit_report_html = _blocking(_core.audit_report_html)
    class_impression = _blocking(_core.class_impression)


class AsyncClient(_BaseClient):
    """asyncio client: the same methods as :class:`Client`, as coroutines; safe to share between tasks.

    >>> async with AsyncClient("http://127.0.0.1:8000") as xaas:
    ...     result = await xaas.explain("gradcam", "cat.png")
    """

    _http_class = httpx.AsyncClient
    _http: httpx.AsyncClient

    async def _run(self, call: Call[T]) -> T:
        steps = _core.exchange(call, self.retry_policy)
        try:
            step = next(steps)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = steps.send(None)
                    continue
                try:
                    response = await self._http.send(call.request(self._http))
                except httpx.TransportError as exc:
                    step = steps.throw(exc)
                else:
                    step = steps.send(response)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _drive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    result = await self._run(step)
                except XaasError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    health = _awaitable(_core.health)
    ready = _awaitable(_core.ready)
    models = _awaitable(_core.models)
    model = _awaitable(_core.model)
    methods = _awaitable(_core.methods)
    predict = _awaitable(_core.predict)
    explain = _awaitable(_core.explain)
    explain_dicomweb = _awaitable(_core.explain_dicomweb)
    localize_dicomweb = _awaitable(_core.localize_dicomweb)
    localize = _awaitable(_core.localize)
    activations = _awaitable(_core.activations)
    filters = _awaitable(_core.filters)
    start_class_impression = _awaitable(_core.start_class_impression)
    job = _awaitable(_core.job)
    cancel_job = _awaitable(_core.cancel_job)
    audit = _awaitable(_core.audit)
    audit_report_html = _awaitable(_core.audit_report_html)
    class_impression = _awaitable(_core.class_impression)

