"""The client and its CLI on attention-MIL models (``task: mil``): the tiling fields of ``ModelInfo`` (typed, and
absent from older servers), ``models NAME`` printing them, and, against the live server (shipped registry:
``demo-mil``, 32 px patches at stride 32, ``max_patches`` 4096), ``explain("attention-mil", ...)`` with its
``weights`` parameter pointing at a synthetic lesion, other methods refused with the reason (``InvalidInput``) and an
image of too many patches refused as ``PayloadTooLarge``."""

from __future__ import annotations

import asyncio
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from xaas_client import AsyncClient, Client, InvalidInput, MethodInfo, ModelDetail, ModelInfo, PayloadTooLarge
from xaas_client._output import model_summary, models_table
from xaas_client.cli import main

MIL = "demo-mil"
MIL_BODY = {"name": "slides", "task": "mil", "num_classes": 2, "input_size": [32, 32], "device": "cpu",
            "target_layer": None, "target_layer_reason": "a mil model is explained by its attention over the patches",
            "methods": ["attention-mil"], "default": False, "channels": 3, "spatial_dims": 2, "keep_aspect": False,
            "score_threshold": None, "patch_size": 64, "stride": 32, "max_patches": 1024}
# What a server from before mil models (and before keep_aspect, spatial_dims, target_layer_reason) answered.
OLD_BODY = {"name": "demo", "task": "multilabel", "num_classes": 6, "input_size": [128, 128], "device": "cpu",
            "target_layer": "features", "methods": ["gradcam"], "default": True}


# --- parsing and printing (no server) --------------------------------------------------------------------------------

def test_model_info_types_the_tiling_of_mil_models():
    info = ModelInfo.model_validate(MIL_BODY)
    assert info.is_mil and (info.patch_size, info.stride, info.max_patches) == (64, 32, 1024)
    assert info.spatial_dims == 2 and info.keep_aspect is False and info.target_layer_reason.startswith("a mil")
    assert "patch_size" not in (info.model_extra or {})   # a declared field, not an unknown extra
    assert info.to_json() == MIL_BODY


def test_model_info_tolerates_older_servers_and_newer_fields():
    info = ModelInfo.model_validate(OLD_BODY)
    assert not info.is_mil
    assert (info.patch_size, info.stride, info.max_patches, info.score_threshold) == (None, None, None, None)
    assert info.spatial_dims is None and info.keep_aspect is False and info.target_layer_reason is None
    assert info.to_json() == OLD_BODY   # nothing invented on the way back
    newer = ModelInfo.model_validate({**MIL_BODY, "tile_overlap": "mean"})
    assert newer.tile_overlap == "mean" and newer.patch_size == 64


def test_model_detail_types_refused_layers_and_trust():
    detail = ModelDetail.model_validate({
        **MIL_BODY, "labels": ["normal", "tumour"], "refused": {"gradcam": "use attention-mil"},
        "caveats": {"attention-mil": ["patch-level"]},
        "layers": [{"name": "features", "layout": "nchw", "grid": [4, 4], "channels": 8}],
        "trust": {"attention-mil": {"source": "demo", "passes": True, "flags": []}}})
    assert detail.refused == {"gradcam": "use attention-mil"} and detail.caveats["attention-mil"] == ["patch-level"]
    assert detail.layers[0].grid == (4, 4) and detail.layers[0].prefix == 0
    assert detail.trust["attention-mil"].passes and detail.trust["attention-mil"].measured is None
    old = ModelDetail.model_validate({**OLD_BODY, "labels": ["a"] * 6})
    assert old.refused == {} and old.layers == [] and old.trust == {}


def test_method_info_mil_family_and_tasks():
    method = MethodInfo.model_validate({"name": "attention-mil", "family": "mil", "description": "d",
                                        "params": {"weights": {"type": "string", "default": "attention",
                                                               "choices": ["attention", "confidence", "product"]}},
                                        "tasks": ["mil"]})
    assert method.family == "mil" and method.tasks == ["mil"] and method.params["weights"].choices[1] == "confidence"
    assert MethodInfo.model_validate({"name": "gradcam", "family": "cam", "description": "d"}).tasks is None


def test_printing_shows_the_tiling_for_mil_models_only():
    mil = ModelDetail.model_validate({**MIL_BODY, "labels": ["normal", "tumour"],
                                      "refused": {"gradcam": "gradcam explains models of one image input"}})
    text = model_summary(mil)
    assert "input: native size, 64 px patches at stride 32, at most 1024 per image" in text
    assert "methods: attention-mil" in text and "gradcam: gradcam explains models of one image input" in text
    old = model_summary(ModelDetail.model_validate({**OLD_BODY, "labels": list("abcdef")}))
    assert "input: 128x128" in old and "patches" not in old and "target layer: features" in old
    table = models_table([ModelInfo.model_validate(OLD_BODY), ModelInfo.model_validate(MIL_BODY)]).splitlines()
    assert table[2].split()[:2] == ["demo", "*"] and "native size, 64 px patches" in table[3]


# --- against the live server -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xaas(server: str):
    with Client(server, retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def lesion() -> tuple[bytes, np.ndarray]:
    """A synthetic 512 x 512 lesion image of the demo's generator (held-out stream) and its exact lesion mask."""
    from service.demo.mil import lesion_image

    pixels, mask, label = lesion_image(9191, 0, label=1)
    assert label == 1 and mask.any()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue(), mask


def test_models_demo_mil_has_its_tiling(xaas: Client):
    detail = xaas.model(MIL)
    assert detail.task == "mil" and detail.is_mil and detail.labels == ["normal", "lesion"]
    assert (detail.patch_size, detail.stride) == (32, 32) and detail.max_patches and detail.max_patches >= 256
    assert detail.methods == ["attention-mil", "mil-gradcam"] and "attention-mil" in detail.refused["gradcam"]
    listed = {m.name: m for m in xaas.models()}
    assert listed[MIL].patch_size == 32 and listed["demo"].patch_size is None and not listed["demo"].is_mil
    method = next(m for m in xaas.methods() if m.name == "attention-mil")
    assert method.family == "mil" and method.tasks == ["mil"]
    assert set(method.params["weights"].choices) == {"attention", "confidence", "product"}


def _pointing_distance(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Pixels from the map's maximum (the nearest of its maximal pixels) to the lesion mask; 0 = on it."""
    to_lesion = ndimage.distance_transform_edt(~mask)
    return float(to_lesion[heatmap == heatmap.max()].min())


def test_explain_attention_mil_points_at_the_lesion(xaas: Client, lesion):
    data, mask = lesion
    maps = {}
    for weights in ("attention", "confidence"):
        result = xaas.explain("attention-mil", data, model=MIL, target="lesion", outputs=("heatmap", "raw"),
                              weights=weights)
        assert result.model == MIL and result.image.size == (512, 512)
        explanation = result.explanations[0]
        assert explanation.label == "lesion" and not explanation.empty
        heatmap = explanation.heatmap_array()
        assert heatmap.shape == (512, 512)
        assert _pointing_distance(heatmap, mask) <= 16, weights   # README's pointing tolerance: 15 px
        maps[weights] = explanation.raw_array()
        assert maps[weights].shape == (16, 16)   # the patch grid: 512 / 32
    assert not np.allclose(maps["attention"], maps["confidence"])   # the parameter reached the method
    alias = xaas.explain("abmil", data, model=MIL, target="lesion", outputs=("raw",))
    np.testing.assert_allclose(alias.explanations[0].raw_array(), maps["attention"], rtol=1e-5, atol=1e-7)


def test_a_refused_method_is_invalid_input_with_the_reason(xaas: Client, lesion):
    reason = xaas.model(MIL).refused["gradcam"]
    with pytest.raises(InvalidInput) as caught:
        xaas.explain("gradcam", lesion[0], model=MIL)
    assert caught.value.status == 422 and "bags of patches" in reason and reason in str(caught.value)


def test_too_many_patches_is_payload_too_large(xaas: Client):
    info = xaas.model(MIL)
    per_side = math.isqrt(info.max_patches) + 1                 # per_side² > max_patches
    side = info.patch_size + (per_side - 1) * info.stride
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (220, 180, 210)).save(buf, format="PNG")   # small file, refused from the header
    with pytest.raises(PayloadTooLarge) as caught:
        xaas.explain("attention-mil", buf.getvalue(), model=MIL)
    assert caught.value.status == 413
    assert "max_patches" in caught.value.detail and str(per_side * per_side) in caught.value.detail


def test_async_client_reads_the_tiling(server: str):
    async def ask() -> ModelDetail:
        async with AsyncClient(server, retries=0) as xaas:
            return await xaas.model(MIL)

    assert asyncio.run(ask()).stride == 32


def test_cli_models_and_explain_on_demo_mil(server: str, lesion, tmp_path: Path, capsys):
    assert main(["models", MIL, "--server", server]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{MIL}: mil, 2 classes (normal, lesion)")
    assert "input: native size, 32 px patches at stride 32, at most" in out and "methods: attention-mil" in out
    assert main(["models", "--server", server]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "32 px patches" in rows[MIL] and "patches" not in rows["demo"]
    assert main(["models", MIL, "--server", server, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["patch_size"] == 32

    image, heat = tmp_path / "lesion.png", tmp_path / "heat.png"
    image.write_bytes(lesion[0])
    assert main(["explain", str(image), "--server", server, "--model", MIL, "--method", "mil", "--target", "lesion",
                 "--param", "weights=product", "--out", str(heat)]) == 0
    assert "on demo-mil" in capsys.readouterr().out
    with Image.open(heat) as png:
        assert png.size == (512, 512)
    assert main(["explain", str(image), "--server", server, "--model", MIL, "--method", "gradcam"]) == 1
    assert "422" in capsys.readouterr().err
