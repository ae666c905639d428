"""Dockerfile and docker-compose.yml, validated without a Docker engine."""

from __future__ import annotations

import shutil
import subprocess

import dockerfile
import pytest
import yaml

from tests.support import ROOT


def _instructions():
    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def test_dockerfile_parses_and_follows_the_rules():
    cmds = _instructions()
    froms = [c for c in cmds if c.cmd == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for c in froms:
        image = c.value[0]
        assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"
    final = cmds[cmds.index(froms[-1]):]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime stage must drop root"
    health = [c for c in final if c.cmd == "HEALTHCHECK"]
    assert health and "/healthz" in " ".join(health[0].value)
    assert any(c.cmd == "EXPOSE" and "8000" in c.value for c in final)
    assert not any(c.cmd == "ADD" and any(v.startswith("http") for v in c.value) for c in cmds), "ADD of a URL"
    args = {c.value[0].split("=")[0] for c in cmds if c.cmd == "ARG"}
    assert "VARIANT" in args, "the CPU/CUDA switch is a build argument"
    entry = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entry and list(entry[-1].value) == ["xaas", "serve"]


def test_compose_file_structure():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"xaas", "xaas-pool", "lb", "prometheus"} <= set(services)
    assert services["xaas-pool"]["profiles"] == ["scale"] and services["lb"]["profiles"] == ["scale"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert "./models:/models:ro" in services["xaas"]["volumes"]
    assert (ROOT / "deploy" / "nginx.conf").is_file() and (ROOT / "deploy" / "prometheus.yml").is_file()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (.ci/run installs it)")
@pytest.mark.parametrize("profile", [None, "scale", "monitoring"])
def test_docker_compose_config_validates(profile):
    cmd = ["docker-compose", "-f", str(ROOT / "docker-compose.yml")]
    if profile:
        cmd += ["--profile", profile]
    proc = subprocess.run(cmd + ["config", "-q"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
