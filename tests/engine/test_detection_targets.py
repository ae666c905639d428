"""Detection targets in the engine: the padded detections wrapper, the box-score target (agreement with
pytorch-grad-cam's FasterRCNNBoxScoreTarget and with a hand autograd computation), batching independence, selection
by id / box + label / label, and D-RISE against a hand loop over the same masks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from service.engine import get_method
from service.engine.detection import Detection, DetectorOutputs, detection_count, drise_similarity
from service.engine.passes import complete
from service.engine.perturbation import rise_masks, rise_upsample
from service.engine.targets import TargetRequest
from service.errors import InvalidOption
from tests.engine.det_support import SIZE, tiny_detector
from tests.engine.engine_support import assert_unchanged, hook_free, snapshot

LAYER = "backbone.body.16"


@pytest.fixture(scope="module")
def detector():
    model = DetectorOutputs(tiny_detector(), max_detections=50).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _x(n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))


def _explain(method, model, x, targets, **params):
    requests = [TargetRequest((t,)) for t in targets]
    m = get_method(method)
    return complete(m.steps(model, x, requests, layer=LAYER if m.uses_layer else None, task="detection", **params))


def test_wrapper_pads_sorts_and_keeps_the_detectors_names(detector):
    raw = detector.detector
    x = _x(2)
    out = detector(x)
    assert out.shape == (2, 50, 6)
    with torch.no_grad():
        found = raw(list(x))
    for i, det in enumerate(found):
        n = detection_count(out[i])
        assert n == min(50, len(det["scores"])) and n > 3
        assert torch.all(out[i, :n - 1, 4] >= out[i, 1:n, 4])              # best first
        assert torch.all(out[i, n:, 5] == -1) and torch.all(out[i, n:, 4] == 0)
        order = det["scores"].argsort(descending=True, stable=True)[:n]
        torch.testing.assert_close(out[i, :n, :4], det["boxes"][order])
    assert [k for k, _ in detector.named_modules()][1:] == [k for k, _ in raw.named_modules()][1:]
    assert detector.state_dict().keys() == raw.state_dict().keys()
    detector.train()
    assert raw.training
    detector.eval()
    assert not raw.training


def test_gradcam_agrees_with_pytorch_grad_cam_box_score_target(detector):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    x = _x(seed=1)
    out = detector(x)
    j = 2
    box, label = out[0, j, :4], int(out[0, j, 5])
    raw = copy.deepcopy(detector.detector).requires_grad_(True)
    layer = dict(raw.named_modules())[LAYER]
    target = FasterRCNNBoxScoreTarget(labels=[label], bounding_boxes=box[None].numpy(), iou_threshold=0.5)
    with GradCAM(model=raw, target_layers=[layer]) as cam:
        outputs = cam.activations_and_grads(x)
        raw.zero_grad()
        target(outputs[0]).backward()
        acts = cam.activations_and_grads.activations[-1].cpu().numpy()
        grads = cam.activations_and_grads.gradients[-1].cpu().numpy()
        theirs_raw = cam.get_cam_image(x, [layer], [target], acts, grads, False)
    theirs = torch.from_numpy(np.maximum(theirs_raw, 0)).float()[0]
    # pytorch-grad-cam adds the IoU to the score (its box_regression): so does ours with box_regression.
    mine = _explain("gradcam", detector, x, [Detection(j, box_regression=True)]).maps[0]
    assert mine.shape == theirs.shape and float(mine.std()) > 0
    r = float(torch.corrcoef(torch.stack([mine.flatten(), theirs.flatten()]))[0, 1])
    assert r >= 0.98, r


def test_gradcam_equals_hand_autograd_on_the_matched_detection_score(detector):
    x = _x(seed=2)
    j = 1
    with torch.no_grad():
        ref = detector(x)[0, j]
    captured = {}
    module = dict(detector.named_modules())[LAYER]

    def keep(mod, args, out):
        captured["a"] = out

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            out = detector(x.clone().requires_grad_(True))
            dets = out[0]
            same = dets[:, 5] == ref[5]
            ious = box_iou(ref[None, :4], dets[:, :4])[0]
            k = int(torch.where(same, ious.detach(), torch.tensor(-1.0)).argmax())
            (grad,) = torch.autograd.grad(dets[k, 4], captured["a"])
    finally:
        handle.remove()
    a = captured["a"].detach()
    expected = torch.relu((grad.mean((2, 3), keepdim=True) * a).sum(1))[0]
    explained = _explain("gradcam", detector, x, [Detection(j)])
    torch.testing.assert_close(explained.maps[0], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    torch.testing.assert_close(explained.scores[0], ref[4], rtol=1e-5, atol=1e-6)
    assert explained.rows.targets[0].label == int(ref[5])


@pytest.mark.parametrize("method,params", [("gradcam", {}), ("saliency", {}), ("rise", {"masks": 6, "cells": 4}),
                                           ("drise", {"masks": 6, "cells": 4})])
def test_rows_with_different_detections_in_one_batch_equal_the_rows_alone(detector, method, params):
    x = _x(2, seed=3)
    before = snapshot(detector)
    targets = [Detection(0), Detection(3)]
    batched = _explain(method, detector, x, targets, **params)
    for i, target in enumerate(targets):
        alone = _explain(method, detector, x[i:i + 1], [target], **params)
        scale = float(alone.maps[0].abs().max())
        assert scale > 0
        torch.testing.assert_close(batched.maps[i], alone.maps[0], rtol=1e-3, atol=1e-4 * scale)
        torch.testing.assert_close(batched.scores[i], alone.scores[0], rtol=1e-4, atol=1e-6)
    # two detections of the same image get their own maps
    two = _explain(method, detector, x[:1].expand(2, -1, -1, -1).clone(), [Detection(0), Detection(3)], **params)
    assert float((two.maps[0] - two.maps[1]).abs().max()) > 1e-2 * float(two.maps.abs().max())
    assert hook_free(detector)
    assert_unchanged(detector, before)


def test_detection_by_box_and_label_or_label_resolves_to_the_clean_forwards_detection(detector):
    x = _x(seed=4)
    out = detector(x)[0]
    j = 4
    label = int(out[j, 5])
    nudged = tuple(float(v) + 1.0 for v in out[j, :4])
    bound = Detection(label=label, box=nudged).bind(out[None], 0)
    assert bound.label == label
    assert box_iou(torch.tensor([bound.box]), out[j:j + 1, :4])[0, 0] >= 0.99 or bound.id == j
    first = Detection(label=label).bind(out[None], 0)
    assert first.id == int((out[:, 5] == label).nonzero()[0, 0])
    with pytest.raises(InvalidOption, match="does not exist"):
        Detection(999).bind(out[None], 0)
    with pytest.raises(InvalidOption, match="IoU"):
        Detection(label=label, box=(0.0, 0.0, 1.0, 1.0)).bind(out[None], 0)
    with pytest.raises(InvalidOption, match="detector"):
        Detection(0).bind(torch.zeros(1, 5), 0)


def test_top_k_without_targets_explains_the_most_confident_detections_above_the_floor(detector):
    x = _x(seed=5)
    out = detector(x)[0]
    floor = float(out[2, 4]) - 1e-6
    m = get_method("gradcam")
    explained = complete(m.steps(detector, x, [TargetRequest(top_k=5, min_probability=floor)], layer=LAYER,
                                 task="detection"))
    ids = [t.id for t in explained.rows.targets]
    assert ids == [i for i in range(5) if float(out[i, 4]) >= floor]
    assert 1 <= len(ids) <= 3


def test_drise_equals_a_hand_loop_over_the_same_masks(detector):
    x = _x(seed=6)
    n, cells, p = 5, 4, 0.5
    explained = _explain("drise", detector, x, [Detection(1)], masks=n, cells=cells, p=p, seed=7)
    ref = detector(x)[0, 1]
    grids, shifts = rise_masks(7, n, cells, p, (SIZE, SIZE), device=x.device)
    total = torch.zeros(SIZE, SIZE)
    with torch.no_grad():
        for i in range(n):
            mask = rise_upsample(grids[i:i + 1], shifts[i:i + 1], (SIZE, SIZE))[0, 0]
            dets = detector(x * mask)[0]
            ious = box_iou(ref[None, :4], dets[:, :4])[0]
            weight = (ious * dets[:, 4] * (dets[:, 5] == ref[5]).float()).max().clamp_min(0)
            total += weight * mask
    expected = total / (n * p)
    torch.testing.assert_close(explained.maps[0], expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    weights = drise_similarity(detector(x), torch.tensor([0]), [Detection(1).bind(detector(x), 0)])
    torch.testing.assert_close(weights[0], ref[4].float(), rtol=1e-5, atol=1e-6)  # unmasked: IoU 1 x its own score


def test_drise_and_cam_refuse_what_they_cannot_explain(detector):
    with pytest.raises(InvalidOption, match="detections"):
        get_method("drise").check_model(detector, (3, SIZE, SIZE), task="multiclass")
    with pytest.raises(InvalidOption, match="detector"):
        get_method("cam").check_model(detector, (3, SIZE, SIZE), layer=LAYER, task="detection")


@pytest.mark.parametrize("arch", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_other_torchvision_detector_families_explain_a_detection(arch):
    """RetinaNet, FCOS and SSDlite (random init, zero score threshold): wrapped, a default layer in the backbone,
    Grad-CAM and saliency of detection 0 finite, its reported score the detection's own, no hooks left behind."""
    from torchvision.models import get_model

    from service.registry import _detection_layer

    torch.manual_seed(0)
    kw = {"weights": None, "weights_backbone": None, "num_classes": 3, "score_thresh": 0.0}
    if "ssd" not in arch:
        kw.update(min_size=SIZE, max_size=SIZE)
    model = DetectorOutputs(get_model(arch, **kw), max_detections=20).eval().requires_grad_(False)
    x = _x(seed=8)
    layer, reason = _detection_layer(model, (3, SIZE, SIZE))
    assert layer.startswith("backbone.") and "backbone" in reason
    with torch.no_grad():
        best = model(x)[0, 0]
    for method in ("gradcam", "saliency"):
        m = get_method(method)
        explained = complete(m.steps(model, x, [TargetRequest((Detection(0),))], layer=layer if m.uses_layer
                                     else None, task="detection"))
        assert torch.isfinite(explained.maps).all()
        assert explained.rows.targets[0].label == int(best[5])
        if float(best[2] - best[0]) > 0 and float(best[3] - best[1]) > 0:   # FCOS at random init: empty boxes
            torch.testing.assert_close(explained.scores[0], best[4], rtol=1e-5, atol=1e-6)
    assert hook_free(model)
