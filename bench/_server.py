"""Start a real ``xaas serve`` on 127.0.0.1 for benchmarks (subprocess, free port, bounded wait, clean stop)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen


@contextlib.contextmanager
def running_server(models: Path | None = None, env: dict[str, str] | None = None, ready_timeout: float = 120.0,
                   log: Path | None = None) -> Iterator[Server]:
    port = free_port()
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if models is not None:
        cmd += ["--models", str(models)]
    full_env = {**os.environ, "XAAS_DEVICE": os.environ.get("XAAS_DEVICE", "auto"), "XAAS_LOG_LEVEL": "warning",
                **(env or {})}
    with contextlib.ExitStack() as stack:  # the log is closed only after the server has stopped
        out = stack.enter_context(open(log, "wb")) if log else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"xaas serve exited with {proc.returncode}")
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("server not ready in time")
                time.sleep(0.2)
            yield Server(url, proc)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
