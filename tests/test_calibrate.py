"""``xaas calibrate``: report structure, the ``--write`` edit of models.yaml, and the demo model's calibrated boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from service.calibrate import calibrate, format_report, parse_method, update_registry_entry
from service.cli import main
from service.demo.data import generate_dataset
from service.demo.model import create_demo_model
from service.demo.train import DEFAULT_WEIGHTS
from service.errors import ConfigError, NotFound

SHIPPED = Path(__file__).resolve().parents[1] / "service" / "models.yaml"


def _registry_copy(tmp_path: Path, weights: Path) -> Path:
    """The shipped models.yaml, with the demo weights pointing at ``weights`` (the copy lives elsewhere) and without
    its calibrated /localize defaults, so the tests start from the paper's gradcam at 0.15."""
    text = "".join(line for line in SHIPPED.read_text().splitlines(keepends=True)
                   if not line.strip().startswith(("localize_method:", "localize_threshold:")))
    assert "weights: demo/demo_cnn.safetensors" in text
    path = tmp_path / "models.yaml"
    path.write_text(text.replace("weights: demo/demo_cnn.safetensors", f"weights: {weights}"))
    return path


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "random.safetensors"
    save_file({k: v.contiguous() for k, v in create_demo_model().state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data"), 10, seed=31)


def test_report_structure(tmp_path, random_weights, tiny_data):
    models = _registry_copy(tmp_path, random_weights)
    report = calibrate(tiny_data, models_file=models, model="demo",
                       methods=["gradcam", "layercam@features.block2", "occlusion:window=64:stride=64"],
                       thresholds="0.1:0.9:0.1")
    assert report["model"] == "demo" and report["images"] == 10
    labels = json.loads((tiny_data / "labels.json").read_text())
    assert report["pairs"] == sum(len({o["class"] for o in im["objects"]}) for im in labels["images"])
    assert report["thresholds"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert list(report["methods"]) == ["gradcam", "layercam@features.block2", "occlusion:window=64:stride=64"]
    for r in report["methods"].values():
        assert len(r["box_accuracy"]) == 9 and all(0.0 <= v <= 1.0 for v in r["box_accuracy"])
        assert r["max_box_acc"] == max(r["box_accuracy"])
        assert r["best_threshold"] in report["thresholds"]
        assert set(r["box_accuracy_at"]) == {"0.15"}                 # the paper's default, always reported
        assert 0.0 <= r["max_box_acc_v2"] <= 1.0
    assert report["methods"]["gradcam"]["layer"] in ("features", "features.block6")   # the model's target layer
    assert report["methods"]["layercam@features.block2"]["layer"] == "features.block2"
    assert report["methods"]["gradcam"]["writable"]
    assert not report["methods"]["layercam@features.block2"]["writable"]     # a layer override is not storable
    assert not report["methods"]["occlusion:window=64:stride=64"]["writable"]
    assert report["best_writable"]["method"] == "gradcam"
    assert report["current"] == {"method": "gradcam", "threshold": 0.15,
                                 "box_accuracy": report["methods"]["gradcam"]["box_accuracy_at"]["0.15"]}
    text = format_report(report)
    assert "| **MaxBoxAcc** |" in text and "| 0.5 |" in text and "best:" in text


def test_cli_write_updates_only_the_models_entry(tmp_path, random_weights, tiny_data, capsys):
    models = _registry_copy(tmp_path, random_weights)
    before = models.read_text()
    out = tmp_path / "report.json"
    rc = main(["calibrate", str(tiny_data), "--models", str(models), "--model", "demo", "--methods", "gradcam",
               "--thresholds", "0.2,0.4,0.6", "--write", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    best = report["best_writable"]
    assert report["written"] == {"file": str(models), "localize_threshold": best["threshold"],
                                 "localize_method": "gradcam"}
    after = models.read_text()
    # Only two lines were added, inside the demo entry, and every original line (comments included) is kept in order.
    old_lines, new_lines = before.splitlines(), after.splitlines()
    added = [ln for ln in new_lines if ln not in old_lines]
    assert added == [f"    localize_threshold: {best['threshold']!r}", "    localize_method: gradcam"]
    assert [ln for ln in new_lines if ln not in added] == old_lines
    parsed_before, parsed_after = yaml.safe_load(before), yaml.safe_load(after)
    assert parsed_after["models"][0] == {**parsed_before["models"][0], "localize_threshold": best["threshold"],
                                         "localize_method": "gradcam"}
    assert parsed_after["models"][1:] == parsed_before["models"][1:]
    # Calibrating again replaces the values in place (no duplicate keys); --write PATH targets another file.
    other = tmp_path / "other.yaml"
    other.write_text(after)
    assert main(["calibrate", str(tiny_data), "--models", str(models), "--methods", "gradcam", "--thresholds", "0.9",
                 "--write", str(other)]) == 0
    assert models.read_text() == after                               # --write PATH leaves --models alone
    text = other.read_text()
    assert text.count("localize_threshold:") == 1 and "localize_threshold: 0.9" in text
    printed = capsys.readouterr().out
    assert "| **MaxBoxAcc** |" in printed


def test_update_registry_entry_keeps_comments_and_refuses_bad_edits(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "# top comment\n"
        "models:\n"
        "  - name: a   # the first\n"
        "    source: python:service.demo.model:create_demo_model\n"
        "    localize_threshold:\n"
        "    batching:\n"
        "      max_batch_size: 4\n"
        "  # between\n"
        "  - name: b\n"
        "    source: python:service.demo.model:create_demo_model\n"
        "    localize_method: gradcam  # keep me\n"
    )
    update_registry_entry(path, "a", {"localize_threshold": 0.55, "localize_method": "layercam"})
    update_registry_entry(path, "b", {"localize_method": "guided-gradcam"})
    assert path.read_text() == (
        "# top comment\n"
        "models:\n"
        "  - name: a   # the first\n"
        "    source: python:service.demo.model:create_demo_model\n"
        "    localize_threshold: 0.55\n"
        "    localize_method: layercam\n"
        "    batching:\n"
        "      max_batch_size: 4\n"
        "  # between\n"
        "  - name: b\n"
        "    source: python:service.demo.model:create_demo_model\n"
        "    localize_method: guided-gradcam  # keep me\n"
    )
    with pytest.raises(ConfigError, match="no model named 'c'"):
        update_registry_entry(path, "c", {"localize_threshold": 0.5})
    with pytest.raises(ConfigError, match="would be invalid"):
        update_registry_entry(path, "a", {"localize_threshold": 1.5})
    flow = tmp_path / "flow.yaml"
    flow.write_text("models:\n  - {name: a, source: 'python:x:y'}\n")
    with pytest.raises(ConfigError, match="flow style"):
        update_registry_entry(flow, "a", {"localize_threshold": 0.5})


def test_parse_method():
    spec = parse_method("layercam@features.block2")
    assert spec.explainer.name == "layercam" and spec.layer == "features.block2"
    spec = parse_method("occlusion:window=16:stride=8")
    assert spec.params["window"] == 16 and spec.params["stride"] == 8 and spec.layer is None
    assert parse_method("fused-cam:fusion=mean").params["fusion"] == "mean"
    with pytest.raises(NotFound):
        parse_method("no-such-method")


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason=f"trained demo weights not found at {DEFAULT_WEIGHTS}")
def test_calibration_finds_a_much_better_threshold_than_the_papers(tmp_path):
    data = generate_dataset(tmp_path / "data", 60, seed=2024)
    report = calibrate(data, models_file=SHIPPED, model="demo", methods=["gradcam"])
    g = report["methods"]["gradcam"]
    assert g["max_box_acc"] >= 0.5, f"Grad-CAM MaxBoxAcc {g['max_box_acc']:.3f} at {g['best_threshold']}"
    assert g["best_threshold"] >= 0.5
    assert g["box_accuracy_at"]["0.15"] < 0.1
