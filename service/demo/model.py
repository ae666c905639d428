"""``DemoNet``: the small CNN shipped with the service as its default model.

Architecture choices are made for explainability, not accuracy records:

* the last convolutional feature map is 16x16 for a 128x128 input (one
  stride-2 convolution, one max-pool, one more stride-2 convolution), which is
  fine enough for Grad-CAM heat-maps to land on 20-50 px objects;
* the head is global average pooling followed by a single ``nn.Linear``, the
  exact setting in which classic CAM is defined (and Grad-CAM reduces to it);
* the last block ends in a ReLU, so the map Grad-CAM hooks is non-negative.

The network is multi-label: one logit per class, trained with
``BCEWithLogitsLoss`` and read through a sigmoid.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = [
    "ARCH_NAME",
    "DEMO_INPUT_SIZE",
    "DEMO_MEAN",
    "DEMO_STD",
    "DEMO_TARGET_LAYER",
    "DemoNet",
    "create_demo_model",
]

ARCH_NAME = "DemoNet"
DEMO_INPUT_SIZE: tuple[int, int] = (128, 128)
# Per-channel statistics of the synthetic training images (measured on 5000
# samples of stream 0 and rounded); inputs are (x/255 - mean)/std.
DEMO_MEAN: tuple[float, float, float] = (0.497, 0.497, 0.499)
DEMO_STD: tuple[float, float, float] = (0.232, 0.240, 0.231)
# Dotted module path of the last conv block (post-ReLU, 16x16 at 128 px): the
# natural Grad-CAM / CAM target layer.
DEMO_TARGET_LAYER = "features.block6"

# (out_channels, kernel, stride) per conv block; "M" is a 2x2 max-pool.
# Downsampling happens early (128 -> 32 within the first two layers) because
# full-resolution activations dominate CPU training time, and the smallest
# objects are ~16 px so nothing is lost.  Receptive field of the last map:
# 63 px, enough to see a whole object (<= 48 px) and its surroundings.
_LAYOUT: tuple[tuple[int, int, int] | str, ...] = (
    (32, 5, 2),  # 128 -> 64
    "M",  # 64 -> 32
    (48, 3, 1),
    (64, 3, 1),
    (96, 3, 2),  # 32 -> 16
    (128, 3, 1),
    (160, 3, 1),  # last conv map: 160 x 16 x 16
)


def _conv_block(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Sequential:
    # bias=False because BatchNorm supplies the shift.
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            bn=nn.BatchNorm2d(out_ch),
            relu=nn.ReLU(inplace=True),
        )
    )


class DemoNet(nn.Module):
    """Six conv/BN/ReLU blocks -> global average pool -> linear classifier.

    Attributes:
        features: ``nn.Sequential`` with named children ``block1`` ..
            ``block6`` (each ``conv``/``bn``/``relu``) and ``maxpool``.
        pool: ``nn.AdaptiveAvgPool2d(1)``.
        classifier: ``nn.Linear(160, num_classes)`` producing logits.
    """

    def __init__(self, num_classes: int = 6, in_channels: int = 3) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        ch, n_conv = in_channels, 0
        for spec in _LAYOUT:
            if spec == "M":
                layers["maxpool"] = nn.MaxPool2d(kernel_size=2, stride=2)
                continue
            assert isinstance(spec, tuple)
            out_ch, kernel, stride = spec
            n_conv += 1
            layers[f"block{n_conv}"] = _conv_block(ch, out_ch, kernel, stride)
            ch = out_ch
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)
        self.num_classes = num_classes
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Start from "every class unlikely": most labels are 0 (1-3 of 6
        # classes per image), so this removes a large initial loss spike.
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.constant_(self.classifier.bias, -0.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for normalised images ``[N, 3, H, W]``."""
        fmap = self.features(x)
        return self.classifier(torch.flatten(self.pool(fmap), 1))

    def class_activation_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Classic CAM ``[N, num_classes, h, w]`` (logit contribution per cell).

        Because the head is GAP -> linear, the spatial mean of each map plus
        the bias equals that class's logit; handy for checking CAM/Grad-CAM
        implementations against an exact reference.
        """
        fmap = self.features(x)
        return torch.einsum("nchw,kc->nkhw", fmap, self.classifier.weight)


def create_demo_model(num_classes: int = 6) -> nn.Module:
    """A freshly initialised :class:`DemoNet` (use ``load_demo_model`` for weights)."""
    return DemoNet(num_classes=num_classes)
