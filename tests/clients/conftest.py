"""Fixtures for the client tests: real ``xaas serve`` processes on free local ports.

The client is tested against the actual HTTP server (not an ASGI shortcut) so that multipart encoding, headers,
problem documents, 429s and Retry-After are exercised end to end. Two servers start in parallel at the first use:
the main one, and (only when a selected test needs it) a "busy" one with a one-job queue for the retry tests.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench._server import free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_REGISTRY = ROOT / "service" / "models.yaml"
START_TIMEOUT = 90.0


class ServerProcess:
    """One ``python -m service.cli serve`` subprocess with its log file; started now, awaited on demand."""

    def __init__(self, name: str, registry: Path, log_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        env = {**os.environ, "XAAS_DEVICE": "cpu", "XAAS_MODELS": str(registry), "XAAS_LOG_LEVEL": "warning",
               **(extra_env or {})}
        env.pop("XAAS_URL", None)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._ready = False

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        """Poll ``/readyz`` until 200; fail with the server's log if it dies or takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self._ready:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} server exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} server not ready after {timeout:.0f}s:\n{self.log_tail()}")
            try:
                self._ready = httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200
            except httpx.TransportError:
                pass
            if not self._ready:
                time.sleep(0.1)
        return self.url

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


@pytest.fixture(scope="session")
def _servers(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("xaas-servers")
    registry = SHIPPED_REGISTRY
    servers = {"main": ServerProcess("main", registry, tmp)}
    if any("busy_server" in item.fixturenames for item in request.session.items):
        # One job running, one waiting, the rest 429: small enough to fill with a handful of requests. No result
        # cache: the floods repeat one request, and each must reach the queue.
        servers["busy"] = ServerProcess("busy", registry, tmp, {"XAAS_MAX_QUEUE": "1", "XAAS_MAX_BATCH_SIZE": "1",
                                                                 "XAAS_MAX_BATCH_DELAY_MS": "0", "OMP_NUM_THREADS": "1",
                                                                 "XAAS_CACHE_BYTES": "0"})
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def server(_servers: dict[str, ServerProcess]) -> str:
    """Base URL of a ready server on the demo registry."""
    return _servers["main"].wait_ready()


@pytest.fixture(scope="session")
def busy_server(_servers: dict[str, ServerProcess]) -> str:
    """Base URL of a ready server whose queue holds one job (XAAS_MAX_QUEUE=1, XAAS_MAX_BATCH_SIZE=1)."""
    return _servers["busy"].wait_ready()


@pytest.fixture(scope="session")
def sample_image():
    """A synthetic 128x128 demo image (PIL) with its known objects."""
    from service.demo.data import generate_sample, sample_rng

    image, objects = generate_sample(sample_rng(777, 0))
    return image, objects


@pytest.fixture(scope="session")
def sample_png(sample_image) -> bytes:
    buf = io.BytesIO()
    sample_image[0].save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def sample_path(tmp_path: Path, sample_png: bytes) -> Path:
    path = tmp_path / "shapes.png"
    path.write_bytes(sample_png)
    return path


@pytest.fixture(scope="session")
def localize_available(server: str) -> None:
    """Skip when the server has no ``/localize`` route yet (404 for the route itself, not for a model)."""
    response = httpx.post(server + "/localize", files={"image": ("x.png", b"", "image/png")}, timeout=10)
    if response.status_code == 404:
        pytest.skip("server has no /localize route yet")
