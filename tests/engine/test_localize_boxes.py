"""Heatmap → boxes: threshold of the max, connected components, exclusive pixel coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.localize import boxes_from_map, boxes_from_mask


def test_single_component_box_is_tight_and_exclusive():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:17] = True
    [box] = boxes_from_mask(mask)
    assert box.as_list() == [10, 5, 17, 9] and box.area == 28


def test_largest_component_wins_and_all_components_respects_min_area():
    mask = np.zeros((40, 40), bool)
    mask[0:3, 0:3] = True          # 9 px
    mask[10:20, 10:15] = True      # 50 px
    mask[30:32, 30:40] = True      # 20 px
    assert [b.as_list() for b in boxes_from_mask(mask)] == [[10, 10, 15, 20]]
    boxes = boxes_from_mask(mask, all_components=True, min_area=10)
    assert [b.area for b in boxes] == [50, 20]


def test_diagonal_neighbours_are_one_component():
    mask = np.eye(6, dtype=bool)
    [box] = boxes_from_mask(mask, all_components=True)
    assert box.as_list() == [0, 0, 6, 6] and box.area == 6


def test_threshold_is_relative_to_the_maximum():
    heat = np.zeros((10, 10), np.float32)
    heat[2:4, 2:4] = 10.0   # the peak
    heat[6:9, 1:9] = 2.0    # 20 % of the peak: inside the 15 % mask, outside a 25 % one
    low = boxes_from_map(heat, (10, 10), threshold=0.15)
    assert low[0].as_list() == [1, 6, 9, 9]  # the larger component wins at 15 %
    high = boxes_from_map(heat, (10, 10), threshold=0.25)
    assert high[0].as_list() == [2, 2, 4, 4]
    scaled = boxes_from_map(heat * 1e-6, (10, 10), threshold=0.25)
    assert scaled[0].as_list() == [2, 2, 4, 4]  # scale-free


def test_boxes_are_in_original_image_pixels():
    heat = np.zeros((4, 4), np.float32)
    heat[1, 2] = 1.0
    [box] = boxes_from_map(heat, (400, 200), threshold=0.5)  # width 400, height 200
    x0, y0, x1, y1 = box.as_list()
    assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 200
    # the peak cell covers x in [200, 300), y in [50, 100) of the original image
    assert x0 < 250 < x1 and y0 < 75 < y1
    assert x0 >= 200 - 60 and x1 <= 300 + 60


@pytest.mark.parametrize("heat", [np.zeros((5, 5), np.float32), -np.ones((5, 5), np.float32),
                                  np.full((5, 5), np.nan, np.float32)])
def test_empty_or_invalid_maps_give_no_box(heat):
    assert boxes_from_map(heat, (50, 50)) == []


def test_nan_pixels_count_as_zero():
    heat = np.zeros((8, 8), np.float32)
    heat[0, 0] = np.nan
    heat[5:7, 5:7] = 1.0
    assert boxes_from_map(heat, (8, 8), threshold=0.5)[0].as_list() == [5, 5, 7, 7]


def test_bad_threshold():
    with pytest.raises(ValueError):
        boxes_from_map(np.ones((2, 2), np.float32), (2, 2), threshold=0)


def test_mask_boxes_by_hand():
    """Components of a predicted mask on the output grid, resized by nearest neighbour to the image, each with the
    mean probability over its own pixels; min_area drops small ones."""
    from service.engine.localize import mask_boxes

    predicted = np.zeros((4, 4), dtype=bool)
    predicted[0:2, 0:2] = True          # 4 cells -> 16 pixels at 8x8
    predicted[3, 3] = True              # 1 cell -> 4 pixels
    probability = np.full((4, 4), 0.1, dtype=np.float32)
    probability[0, 0], probability[0, 1], probability[1, 0], probability[1, 1] = 0.6, 0.7, 0.8, 0.9
    probability[3, 3] = 0.55
    found = mask_boxes(predicted, probability, (8, 8))
    assert [m.box.as_list() for m in found] == [[0, 0, 4, 4], [6, 6, 8, 8]]
    assert [m.box.area for m in found] == [16, 4]
    assert found[0].mean_probability == pytest.approx(0.75) and found[1].mean_probability == pytest.approx(0.55)
    assert [m.box.area for m in mask_boxes(predicted, probability, (8, 8), min_area=5)] == [16]
    assert mask_boxes(np.zeros((4, 4), bool), probability, (8, 8)) == []
    # Same grid as the image: no resizing; a non-square image stretches each axis on its own.
    assert mask_boxes(predicted, probability, (4, 4))[0].box.as_list() == [0, 0, 2, 2]
    assert mask_boxes(predicted, probability, (12, 8))[0].box.as_list() == [0, 0, 6, 4]
