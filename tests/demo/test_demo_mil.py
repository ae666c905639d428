"""The demo attention-MIL model: its synthetic images keep exact lesion masks, and the shipped weights tell lesion
images apart and point at the lesions, through the service's own attention-mil method."""

from __future__ import annotations

import numpy as np
import torch

from service.demo.mil import (
    MIL_SIZE,
    PATCH,
    auc,
    bag_of,
    evaluate_demo_mil,
    lesion_image,
    load_demo_mil,
    map_scores,
    train_demo_mil,
)


def test_lesion_images_are_deterministic_with_exact_masks():
    a, mask, label = lesion_image(3, 1, label=1)
    b, mask_b, _ = lesion_image(3, 1, label=1)
    assert a.shape == (MIL_SIZE, MIL_SIZE, 3) and a.dtype == np.uint8 and label == 1
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mask, mask_b)
    assert 0 < mask.mean() < 0.01                          # small lesions: under 1 % of the image
    assert a[mask].mean() < a[~mask].mean() - 10           # darker there: the lesion is in the pixels
    neg, neg_mask, _ = lesion_image(3, 2, label=0)
    assert not neg_mask.any()
    bag, tiling = bag_of(a)
    assert bag.shape == ((MIL_SIZE // PATCH) ** 2, 3, PATCH, PATCH) and tiling.cells == (16, 16)


def test_larger_images_keep_the_nuclei_density():
    def nuclei_share(pixels: np.ndarray) -> float:       # purple nuclei: the green channel far below the tissue's
        return float((pixels[..., 1] < 130).mean())

    small = np.mean([nuclei_share(lesion_image(3, i, label=0)[0]) for i in range(6)])
    large = np.mean([nuclei_share(lesion_image(3, i, 2 * MIL_SIZE, label=0)[0]) for i in range(6)])
    # the nuclei radius varies per image (1.5-2.5 px); a fixed count would give a quarter of the share at 2x the side
    assert small > 0.01 and 0.6 < large / small < 1.7


def test_auc_and_map_scores():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    _, mask, _ = lesion_image(5, 0, label=1)
    _, tiling = bag_of(np.zeros((MIL_SIZE, MIL_SIZE, 3), np.uint8))
    perfect = map_scores(torch.from_numpy(mask.astype(np.float32)), mask, tiling)
    assert perfect["hit"] and perfect["mass"] > 0.99
    flat = map_scores(torch.ones(16, 16), mask, tiling)
    assert abs(flat["mass"] - flat["area"]) < 1e-6


def test_shipped_model_detects_and_points_at_lesions():
    result = evaluate_demo_mil(n=16)
    assert result["auc_mil"] >= 0.9
    assert result["pointing_attention"] >= 0.75
    assert result["lesion_mass_attention"] > 3 * result["lesion_area_uniform"]


def test_training_runs_and_writes_both_models(tmp_path):
    out = train_demo_mil(tmp_path / "m.safetensors", steps=2, batch_size=2, eval_n=0)
    mil, cnn = load_demo_mil(out["weights"], out["baseline_weights"])
    assert not any(p.requires_grad for p in mil.parameters())
