"""``xaas predict|explain|localize`` (service/cli.py, built on xaas_client) against the live server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from service.cli import _Progress, main

ROOT = Path(__file__).resolve().parents[2]


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


def test_exit_codes_in_a_subprocess(server: str, sample_path: Path, tmp_path: Path):
    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python" / "src")])}
        return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True,
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
        bar = _Progress(4, stream)
        bar.update(2, "x.png")
        bar.clear()
    assert "2/4 x.png" in tty.getvalue() and "#" * 12 in tty.getvalue()
    assert pipe.getvalue() == ""
