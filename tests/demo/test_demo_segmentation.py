"""The demo segmentation model: exact labels from the generator's masks, the shipped weights' held-out mIoU, and its
explanations through the served registry."""

from __future__ import annotations

import numpy as np
import torch

from service.demo.data import CLASSES, generate_sample_with_masks, sample_rng
from service.demo.segmentation import (
    SEG_CLASSES,
    confusion,
    evaluate_demo_seg,
    load_demo_seg_model,
    miou,
    segmentation_sample,
)


def test_labels_are_the_generator_masks():
    pixels, labels = segmentation_sample(11, 3)
    image, objects, masks = generate_sample_with_masks(sample_rng(11, 3))
    assert np.array_equal(pixels, np.asarray(image))
    assert set(np.unique(labels)) == {0} | {1 + CLASSES.index(o["class"]) for o in objects}
    for obj, mask in zip(objects, masks):
        assert np.array_equal(labels == 1 + CLASSES.index(obj["class"]), mask)


def test_miou_by_hand():
    truth = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    mean, ious = miou(confusion(pred, truth, 3))
    assert ious[0] == 0.5 and abs(ious[1] - 2 / 3) < 1e-12 and np.isnan(ious[2])
    assert abs(mean - (0.5 + 2 / 3) / 2) < 1e-12


def test_shipped_weights_reach_the_documented_miou_on_an_unseen_seed():
    result = evaluate_demo_seg(n=100, seed=9001)
    assert result["miou"] >= 0.85, result


def test_outputs_cover_every_class_at_the_input_size():
    model = load_demo_seg_model()
    out = model(torch.zeros(1, 3, 128, 128))["out"]
    assert out.shape == (1, len(SEG_CLASSES), 128, 128)


def test_seg_grad_cam_of_the_shipped_model_points_inside_the_class_masks():
    """Pointing game on an unseen seed: the maximum of Seg-Grad-CAM (class, predicted region, layer ``context``),
    upsampled to the image, lies inside that class's true mask."""
    import torch.nn.functional as F

    from service.demo.model import DEMO_MEAN, DEMO_STD
    from service.engine import get_method
    from service.engine.passes import complete
    from service.engine.targets import ClassRegion, TargetRequest

    model = load_demo_seg_model().requires_grad_(False)
    hits = total = 0
    for index in range(12):
        image, objects, masks = generate_sample_with_masks(sample_rng(31337, index))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        x = (x - torch.tensor(DEMO_MEAN)[:, None, None]) / torch.tensor(DEMO_STD)[:, None, None]
        targets = tuple(ClassRegion(1 + CLASSES.index(o["class"])) for o in objects)
        maps = complete(get_method("gradcam").steps(model, x, [TargetRequest(targets)], layer="context",
                                                    task="segmentation")).maps
        up = F.interpolate(maps[:, None], size=(128, 128), mode="bilinear", align_corners=False)[:, 0]
        for heat, mask in zip(up, masks):
            peak = int(heat.flatten().argmax())
            hits += bool(mask.flatten()[peak])
            total += 1
    assert hits / total >= 0.9, (hits, total)
