"""models.yaml parsing, loading and the one-line error messages for broken entries."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from service.config import DEFAULT_MODELS_FILE
from service.errors import ConfigError, InvalidOption, NotFound
from service.registry import ModelRegistry, read_registry_file

DEMO_ENTRY = """
  - name: {name}
    source: python:service.demo.model:create_demo_model
    weights: {weights}
    labels: [circle, square, triangle, cross, ring, star]
    task: multilabel
    input_size: [128, 128]
"""
WEIGHTS = (DEFAULT_MODELS_FILE.parent / "demo" / "demo_cnn.safetensors").as_posix()


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_shipped_registry_serves_the_demo_by_default():
    specs = read_registry_file(DEFAULT_MODELS_FILE)
    assert [s.name for s in specs] == ["demo", "demo-seg", "demo-3d", "demo-mil"]  # ImageNet entries ship disabled
    reg = ModelRegistry.from_file(DEFAULT_MODELS_FILE, device_policy="cpu")
    reg.load_all()
    model = reg.get(None)
    assert model.name == "demo" and model.task == "multilabel" and model.num_classes == 6
    assert model.target_layer  # auto-detected
    assert all(not p.requires_grad for p in model.module.parameters())
    assert not model.module.training
    assert reg.ready


@pytest.mark.parametrize(
    "body, needle",
    [
        ("models: 3", "top-level 'models:' list"),
        ("models:\n  - name: x\n    source: nope:thing\n", "field 'source'"),
        ("models:\n  - name: x\n    source: torchvision:resnet18\n    task: regression\n", "field 'task'"),
        ("models:\n  - name: x\n    source: torchvision:resnet18\n    colour: red\n", "field 'colour'"),
        ("models:\n  - name: 'bad name!'\n    source: torchvision:resnet18\n", "field 'name'"),
        ("models:\n  - name: x\n    source: torchvision:resnet18\n    input_size: [2, 2]\n", "field 'input_size'"),
        ("models:\n  - name: x\n    source: torchvision:resnet18\n    mean: [0.1, 0.2]\n", "mean needs 1 or 3"),
        ("models:\n  - name: x\n    source: torchvision:resnet18\n  - name: x\n    source: torchvision:resnet18\n",
         "duplicate"),
        ("models: [\n", "not valid YAML"),
    ],
)
def test_broken_entries_fail_with_one_line_naming_the_field(tmp_path, body, needle):
    with pytest.raises(ConfigError) as info:
        read_registry_file(write(tmp_path, body))
    message = str(info.value)
    assert needle in message
    assert "\n" not in message.strip()


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("    source: torchvision:not_a_net\n", "field 'source': torchvision has no model"),
        ("    source: torchvision:resnet18\n    weights: missing.pth\n", "field 'weights': file not found"),
        ("    source: torchvision:resnet18\n    weights: IMAGENET9K_V9\n", "field 'weights'"),
        ("    source: torchvision:resnet18\n    num_classes: 5\n    labels: [a, b]\n", "field 'labels'"),
        ("    source: python:service.nothing:create\n", "field 'source': cannot import"),
        ("    source: torchvision:resnet18\n    target_layer: layer9\n", "field 'target_layer'"),
        ("    source: torchscript:nowhere.pt\n", "field 'source': file not found"),
    ],
)
def test_load_errors_name_the_model_and_field(tmp_path, extra, needle):
    path = write(tmp_path, "models:\n  - name: broken\n" + extra + "    input_size: [64, 64]\n")
    reg = ModelRegistry.from_file(path, device_policy="cpu")
    with pytest.raises(ConfigError) as info:
        reg.load_all()
    assert str(info.value).startswith("model 'broken': ")
    assert needle in str(info.value)
    assert reg.state == "failed" and reg.error


def test_weights_that_do_not_fit_are_reported(tmp_path):
    path = write(tmp_path, "models:" + DEMO_ENTRY.format(name="d", weights=WEIGHTS)
                 .replace("create_demo_model", "create_demo_model\n    args: {num_classes: 3}")
                 .replace("labels: [circle, square, triangle, cross, ring, star]", "labels: [a, b, c]"))
    with pytest.raises(ConfigError, match="does not fit the architecture"):
        ModelRegistry.from_file(path, device_policy="cpu").load_all()


def test_torchscript_and_local_state_dict_sources(tmp_path):
    from service.demo.model import create_demo_model

    net = create_demo_model().eval()
    torch.jit.trace(net, torch.zeros(1, 3, 128, 128)).save(str(tmp_path / "demo.pt"))
    torch.save(net.state_dict(), tmp_path / "demo_state.pth")
    path = write(tmp_path, """
        models:
          - name: scripted
            source: torchscript:demo.pt
            input_size: [128, 128]
          - name: python-pth
            source: python:service.demo.model:create_demo_model
            weights: demo_state.pth
            input_size: [128, 128]
            default: true
        """)
    reg = ModelRegistry.from_file(path, device_policy="cpu")
    reg.load_all()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = net(x)
        assert torch.allclose(reg.get("scripted").module(x), expected, atol=1e-5)
        assert torch.allclose(reg.get("python-pth").module(x), expected, atol=1e-5)
    assert reg.get(None).name == "python-pth"
    scripted = reg.get("scripted")
    assert scripted.labels == [str(i) for i in range(6)]
    assert scripted.target_layer is None  # ScriptModules cannot be hooked: only hook-free methods are offered
    usable = set(scripted.capabilities.usable_methods)
    assert usable == {"saliency", "smoothgrad", "integrated-gradients", "occlusion", "rise"}
    assert reg.get("python-pth").capabilities.methods["gradcam"] is None


def test_torchvision_random_init_with_labels_file(tmp_path):
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    path = write(tmp_path, """
        models:
          - name: tv
            source: torchvision:resnet18
            weights: none
            labels: labels.txt
            input_size: [64, 64]
        """)
    reg = ModelRegistry.from_file(path, device_policy="cpu")
    reg.load_all()
    m = reg.get("tv")
    assert m.labels == ["cat", "dog", "bird"] and m.num_classes == 3
    assert m.target_layer.startswith("layer4")
    assert m.class_index("dog") == 1 and m.class_index("2") == 2
    with pytest.raises(InvalidOption, match="not a label"):
        m.class_index("fish")
    with pytest.raises(InvalidOption, match="out of range"):
        m.class_index(7)
    with pytest.raises(NotFound, match="available: tv"):
        reg.get("nope")


def test_a_torchvision_detector_entry_loads_offline_with_its_defaults(tmp_path):
    """task: detection on a torchvision builder: no ImageNet backbone download (weights_backbone defaults to None),
    [0, 1] inputs (the detector normalises), the class count read off its head, a backbone layer, D-RISE offered and
    CAM not; a classifier-style output is refused with the field named."""
    from service.registry import ModelRegistry

    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: det\n    source: torchvision:retinanet_resnet50_fpn\n    task: detection\n"
                    "    input_size: [96, 96]\n    args: {num_classes: 3, min_size: 96, max_size: 96}\n")
    registry = ModelRegistry.from_file(path)
    registry.load_all()
    model = registry.get("det")
    assert model.spec.mean == [0.0] and model.spec.std == [1.0]
    assert model.num_classes == 3 and model.target_layer == "backbone.body.layer4"
    assert "drise" in model.capabilities.usable_methods and "cam" not in model.capabilities.usable_methods
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: det\n    source: torchvision:resnet18\n    task: detection\n"
                   "    input_size: [64, 64]\n")
    with pytest.raises(ConfigError, match="field 'source': a detection model must follow torchvision's detection API"):
        ModelRegistry.from_file(bad).load_all()
