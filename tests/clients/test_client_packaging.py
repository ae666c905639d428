"""Packaging: the client installs without the service's torch stack, and its README example runs as written."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SRC = ROOT / "clients" / "python" / "src"

HEAVY = {"torch", "torchvision", "service", "xaas"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower().replace("_", "-") for req in requirements}


def test_installed_metadata_requires_no_torch():
    try:
        requires = importlib.metadata.requires("xaas-client")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("xaas-client is not installed (pip install -e clients/python)")
    names = _names(requires or [])
    assert not names & HEAVY, requires
    assert {"httpx", "pydantic"} <= names


def test_pyproject_dependencies_are_httpx_and_pydantic_only():
    project = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]
    assert _names(project["dependencies"]) == {"httpx", "pydantic"}
    assert _names(project["optional-dependencies"]["images"]) == {"numpy", "pillow"}


def test_importing_the_client_imports_neither_torch_nor_numpy():
    code = "import sys, xaas_client; bad = {'torch', 'numpy', 'PIL', 'service'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CLIENT_SRC, timeout=60)


def test_readme_example_runs_as_written(server: str, tmp_path, sample_png: bytes):
    """clients/python/examples/quickstart.py (the README's five lines), run from a folder holding shapes/00000.png."""
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "00000.png").write_bytes(sample_png)
    example = ROOT / "clients" / "python" / "examples" / "quickstart.py"
    assert len(example.read_text().splitlines()) == 5
    assert example.read_text() in (ROOT / "clients" / "python" / "README.md").read_text()
    env = {**os.environ, "XAAS_URL": server, "PYTHONPATH": str(CLIENT_SRC)}
    done = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Prediction(index=" in done.stdout
    assert (tmp_path / "heatmap.png").read_bytes().startswith(b"\x89PNG")
