"""Segmentation targets (Seg-Grad-CAM, Vinogradova et al. 2020): a class summed over a region, through every method.

The explained score is ``sum_{(i,j) in M} Y^c_{ij}``; the maps are checked against a hand autograd computation, against
pytorch-grad-cam's ``SemanticSegmentationTarget`` on the same layer (raw maps), and for batch independence."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_support import frozen, randomise_bn
from torch import nn

from service.engine import get_method
from service.engine.passes import complete
from service.engine.targets import ClassRegion, Region, TargetRequest
from service.errors import InvalidOption


class TinySeg(nn.Module):
    """conv-BN-ReLU → strided conv-ReLU (``encoder``, the CAM layer) → 1x1 classifier → bilinear upsampling, returning
    torchvision's ``{"out": logits}``."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(12, classes, 1)

    def forward(self, x):
        return {"out": F.interpolate(self.classifier(self.encoder(x)), size=x.shape[-2:], mode="bilinear",
                                     align_corners=False)}


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return frozen(randomise_bn(TinySeg()))


def _x(n: int = 1, size: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


def _dominant(model, x) -> int:
    """The class the model predicts at most pixels of ``x[0]`` (a predicted region that is not empty)."""
    return int(torch.bincount(model(x)["out"].argmax(1)[0].flatten(), minlength=3).argmax())


def _explain(method: str, model, x, targets, layer="encoder", **params):
    requests = [TargetRequest((t,)) for t in targets]
    return complete(get_method(method).steps(model, x, requests, layer=layer, task="segmentation", **params))


def _hand_gradcam(model, x, layer, cls, mask):
    """Grad-CAM written out: gradient of ``sum(Y^c * M)`` w.r.t. the layer, GAP weights, ReLU of the weighted sum."""
    trainable = copy.deepcopy(model).requires_grad_(True)
    acts = []
    handle = dict(trainable.named_modules())[layer].register_forward_hook(lambda m, a, o: acts.append(o))
    out = trainable(x)["out"]
    handle.remove()
    score = (out[0, cls] * mask).sum()
    (grad,) = torch.autograd.grad(score, acts[0])
    return (grad.mean((2, 3), keepdim=True) * acts[0]).sum(1).relu()[0].detach()


@pytest.mark.parametrize("region", ["all", "box", "predicted", "mask"])
def test_gradcam_equals_hand_autograd(region):
    model, x = _tiny(), _x()
    out = model(x)["out"]
    cls = _dominant(model, x)
    if region == "all":
        spec, mask = Region("all"), torch.ones(24, 24)
    elif region == "box":
        spec = Region("box", box=(0.25, 0.0, 0.75, 0.5))
        mask = torch.zeros(24, 24)
        mask[0:12, 6:18] = 1
    elif region == "predicted":
        spec, mask = Region("predicted"), (out.argmax(1)[0] == cls).float()
        assert float(mask.sum()) > 0
    else:
        mask = torch.zeros(24, 24)
        mask[3:9, 10:20] = 1
        spec = Region.from_mask(mask.bool())
    explained = _explain("gradcam", model, x, [ClassRegion(cls, spec)])
    mine, theirs = explained.maps[0], _hand_gradcam(model, x, "encoder", cls, mask)
    assert float(theirs.std()) > 0
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    probability = torch.softmax(out, 1)[0, cls]
    torch.testing.assert_close(explained.scores[0], (probability * mask).sum() / mask.sum())


def test_box_and_mask_regions_scale_to_the_output_grid():
    """A fractional box is the same pixels as the equivalent mask at a different resolution."""
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0:2, 1:3] = True
    grid_mask = Region.from_mask(mask).grid((24, 24), torch.device("cpu"))
    grid_box = Region("box", box=(0.25, 0.0, 0.75, 0.5)).grid((24, 24), torch.device("cpu"))
    assert torch.equal(grid_mask, grid_box)
    assert int(grid_box.sum()) == 12 * 12


def test_agrees_with_pytorch_grad_cam_semantic_segmentation_target():
    """torchvision FCN (random init), layer ``backbone.layer4``: the raw Grad-CAM maps correlate (r >= 0.98)."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
    from torchvision.models.segmentation import fcn_resnet50

    torch.manual_seed(0)
    model = frozen(randomise_bn(fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=False)))
    x = _x(size=64, seed=3)
    out = model(x)["out"]
    # The class with the most predicted pixels, so the region is neither empty nor everything.
    counts = torch.bincount(out.argmax(1).flatten(), minlength=3)
    cls = int(counts.argmax())
    mask = (out.argmax(1)[0] == cls).float()

    class Unwrap(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            return self.inner(t)["out"]

    wrapped = Unwrap(copy.deepcopy(model)).requires_grad_(True)
    layer = wrapped.inner.backbone.layer4
    target = SemanticSegmentationTarget(cls, mask.numpy())
    with GradCAM(model=wrapped, target_layers=[layer]) as cam:
        output = cam.activations_and_grads(x)
        wrapped.zero_grad()
        target(output[0]).backward()
        acts = cam.activations_and_grads.activations[-1].cpu().numpy()
        grads = cam.activations_and_grads.gradients[-1].cpu().numpy()
        raw = cam.get_cam_image(x, [layer], [target], acts, grads, False)
    theirs = torch.from_numpy(np.maximum(raw, 0)).float()[0]
    mine = _explain("gradcam", model, x, [ClassRegion(cls, Region("predicted"))], layer="backbone.layer4").maps[0]
    assert mine.shape == theirs.shape
    assert float(mine.std()) > 0
    r = float(torch.corrcoef(torch.stack([mine.flatten(), theirs.flatten()]))[0, 1])
    assert r >= 0.98, r


@pytest.mark.parametrize("method,params", [("gradcam", {}), ("hirescam", {}), ("layercam", {}),
                                           ("saliency", {}), ("integrated-gradients", {"steps": 4}),
                                           ("occlusion", {"window": 8, "stride": 8}),
                                           ("rise", {"masks": 16, "cells": 4})])
def test_rows_with_different_targets_in_one_batch_equal_the_rows_alone(method, params):
    model, x = _tiny(), _x(n=2)
    targets = [ClassRegion(0, Region("predicted")), ClassRegion(2, Region("box", box=(0.0, 0.5, 0.5, 1.0)))]
    layer = "encoder" if get_method(method).uses_layer else None
    batched = _explain(method, model, x, targets, layer=layer, **params)
    for i, target in enumerate(targets):
        alone = _explain(method, model, x[i:i + 1], [target], layer=layer, **params)
        scale = float(alone.maps[0].abs().max())
        torch.testing.assert_close(batched.maps[i], alone.maps[0], rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(batched.scores[i], alone.scores[0], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(batched.maps[0], batched.maps[1])
    assert all(not p.requires_grad for p in model.parameters())


def test_predicted_region_is_frozen_from_the_clean_forward_for_perturbations():
    """Occlusion scores the clean image's predicted pixels in every occluded copy (a copy whose argmax moved still
    sums the same pixels): its map equals one computed by hand with the clean mask fixed."""
    model, x = _tiny(), _x()
    cls = _dominant(model, x)
    target = ClassRegion(cls, Region("predicted"))
    out = model(x)["out"]
    bound = target.bind(out, 0)
    mask = (out.argmax(1)[0] == cls).float()
    assert bound == target and torch.equal(bound.grid, mask)
    maps = _explain("occlusion", model, x, [target], window=8, stride=8, baseline="zero").maps[0]
    reference = float((out[0, cls] * mask).sum())
    hand = torch.zeros(24, 24)
    for y0 in range(0, 24, 8):
        for x0 in range(0, 24, 8):
            occluded = x.clone()
            occluded[:, :, y0:y0 + 8, x0:x0 + 8] = 0
            hand[y0:y0 + 8, x0:x0 + 8] = reference - float((model(occluded)["out"][0, cls] * mask).sum())
    assert float(hand.abs().max()) > 0
    torch.testing.assert_close(maps, hand, rtol=1e-4, atol=1e-4 * float(hand.abs().max()))


def test_class_targets_refuse_segmentation_outputs_and_region_targets_refuse_classifiers():
    from engine_support import TinyNet

    from service.engine.targets import ClassLogit

    with pytest.raises(InvalidOption, match="segmentation model needs a class and a region"):
        _explain("gradcam", _tiny(), _x(), [ClassLogit(0)])
    classifier = frozen(TinyNet())
    with pytest.raises(InvalidOption, match="segmentation"):
        complete(get_method("gradcam").steps(classifier, _x(size=16), [TargetRequest((ClassRegion(0),))],
                                             layer="features", task="multiclass"))
    with pytest.raises(InvalidOption, match="out of range"):
        _explain("gradcam", _tiny(), _x(), [ClassRegion(7)])
    with pytest.raises(InvalidOption, match="box"):
        Region("box", box=(0.5, 0.0, 0.25, 1.0))


def test_cam_refuses_region_targets():
    with pytest.raises(InvalidOption):
        _explain("cam", _tiny(), _x(), [ClassRegion(0, Region("all"))])


def test_top_k_ranks_segmentation_classes_by_mean_probability():
    model, x = _tiny(), _x()
    explained = complete(get_method("gradcam").steps(model, x, [TargetRequest(top_k=2)], layer="encoder",
                                                     task="segmentation"))
    mean = torch.softmax(model(x)["out"], 1)[0].mean((1, 2))
    assert [t.index for t in explained.rows.targets] == mean.topk(2).indices.tolist()


def test_top_k_targets_take_the_request_region_and_activation_and_keep_the_clean_planes():
    """Top-k segmentation targets rank by the request's activation, are explained over its region, and carry the
    clean forward's class probability and predicted mask (what /localize boxes)."""
    model, x = _tiny(), _x()
    logits = model(x)["out"]
    request = TargetRequest(top_k=2, region=Region("all"), activation="sigmoid")
    explained = complete(get_method("gradcam").steps(model, x, [request], layer="encoder", task="segmentation"))
    sigmoid = torch.sigmoid(logits)[0]
    assert [t.index for t in explained.rows.targets] == sigmoid.mean((1, 2)).topk(2).indices.tolist()
    for target, score in zip(explained.rows.targets, explained.scores):
        assert target.region == Region("all") and target.activation == "sigmoid"
        torch.testing.assert_close(target.probability, sigmoid[target.index])
        assert torch.equal(target.predicted, logits[0, target.index] > 0)
        torch.testing.assert_close(score, sigmoid[target.index].mean())   # region all: the mean over the image
    softmax_target = ClassRegion(1).bind(logits, 0)
    assert torch.equal(softmax_target.predicted, logits.argmax(1)[0] == 1)
    torch.testing.assert_close(softmax_target.probability, torch.softmax(logits, 1)[0, 1])
