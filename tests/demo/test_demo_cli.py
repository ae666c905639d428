"""The demo models' evaluation commands run and print their held-out figures as JSON (one shared helper serves the
three; a name clash once broke all of them silently)."""

from __future__ import annotations

import json

import pytest

from service.cli import main


@pytest.mark.parametrize(("argv", "keys"), [
    (["eval-demo-mil", "--n", "2", "--size", "256"], {"auc_mil", "pointing_product", "lesion_mass_gradcam_native"}),
    (["eval-demo-seg", "--n", "2"], {"miou", "pixel_accuracy"}),
    (["eval-demo-3d", "--n", "2"], {"accuracy", "pointing_gradcam"}),
])
def test_eval_commands_print_their_figures(argv, keys, capsys):
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 2 and keys <= result.keys()
    assert result.get("size", 256) == 256
