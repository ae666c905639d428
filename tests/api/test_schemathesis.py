"""Property-based fuzzing of a live ``xaas serve`` from its own OpenAPI document, with schemathesis's CLI.

Every check runs but one: "schema-valid data must be accepted" (``positive_data_acceptance``), which no schema can
satisfy for this API — no JSON Schema says which base64 strings are decodable images or which free-form layer names a
model has, so random ``image`` members are rightly refused with a 422 problem. Everything else must hold with zero
failures and zero schema errors: no 5xx, documented status codes, content types and headers, response schemas,
negative data rejected, ``Allow`` on 405, deleted resources gone, over the coverage, fuzzing and stateful phases.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench._server import running_server
from tests.fake_pacs import FakePacs

MAX_EXAMPLES = 30
SEED = 20261201


def _schemathesis() -> list[str]:
    exe = Path(sys.executable).with_name("st")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("st")
    if found is None:
        pytest.skip("schemathesis CLI (st) is not installed")
    return [found]


def test_schemathesis_finds_nothing(tmp_path):
    # The DICOMweb routes fetch from a scripted PACS on loopback (pydicom's CT for any UIDs, STOW accepted), so
    # their schema-valid requests get real answers rather than "no PACS configured" (a 503).
    env = {"XAAS_DEVICE": "cpu", "XAAS_REQUEST_TIMEOUT": "20", "XAAS_MAX_JOBS": "8"}
    with FakePacs() as pacs, running_server(env={**env, "XAAS_DICOMWEB_URL": pacs.url}) as server:
        cmd = [*_schemathesis(), "run", server.url + "/openapi.json", "--checks", "all",
               "--exclude-checks", "positive_data_acceptance", "--max-examples", str(MAX_EXAMPLES),
               "--seed", str(SEED), "--workers", "1", "--suppress-health-check", "all",
               "--generation-database", "none", "--no-color", "--request-timeout", "60"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = run.stdout[-6000:]
    assert run.returncode == 0, f"schemathesis found problems:\n{summary}\n{run.stderr[-2000:]}"
    assert "Schema Error" not in run.stdout and "failures" not in run.stdout.split("SUMMARY")[-1].lower(), summary
