"""The committed build of the review page matches its sources, and its tool chain is pinned."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.support import ROOT

UI = ROOT / "ui"
STATIC = ROOT / "service" / "ui_static"


def test_dependencies_are_pinned_exactly_and_locked():
    package = json.loads((UI / "package.json").read_text())
    lock = json.loads((UI / "package-lock.json").read_text())
    deps = {**package.get("dependencies", {}), **package.get("devDependencies", {})}
    assert deps, "no dependencies?"
    for name, version in deps.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} {version} is not an exact version"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


def test_the_page_references_only_shipped_assets():
    html = (STATIC / "index.html").read_text()
    assert html == (UI / "src" / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        if ref.startswith("data:"):
            continue
        assert ref.startswith("/ui/assets/"), ref
        assert (STATIC / ref.removeprefix("/ui/assets/")).is_file(), ref


@pytest.mark.skipif(shutil.which("node") is None, reason="no Node.js: the committed build is served as it is")
def test_the_committed_build_is_what_the_sources_give():
    if not (UI / "node_modules" / "esbuild").is_dir():
        pytest.skip("ui/node_modules absent (cd ui && npm ci): cannot rebuild to compare")
    run = subprocess.run(["node", "build.mjs", "--check"], cwd=UI, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
