"""A small torchvision detector with seeded random weights, for detection tests (no downloads).

torchvision initialises the box classifier with std 0.01, so a random-init Faster R-CNN scores every proposal about
1/num_classes and its detections tie; a wider classifier and non-trivial BatchNorm statistics give them distinct
scores and boxes (what a trained detector has), so "the chosen detection" means one detection."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

from tests.engine.engine_support import randomise_bn

SIZE = 128
LABELS = ["background", "circle", "square", "triangle"]


def tiny_detector(size: int = SIZE, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=len(LABELS),
                                                  min_size=size, max_size=size, box_score_thresh=0.0,
                                                  box_detections_per_img=50)
    predictor = model.roi_heads.box_predictor
    nn.init.normal_(predictor.cls_score.weight, std=2.0)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.05)
    return randomise_bn(model, seed)
