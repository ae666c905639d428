"""The client and its CLI on a detection model, against a live ``xaas serve`` (a small random-init torchvision
detector): typed detections from predict, ``detection`` as an id or a box (with ``target``) on explain/localize,
``box_regression``, typed errors, and the CLI's detection tables and flags."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench._server import running_server
from tests.engine.det_support import LABELS, SIZE
from xaas_client import Client, InvalidInput
from xaas_client.cli import main


@pytest.fixture(scope="module")
def det_server(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("det") / "models.yaml"
    path.write_text("models:\n  - name: det\n    source: python:tests.engine.det_support:tiny_detector\n"
                    f"    task: detection\n    labels: {LABELS}\n    score_threshold: 0.3\n"
                    f"    max_detections: 50\n    input_size: [{SIZE}, {SIZE}]\n")
    with running_server(models=path, env={"XAAS_DEVICE": "cpu"}) as server:
        yield server.url


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "street.png"
    pixels = np.random.default_rng(11).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_predict_explain_and_localize_by_id_and_by_box(det_server: str, image: Path):
    with Client(det_server) as xaas:
        found = xaas.predict(image).predictions
        assert found and all(p.id is not None and len(p.box) == 4 for p in found)
        chosen = found[1]
        by_id = xaas.explain("gradcam", image, detection=chosen.id, outputs="raw").explanations[0]
        assert by_id.detection.id == chosen.id
        assert by_id.detection.box == pytest.approx(chosen.box, abs=1e-3)
        by_box = xaas.explain("gradcam", image, detection=chosen.box, target=chosen.label, outputs="raw")
        assert by_box.explanations[0].detection.id == chosen.id
        np.testing.assert_allclose(by_box.explanations[0].raw_array(), by_id.raw_array(), rtol=1e-5, atol=1e-9)
        boxed = xaas.explain("saliency", image, detection=tuple(v + 1 for v in chosen.box[:2]) + chosen.box[2:],
                             target=chosen.label, box_regression=True, outputs="raw").explanations[0]
        assert boxed.detection.id == chosen.id
        boxes = xaas.localize(image, detection=chosen.id).boxes
        assert boxes and boxes[0].detection.id == chosen.id
        with pytest.raises(InvalidInput, match="does not exist"):
            xaas.explain("gradcam", image, detection=999)
        with pytest.raises(ValueError, match="detection"):
            xaas.explain("gradcam", image, detection=(1, 2, 3))


def test_cli_prints_detections_and_explains_one(det_server: str, image: Path, capsys, tmp_path: Path):
    assert main(["predict", str(image), "--server", det_server]) == 0
    table = capsys.readouterr().out
    assert "id" in table.splitlines()[1] and "x0" in table
    out = tmp_path / "heat.png"
    assert main(["explain", str(image), "--server", det_server, "--detection", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "detection" in printed
    with Image.open(io.BytesIO(out.read_bytes())) as heat:
        assert heat.size == (200, 120)
    assert main(["explain", str(image), "--server", det_server, "--json", "--detection", "1"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["explanations"][0]["detection"]["id"] == 1
    assert main(["explain", str(image), "--server", det_server, "--detection", "999"]) != 0
    assert "does not exist" in capsys.readouterr().err
