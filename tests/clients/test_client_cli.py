"""``xaas-client predict|explain|localize`` (xaas_client.cli) against the live server, and the service's ``xaas``
aliases of them (service/cli.py forwards its argv to xaas_client.cli.main)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from service.cli import main as xaas_main
from xaas_client._output import Progress
from xaas_client.cli import main

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = {"xaas-client": ["-m", "xaas_client"], "xaas alias": ["-m", "service.cli"]}


@pytest.fixture()
def folder(tmp_path: Path, sample_image) -> Path:
    """Three images in two formats, plus files the CLI must ignore."""
    images = tmp_path / "images"
    images.mkdir()
    sample_image[0].save(images / "a.png")
    sample_image[0].convert("L").resize((100, 60)).save(images / "b.jpg")
    Image.new("RGB", (64, 64), "white").save(images / "c.PNG")
    (images / "notes.txt").write_text("not an image")
    (images / "a.heatmap.png").write_bytes(b"earlier output")
    return images


def test_predict_prints_a_table(server: str, sample_path: Path, capsys):
    assert main(["predict", str(sample_path), "--server", server, "--top-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "shapes.png: demo (multilabel), 128x128"
    assert out[1].split() == ["index", "label", "score"] and len(out) == 5


def test_predict_json_and_targets(server: str, sample_path: Path, capsys):
    assert main(["predict", str(sample_path), "--server", server, "--target", "star", "--target", "0", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in body["predictions"]] == ["star", "circle"]


def test_explain_writes_heatmap_and_overlay(server: str, sample_path: Path, tmp_path: Path, capsys):
    heat = tmp_path / "out" / "heat.png"
    assert main(["explain", str(sample_path), "--server", server, "--method", "gradcam", "--target", "circle",
                 "--out", str(heat)]) == 0
    out = capsys.readouterr().out
    assert "gradcam on demo" in out and "circle" in out
    with Image.open(heat) as image:
        assert image.mode == "L" and image.size == (128, 128)

    over = tmp_path / "over.png"
    assert main(["explain", str(sample_path), "--server", server, "--method", "occlusion", "--param", "window=32",
                 "--param", "stride=16", "--out", str(over), "--overlay"]) == 0
    with Image.open(over) as image:
        assert image.mode == "RGB" and image.size == (128, 128)


def test_explain_folder_writes_one_heatmap_per_image(server: str, folder: Path, tmp_path: Path, capsys):
    out_dir = tmp_path / "heatmaps"
    assert main(["explain", str(folder), "--server", server, "--out", str(out_dir)]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.heatmap.png", "b.heatmap.png", "c.heatmap.png"]
    with Image.open(out_dir / "b.heatmap.png") as image:
        assert image.size == (100, 60)  # original size, not the model's
    assert [line.split(":")[0] for line in captured.out.splitlines() if ": " in line] == ["a.png", "b.jpg", "c.PNG"]
    assert "\r" not in captured.err  # no progress bar when stderr is not a terminal


def test_folder_json_is_one_line_per_image(server: str, folder: Path, capsys):
    assert main(["predict", str(folder), "--server", server, "--json", "--top-k", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == ["a.png", "b.jpg", "c.PNG"]
    assert all(len(line["response"]["predictions"]) == 1 for line in lines)


def test_localize_prints_boxes(server: str, sample_path: Path, capsys, localize_available):
    assert main(["localize", str(sample_path), "--server", server, "--target", "circle", "--threshold", "0.2",
                 "--all-components", "--min-area", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "boxes on demo (threshold 0.2)" in out[0]
    assert out[1].split() == ["index", "label", "score", "x0", "y0", "x1", "y1"] or out[1].strip() == "(none)"


def test_request_and_usage_errors(server: str, sample_path: Path, tmp_path: Path, capsys):
    assert main(["predict", str(sample_path), "--server", server, "--model", "nope"]) == 1
    assert capsys.readouterr().err.startswith("xaas: 404 ")
    assert main(["explain", str(sample_path), "--server", server, "--target", "99"]) == 1
    assert capsys.readouterr().err.startswith("xaas: 422 ")
    assert main(["predict", str(tmp_path / "missing.png"), "--server", server]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--server", server]) == 2  # a folder without images
    with pytest.raises(SystemExit) as info:
        main(["explain", str(sample_path), "--param", "no-equals-sign"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["predict", str(sample_path), "--out", "x.png"])  # --out belongs to explain only
    assert info.value.code == 2


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_exit_codes_in_a_subprocess(server: str, sample_path: Path, tmp_path: Path, entry: str):
    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python" / "src")])}
        return subprocess.run([sys.executable, *ENTRY_POINTS[entry], *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)

    ok = run("predict", str(sample_path), "--server", server)
    assert ok.returncode == 0 and ok.stdout.startswith("shapes.png: demo")
    refused = run("predict", str(sample_path), "--server", "http://127.0.0.1:9", "--retries", "0")
    assert refused.returncode == 3 and refused.stderr.startswith("xaas: cannot connect")
    bad = run("explain", str(sample_path), "--server", server, "--method", "no-such-method")
    assert bad.returncode == 1 and bad.stderr.startswith("xaas: 404 ")


def test_progress_bar_draws_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(4, stream)
        bar.update(2, "x.png")
        bar.clear()
    assert "2/4 x.png" in tty.getvalue() and "#" * 12 in tty.getvalue()
    assert pipe.getvalue() == ""


def test_xaas_aliases_forward_argv_unchanged(server: str, sample_path: Path, capsys):
    """``xaas predict ...`` prints exactly what ``xaas-client predict ...`` prints, and fails the same way."""
    args = ["predict", str(sample_path), "--server", server, "--top-k", "3"]
    assert main(args) == 0
    direct = capsys.readouterr()
    assert xaas_main(args) == 0
    assert capsys.readouterr() == direct
    assert xaas_main(["explain", str(sample_path), "--server", server, "--target", "99"]) == 1
    assert capsys.readouterr().err.startswith("xaas: 422 ")
    with pytest.raises(SystemExit) as info:
        xaas_main(["explain", str(sample_path), "--param", "no-equals-sign"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: xaas explain ")  # the alias keeps its own name in usage


def test_xaas_help_lists_the_aliases(capsys):
    with pytest.raises(SystemExit) as info:
        xaas_main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in ("predict", "explain", "localize", "activations", "filters", "impression"):
        assert f"{name} (alias of xaas-client {name})" in text
    assert "serve run the HTTP service" in text


def test_xaas_alias_without_the_client_package(sample_path: Path):
    code = ("import sys; sys.modules['xaas_client'] = None; from service.cli import main; "
            "raise SystemExit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "predict", str(sample_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("xaas: 'xaas predict' is an alias of 'xaas-client predict'")
    assert "pip install clients/python" in done.stderr
