"""``Client.audit``: a folder (zipped by the client) or zip bytes → a job handle counting images; its result is the
report, ``audit_report_html`` the page; a bad set is the server's 4xx before any job; the asyncio client alike."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from xaas_client import AsyncClient, Client, JobHandle, XaasError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    from service.demo.data import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("client-audit"), 6, seed=5150, bias=True)


def test_audit_a_folder_gives_a_handle_and_the_report(server: str, labelled: Path):
    with Client(server) as client:
        handle = client.audit(labelled, boxless=True)
        assert isinstance(handle, JobHandle)
        seen = []
        report = handle.result(timeout=120, poll_interval=0.05, on_progress=seen.append)
        assert report["mode"] == "boxless" and report["images"] == 6 and report["flagged"] == []
        assert handle.job.progress.unit == "images" and handle.job.progress.done == 6
        page = client.audit_report_html(handle.id)
        assert page.startswith("<!doctype html>") and "boxless" in page.lower()
        handle.cancel()
        with pytest.raises(XaasError) as info:
            client.job(handle.id)
        assert info.value.status == 404


def test_a_folder_with_object_masks_is_sent_with_its_masks(server: str, tmp_path: Path):
    from service.demo.data import generate_dataset

    folder = generate_dataset(tmp_path / "masked", 4, seed=5150, masks=True)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "junk.bin").write_bytes(b"x")
    with Client(server) as client:
        report = client.audit(folder).result(timeout=120, poll_interval=0.05)
    assert report["mode"] == "boxes" and report["images"] == 4
    assert {c["located_by"] for c in report["classes"].values()} == {"mask"}


def test_a_bad_set_is_refused_before_any_job(server: str, labelled: Path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("labels.json", '{"classes": ["dumbbell"], "images": []}')
    with Client(server) as client, pytest.raises(XaasError) as info:
        client.audit(buf.getvalue())
    assert info.value.status == 422 and "dumbbell" in str(info.value)


def test_async_client_audit(server: str, labelled: Path):
    async def scenario():
        async with AsyncClient(server) as xaas:
            handle = await xaas.audit(labelled, limit=3, method="layercam")
            return await handle.result(timeout=120, poll_interval=0.05)

    report = asyncio.run(scenario())
    assert report["mode"] == "boxes" and report["images"] == 3 and report["method"] == "layercam"


def test_cli_audit_prints_the_table_and_writes_both_reports(server: str, labelled: Path, tmp_path: Path):
    run = subprocess.run([sys.executable, "-m", "xaas_client", "audit", str(labelled), "--no-boxes", "--server", server,
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=180,
                         env={"PYTHONPATH": str(ROOT / "clients" / "python" / "src"), "PATH": ""})
    assert run.returncode == 0, run.stderr
    assert "boxless, 6 images" in run.stdout and "flagged: none" in run.stdout and "images" in run.stderr
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert report["mode"] == "boxless" and set(report["classes"]) <= {"circle", "square", "triangle", "cross",
                                                                      "ring", "star"}
    assert (tmp_path / "out" / "audit.html").read_text().startswith("<!doctype html>")
    bad = subprocess.run([sys.executable, "-m", "xaas_client", "audit", str(tmp_path / "nowhere"), "--server", server],
                         capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT / "clients" / "python" / "src"), "PATH": ""})
    assert bad.returncode == 2 and "nowhere" in bad.stderr
