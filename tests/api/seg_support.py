"""A tiny segmentation network served through a ``python:`` source in the API tests (random init, fixed seed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinySeg(nn.Module):
    """Two convolutions (``encoder``) → 1x1 classifier → bilinear upsampling, returning ``{"out": logits}``."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(12, classes, 1)

    def forward(self, x):
        return {"out": F.interpolate(self.classifier(self.encoder(x)), size=x.shape[-2:], mode="bilinear",
                                     align_corners=False)}


def tiny_seg(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinySeg(classes)
