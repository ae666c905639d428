"""Asynchronous explanations through the client: ``wait=False`` gives a job handle (progress, result, cancel), in
the blocking and the asyncio client, and ``xaas-client explain --async`` shows progress while it waits."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from xaas_client import AsyncClient, AsyncJobHandle, Client, ExplainResponse, Job, JobHandle, JobTimeout, NotFound

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def client(server: str):
    with Client(server) as c:
        yield c


def test_explain_wait_false_gives_a_handle_with_progress_and_the_sync_result(client: Client, sample_png: bytes):
    handle = client.explain("scorecam", sample_png, wait=False, top_k=2)
    assert isinstance(handle, JobHandle) and handle.job.status in ("queued", "running")
    seen: list[Job] = []
    result = handle.result(timeout=120, poll_interval=0.05, on_progress=seen.append)
    assert isinstance(result, ExplainResponse) and result.method == "scorecam" and len(result.explanations) == 2
    assert handle.job.status == "done" and handle.job.progress.unit == "masked forwards"
    assert handle.job.progress.done == handle.job.progress.total > 0
    assert seen[-1].status == "done"
    sync = client.explain("scorecam", sample_png, top_k=2)
    assert [e.index for e in result.explanations] == [e.index for e in sync.explanations]
    assert result.explanations[0].heatmap_png()[:8] == b"\x89PNG\r\n\x1a\n"
    handle.cancel()  # a finished job: deleted
    with pytest.raises(NotFound):
        handle.refresh()


def test_localize_wait_false_and_a_timeout_leaves_the_job_running(client: Client, sample_png: bytes):
    slow = client.explain("rise", sample_png, wait=False, masks=20000)
    with pytest.raises(JobTimeout):
        slow.result(timeout=0.2, poll_interval=0.05)
    assert slow.refresh().status in ("queued", "running")  # still there: result() may be called again
    slow.cancel()
    with pytest.raises(NotFound):
        slow.refresh()
    boxes = client.localize(sample_png, wait=False).result(timeout=120, poll_interval=0.05)
    assert boxes.boxes == client.localize(sample_png).boxes


def test_async_client_handles(server: str, sample_png: bytes):
    async def scenario():
        async with AsyncClient(server) as xaas:
            handle = await xaas.explain("occlusion", sample_png, wait=False, window=16, stride=8)
            assert isinstance(handle, AsyncJobHandle)
            return await handle.result(timeout=120, poll_interval=0.05), await handle.refresh()

    result, job = asyncio.run(scenario())
    assert result.method == "occlusion" and job.status == "done" and job.progress.unit == "windows"


def test_cli_async_shows_progress_and_prints_the_result(server: str, sample_path: Path, tmp_path: Path):
    out = tmp_path / "heat.png"
    env_path = str(ROOT / "clients" / "python" / "src")
    run = subprocess.run([sys.executable, "-m", "xaas_client", "explain", str(sample_path), "--method", "scorecam",
                          "--async", "--json", "--server", server, "--out", str(out)],
                         capture_output=True, text=True, timeout=180, env={"PYTHONPATH": env_path, "PATH": ""})
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    assert body["method"] == "scorecam" and body["explanations"]
    # each poll prints the job's state; on a busy machine the job may go from queued to done between two polls
    assert ("running" in run.stderr or "queued" in run.stderr) and "masked forwards" in run.stderr
    assert "done" in run.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
