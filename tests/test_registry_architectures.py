"""Architectures through the registry and the API: torch.export sources, transformers (token layout inferred or
set with ``tokens:``), the default layer's reason, the layers a user may choose, refusals with reasons."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.registry import ModelRegistry
from tests.support import make_client, wait_ready

torchvision = pytest.importorskip("torchvision")


def tiny_vit(num_classes: int = 5) -> torch.nn.Module:
    """A small torchvision ViT (16 px, 4x4 patches of 4 px, 2 blocks) with a non-zero head (python: factory)."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=num_classes)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (torch.randn(2, 3, 64, 64),),
                                      dynamic_shapes={"x": {0: torch.export.Dim.AUTO}})
    torch.export.save(program, str(folder / "r18.pt2"))
    (folder / "models.yaml").write_text(
        "models:\n"
        "  - name: exported\n    source: export:r18.pt2\n    input_size: [64, 64]\n    default: true\n"
        "  - name: vit\n    source: python:tests.test_registry_architectures:tiny_vit\n    input_size: [16, 16]\n"
        "  - name: vit-declared\n    source: python:tests.test_registry_architectures:tiny_vit\n"
        "    input_size: [16, 16]\n    tokens: {grid: [4, 4], prefix: 1}\n")
    return folder / "models.yaml"


def test_an_exported_program_is_served_with_hook_based_methods(exported):
    reg = ModelRegistry.from_file(exported, device_policy="cpu")
    reg.load_all()
    model = reg.get("exported")
    assert model.target_layer == "layer4" and model.capabilities.target_layer_reason
    usable = set(model.capabilities.usable_methods)
    assert {"gradcam", "layercam", "guided-backprop", "guided-gradcam", "cam", "saliency"} <= usable
    assert len(model.weights_digest) == 64   # the .pt2 file's digest


def test_a_vit_through_the_api(exported):
    with make_client(models=exported) as c:
        wait_ready(c)
        detail = c.get("/models/vit").json()
        assert detail["target_layer"] == "encoder.layers.encoder_layer_1.ln_1"
        assert "patch tokens" in detail["target_layer_reason"]
        layers = {entry["name"]: entry for entry in detail["layers"]}
        assert layers["encoder.layers.encoder_layer_1.ln_1"] == {
            "name": "encoder.layers.encoder_layer_1.ln_1", "layout": "tokens", "grid": [4, 4], "channels": 16,
            "prefix": 1}
        assert "linear head" in detail["refused"]["cam"]   # refused, with the reason
        assert {"attention-rollout", "attention-gradients", "gradcam", "layercam"} <= set(detail["methods"])
        assert "class-agnostic" in " ".join(detail["caveats"]["attention-rollout"])
        assert "4x4" in " ".join(detail["caveats"]["gradcam"])
        for method in ("gradcam", "attention-gradients", "attention-rollout"):
            r = c.post(f"/explain/{method}", files={"image": ("x.png", _png())},
                       data={"model": "vit", "outputs": "raw,heatmap", "top_k": "2"})
            assert r.status_code == 200, r.text
            assert all(e["raw"]["shape"] == [4, 4] for e in r.json()["explanations"])
        refused = c.post("/explain/cam", files={"image": ("x.png", _png())}, data={"model": "vit"})
        assert refused.status_code == 422 and "cam" in refused.json()["detail"]
        xgrad = c.post("/explain/xgradcam", files={"image": ("x.png", _png())}, data={"model": "vit"})
        assert xgrad.status_code == 422 and "non-negative" in xgrad.json()["detail"]
        declared = c.get("/models/vit-declared").json()
        assert declared["target_layer"] == detail["target_layer"]
        custom = c.post("/explain/gradcam", files={"image": ("x.png", _png())},
                        data={"model": "vit", "layer": "encoder.layers.encoder_layer_0.ln_1", "outputs": "raw"})
        assert custom.status_code == 200 and custom.json()["layer"] == "encoder.layers.encoder_layer_0.ln_1"
