"""``xaas evaluate``: measured trust written into the registry entry (a validated ``method_trust``), merged on a second
run, and served by ``/models/{name}`` in place of the demo's flags; the flags' rules on hand-made numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from service.cli import main
from service.demo.data import generate_dataset
from service.demo.train import DEFAULT_WEIGHTS
from service.registry import ModelSpec
from service.trust import MethodTrust, trust_flags

SHIPPED = Path(__file__).resolve().parents[1] / "service" / "models.yaml"
FAST = ["--sanity-pairs", "2", "--faithfulness-pairs", "2", "--road-pairs", "1"]


def _demo_only(tmp_path: Path) -> Path:
    """The shipped demo entry alone (comments kept), its weights by absolute path."""
    text = SHIPPED.read_text().split("  # The demo segmentation model")[0]
    assert "weights: demo/demo_cnn.safetensors" in text
    path = tmp_path / "models.yaml"
    path.write_text(text.replace("weights: demo/demo_cnn.safetensors", f"weights: {DEFAULT_WEIGHTS}"))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data"), 3, seed=4242)


def test_evaluate_writes_method_trust_and_models_serves_measured_flags(tmp_path, folder, capsys):
    from support import make_client, wait_ready

    models = _demo_only(tmp_path)
    before = models.read_text()
    assert main(["evaluate", str(folder), "--models", str(models), "--methods", "gradcam,guided-backprop",
                 "--json", str(tmp_path / "r.json"), *FAST]) == 0
    after = models.read_text()
    assert after.startswith(before.rstrip("\n").rsplit("\n", 1)[0])           # the rest of the file byte for byte
    entry = yaml.safe_load(after)["models"][0]
    spec = ModelSpec.model_validate(entry)
    assert set(spec.method_trust) == {"gradcam", "guided-backprop"}
    g = spec.method_trust["gradcam"]
    assert g.pairs >= 3 and g.sanity_pairs == 2 and g.faithfulness_pairs == 2 and g.road_pairs == 1
    assert 0 <= g.pointing <= 1 and g.road_morf is not None and g.deletion_auc_random is not None
    # a second run with another method keeps the first two and replaces the flow mapping in place
    assert main(["evaluate", str(folder), "--models", str(models), "--methods", "saliency", *FAST]) == 0
    spec = ModelSpec.model_validate(yaml.safe_load(models.read_text())["models"][0])
    assert set(spec.method_trust) == {"gradcam", "guided-backprop", "saliency"}
    assert spec.method_trust["gradcam"] == g
    capsys.readouterr()

    with make_client(models=models) as client:
        wait_ready(client)
        trust = client.get("/models/demo").json()["trust"]
    assert trust["gradcam"]["source"] == "measured"
    assert trust["gradcam"]["measured"]["pointing"] == g.pointing
    assert trust["gradcam"]["flags"] == trust_flags("gradcam", g)
    assert trust["gradcam"]["passes"] is (not trust_flags("gradcam", g))
    # not measured: the demo model's sanity result, said to be the demo's
    assert trust["gradcam-pp"]["source"] == "demo" and not trust["gradcam-pp"]["passes"]
    assert "demo model" in trust["gradcam-pp"]["flags"][0]
    assert trust["hirescam"] == {"source": "demo", "passes": True, "flags": [], "measured": None}


def test_method_trust_is_validated():
    base = {"name": "m", "source": "python:x:y"}
    with pytest.raises(ValidationError, match="unknown methods"):
        ModelSpec.model_validate({**base, "method_trust": {"gradcamm": {"pairs": 3}}})
    with pytest.raises(ValidationError):
        ModelSpec.model_validate({**base, "method_trust": {"gradcam": {"pairs": 3, "pointing": 1.5}}})
    with pytest.raises(ValidationError):
        ModelSpec.model_validate({**base, "method_trust": {"gradcam": {"pairs": 3, "colour": "red"}}})


def test_flag_rules():
    ok = MethodTrust(pairs=10, sanity_rank_corr=0.1, sanity_rank_corr_head=0.2, pointing=0.9, pointing_random=0.1,
                     deletion_auc=0.1, deletion_auc_random=0.7, road_morf=0.1, road_lerf=0.9, road_morf_random=0.9,
                     road_lerf_random=0.9)
    assert trust_flags("gradcam", ok) == []
    bad = ok.model_copy(update={"sanity_rank_corr_head": 0.7, "pointing": 0.15, "deletion_auc": 0.8,
                                "road_morf": 0.95, "road_lerf": 0.9})
    kinds = [f.split(":")[0] for f in trust_flags("x", bad)]
    assert kinds == ["sanity", "pointing", "deletion", "road"]


def test_unknown_folder_and_inapplicable_method_are_one_line_errors(tmp_path, folder, capsys):
    models = _demo_only(tmp_path)
    assert main(["evaluate", str(tmp_path / "nope"), "--models", str(models), "--methods", "gradcam"]) == 2
    assert main(["evaluate", str(folder), "--models", str(models), "--methods", "attention-rollout"]) == 2
    err = capsys.readouterr().err
    assert "xaas evaluate:" in err and "do not apply" in err
    assert "method_trust" not in models.read_text()
