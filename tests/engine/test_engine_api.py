"""The engine's public surface: registry, parameter validation, catalogue, target layers on torchvision models."""

from __future__ import annotations

import json

import pytest
import torch
from engine_support import TinyNet, frozen

from service.engine import (
    METHODS,
    describe,
    find_target_layer,
    get_method,
    spatial_layers,
    usable_methods,
    validate_params,
)
from service.engine.base import Explainer, ParamSpec
from service.errors import BadOption, InvalidOption, NotFound

REQUIRED = ["cam", "gradcam", "gradcam-counterfactual", "guided-backprop", "guided-gradcam", "saliency", "smoothgrad",
            "occlusion", "gradcam-pp", "scorecam", "layercam", "integrated-gradients"]


def test_registry_holds_every_required_method_with_its_metadata():
    assert set(REQUIRED) <= set(METHODS)
    assert {"hirescam", "xgradcam", "rise"} <= set(METHODS)
    for name, method in METHODS.items():
        assert isinstance(method, Explainer) and method.name == name
        assert method.family in ("cam", "gradient", "perturbation", "attention", "mil")
        assert method.description and isinstance(method.params, tuple)
        assert all(isinstance(p, ParamSpec) for p in method.params)
    assert METHODS["gradcam"].uses_layer and METHODS["guided-gradcam"].uses_layer
    assert not METHODS["saliency"].uses_layer and not METHODS["occlusion"].uses_layer
    # flags follow the measured randomisation check of bench/quality.py
    # (guided Grad-CAM passes it, unlike guided backprop)
    flagged = {name for name, m in METHODS.items() if m.sanity}
    assert flagged == {"guided-backprop", "saliency", "gradcam-pp", "layercam", "scorecam"}


def test_get_method_tolerates_spellings_and_lists_valid_names():
    assert get_method("gradcam") is METHODS["gradcam"]
    assert get_method("GradCAM++") is METHODS["gradcam-pp"]
    assert get_method("integrated_gradients") is METHODS["integrated-gradients"]
    assert get_method("Grad-CAM") is METHODS["gradcam"]
    with pytest.raises(NotFound) as err:
        get_method("lime")
    assert err.value.status == 404 and "'lime'" in err.value.detail
    for name in REQUIRED:
        assert name in err.value.detail


def test_validate_params_coerces_form_strings_and_applies_defaults():
    occ = get_method("occlusion")
    assert validate_params(occ, {}) == {"window": 32, "stride": 16, "baseline": "zero", "blur_sigma": 0.05}
    assert validate_params(occ, {"window": "16", "stride": ["8"], "baseline": "Blur"}) == {
        "window": 16, "stride": 8, "baseline": "blur", "blur_sigma": 0.05}
    assert validate_params(occ, {"window": 16.0, "stride": None})["stride"] == 16
    sg = get_method("smoothgrad")
    assert validate_params(sg, {"noise": "0.2", "samples": "10"}) == {"samples": 10, "noise": 0.2, "seed": 0,
                                                                       "augment": False, "augment_shift": 0.0625}
    assert validate_params(get_method("gradcam"), {}) == {"augment": False, "augment_shift": 0.0625}


@pytest.mark.parametrize("raw, error, words", [
    ({"window": "abc"}, BadOption, ["'window'", "integer"]),
    ({"window": "2.5"}, BadOption, ["'window'", "integer"]),
    ({"window": True}, BadOption, ["'window'"]),
    ({"window": ["8", "16"]}, BadOption, ["'window'", "2 values"]),
    ({"size": 3}, BadOption, ["'size'", "unknown", "window"]),
    ({"window": 0}, InvalidOption, ["'window'", "between 1 and 4096", "0"]),
    ({"baseline": "purple"}, InvalidOption, ["'baseline'", "'zero'", "'blur'"]),
    ({"blur_sigma": "nan"}, InvalidOption, ["'blur_sigma'", "finite"]),
])
def test_validate_params_errors_name_the_parameter_and_its_bounds(raw, error, words):
    with pytest.raises(error) as err:
        validate_params(get_method("occlusion"), raw)
    assert type(err.value) is error
    for w in words:
        assert w in err.value.detail
    # one shape for field errors everywhere: {"field", "message"}, naming the parameter
    assert err.value.errors and all(e.field in raw for e in err.value.errors)
    assert all(set(e.to_json()) == {"field", "message"} for e in err.value.errors)


def test_describe_is_json_catalogue():
    catalogue = describe()
    json.dumps(catalogue)
    by_name = {m["name"]: m for m in catalogue}
    assert set(by_name) == set(METHODS)
    ig = by_name["integrated-gradients"]
    assert ig["family"] == "gradient" and ig["signed"] is True and ig["output"] == "input"
    assert ig["params"]["steps"] == {"type": "integer", "default": 32, "minimum": 1, "maximum": 1024,
                                     "description": ig["params"]["steps"]["description"]}
    assert ig["params"]["baseline"]["choices"] == ["zero", "black", "mean", "blur"]
    assert by_name["gradcam"]["output"] == "layer" and by_name["gradcam"]["uses_layer"] is True


def test_bad_inputs_and_targets_are_client_errors():
    model = frozen(TinyNet())
    x = torch.randn(1, 3, 8, 8)
    for name in ("gradcam", "saliency", "occlusion"):
        with pytest.raises(InvalidOption, match="out of range for a model with 5 classes"):
            METHODS[name].explain(model, x, torch.tensor([5]), layer=None, task="multiclass", window=4, stride=4) \
                if name == "occlusion" else METHODS[name].explain(model, x, torch.tensor([-1]), layer=None,
                                                                   task="multiclass")
    with pytest.raises(InvalidOption, match="task"):
        METHODS["gradcam"].explain(model, x, torch.tensor([0]), layer=None, task="regression")
    with pytest.raises(InvalidOption, match="targets"):
        METHODS["gradcam"].explain(model, x, torch.tensor([0, 1]), layer=None, task="multiclass")
    with pytest.raises(BadOption, match="unknown parameter"):
        METHODS["gradcam"].explain(model, x, torch.tensor([0]), layer=None, task="multiclass", steps=3)


ARCHS = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    "vgg11": "features.19",
    "densenet121": "features",
    "mobilenet_v3_small": "features",
    "efficientnet_b0": "features",
    "convnext_tiny": "features",
}
# XGrad-CAM assumes ReLU'd activations: refused where the default layer is a norm (DenseNet's norm5, ConvNeXt) or
# ends in SiLU/Hardswish (EfficientNet, MobileNetV3), which go negative.
NON_NEGATIVE = {"xgradcam"}
ATTENTION = {"attention-rollout", "attention-gradients"}   # transformers only
NOT_USABLE = {
    "resnet18": ATTENTION,
    "resnet50": ATTENTION,
    "vgg11": {"cam"} | ATTENTION,
    "densenet121": NON_NEGATIVE | ATTENTION,
    "mobilenet_v3_small": {"cam"} | NON_NEGATIVE | ATTENTION,
    "efficientnet_b0": {"guided-backprop", "guided-gradcam"} | NON_NEGATIVE | ATTENTION,
    "convnext_tiny": {"cam", "guided-backprop", "guided-gradcam"} | NON_NEGATIVE | ATTENTION,
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_torchvision_architectures(arch):
    """Auto layer, valid layer names, applicable methods, and one cheap explanation per family."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = frozen(getattr(torchvision.models, arch)(weights=None))
    shape = (3, 64, 64)
    layer = find_target_layer(model, shape)
    assert layer == ARCHS[arch]
    layers = spatial_layers(model, shape)
    assert layer in layers and "" not in layers
    usable = set(usable_methods(model, shape, layer=layer))
    classifier_methods = {n for n, m in METHODS.items() if m.tasks is None or "multiclass" in m.tasks}
    assert classifier_methods - usable == NOT_USABLE[arch]
    assert "drise" not in usable   # a detection method
    x = torch.randn(2, *shape)
    t = torch.tensor([1, 2])
    for name in ("gradcam", "saliency"):
        out = METHODS[name].explain(model, x, t, layer=None, task="multiclass")
        assert out.dtype == torch.float32 and out.shape[0] == 2 and bool((out >= 0).all())
        if name == "saliency":
            assert out.shape == (2, 64, 64)
    with pytest.raises(InvalidOption) as err:
        METHODS["gradcam"].explain(model, x[:1], t[:1], layer="no.such.layer", task="multiclass")
    assert layer in err.value.detail


def test_vgg16_auto_layer_is_the_relu_after_the_last_conv_at_224():
    torchvision = pytest.importorskip("torchvision")
    model = frozen(torchvision.models.vgg16(weights=None))
    assert find_target_layer(model, (3, 224, 224)) == "features.29"
