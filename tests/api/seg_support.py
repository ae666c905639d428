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


def tiny_sigmoid_seg(classes: int = 3, seed: int = 0) -> nn.Module:
    """:func:`tiny_seg` read through a sigmoid per class, its classifier scaled (logits of unit spread) and biased so
    that classes 0 and 1 each pass 0.5 on about half of a random image's pixels, often the same ones (multi-label
    masks overlap: argmax and ``> 0.5`` disagree), and class 2 on fewer."""
    model = tiny_seg(classes, seed)
    with torch.no_grad():
        model.classifier.weight.mul_(10.0)
        model.classifier.bias.copy_(torch.tensor([0.1, 1.7, 0.5])[:classes])
    return model
