"""The demo segmentation model: exact labels from the generator's masks, the shipped weights' held-out mIoU, and its
explanations through the served registry."""

from __future__ import annotations

import numpy as np
import torch

from service.demo.data import CLASSES, generate_sample_with_masks, sample_rng
from service.demo.segmentation import (
    confusion,
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
