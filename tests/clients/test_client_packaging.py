"""Packaging: the client installs without the service's torch stack, and its README example runs as written."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "clients" / "python"
CLIENT_SRC = CLIENT_DIR / "src"
# What pip prints when it cannot reach an index (DNS, refused or timed-out connections, no route).
OFFLINE_MARKERS = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
                   "Name or service not known", "Network is unreachable", "ConnectTimeout", "Read timed out",
                   "No matching distribution found", "Could not find a version that satisfies")

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
    assert project["scripts"] == {"xaas-client": "xaas_client.cli:main"}


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
    done = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Prediction(index=" in done.stdout
    assert (tmp_path / "heatmap.png").read_bytes().startswith(b"\x89PNG")


def test_client_cli_runs_with_torch_numpy_and_pillow_unimportable(server: str, tmp_path: Path, sample_png: bytes):
    """The command line imports nothing heavy: with those modules blocked, it still predicts and writes a heatmap."""
    image = tmp_path / "shapes.png"
    image.write_bytes(sample_png)
    code = ("import sys\n"
            "for name in ('torch', 'numpy', 'PIL', 'service'):\n"
            "    sys.modules[name] = None\n"
            "from xaas_client.cli import main\n"
            "raise SystemExit(main(sys.argv[1:]))")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(CLIENT_SRC)}, timeout=60)

    predicted = run("predict", str(image), "--server", server, "--json", "--top-k", "2")
    assert predicted.returncode == 0, predicted.stderr
    body = json.loads(predicted.stdout)
    assert body["model"] == "demo" and len(body["predictions"]) == 2
    explained = run("explain", str(image), "--server", server, "--out", str(tmp_path / "heat.png"))
    assert explained.returncode == 0, explained.stderr
    assert (tmp_path / "heat.png").read_bytes().startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def lone_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only ``pip install clients/python`` (from a copy, so the build leaves the checkout clean);
    returns its bin folder. Skips only when pip cannot reach a package index."""
    where = tmp_path_factory.mktemp("lone-client")
    source = shutil.copytree(CLIENT_DIR, where / "client", ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                             "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True, timeout=120)
    bin_dir = where / "venv" / "bin"
    installed = subprocess.run([bin_dir / "python", "-m", "pip", "install", "-q", str(source)], env=_clean_env(),
                               capture_output=True, text=True, timeout=240)
    if installed.returncode != 0:
        if any(marker in installed.stderr for marker in OFFLINE_MARKERS):
            pytest.skip(f"pip cannot reach a package index for httpx/pydantic: {installed.stderr.strip()[-300:]}")
        pytest.fail(f"pip install clients/python failed:\n{installed.stderr}")
    return bin_dir


def _clean_env() -> dict[str, str]:
    """This interpreter's environment without the paths that would lend the venv our checkout or our venv."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}


def test_installed_alone_the_command_predicts_without_torch(lone_client: Path, server: str, tmp_path: Path,
                                                            sample_png: bytes):
    image = tmp_path / "shapes.png"
    image.write_bytes(sample_png)
    done = subprocess.run([lone_client / "xaas-client", "predict", str(image), "--server", server, "--json"],
                          env=_clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["model"] == "demo" and body["predictions"] and body["image"]["width"] == 128

    probe = ("import importlib.util, xaas_client; "
             "print(xaas_client.__file__, [m for m in ('torch', 'numpy', 'PIL') if importlib.util.find_spec(m)])")
    where = subprocess.run([lone_client / "python", "-c", probe], env=_clean_env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, check=True).stdout.split(" ", 1)
    assert where[0].startswith(str(lone_client.parent)) and where[1].strip() == "[]"  # its own copy; nothing heavy
    no_torch = subprocess.run([lone_client / "python", "-c", "import torch"], env=_clean_env(), cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
