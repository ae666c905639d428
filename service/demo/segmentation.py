"""``DemoSegNet``: the demo segmentation model, trained on the synthetic shapes with their exact masks.

The shapes generator draws every object from a binary mask (:func:`~service.demo.data.generate_sample_with_masks`),
so the per-pixel ground truth is exact: class 0 is background, class ``1 + i`` is ``CLASSES[i]``. The network is a
small dilated fully convolutional net (no pretrained backbone), sized so that it trains on 2 CPU cores in minutes:

* stride 4 after two strided convolutions, then 3x3 convolutions with dilations 1, 2, 4, 8 (context grows to
  ~120 px, enough to tell a ring from a circle or a star from a cross without pooling away position);
* a 1x1 classifier at stride 4 plus a 1x1 skip from the stride-2 features, each upsampled bilinearly: logits
  ``[N, 7, H, W]`` at the input size, read through a per-pixel softmax (registry ``activation: softmax``);
* ``context`` (the last dilated block, post-ReLU, 32x32 at 128 px) is the natural Seg-Grad-CAM layer.

Reproduce the shipped weights and their held-out mIoU::

    xaas train-demo-seg            # writes service/demo/demo_seg.safetensors and prints its held-out mIoU
    xaas eval-demo-seg --n 300     # mIoU on an unseen seed
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .data import CLASSES, generate_sample_with_masks, sample_rng
from .model import DEMO_MEAN, DEMO_STD

__all__ = ["SEG_CLASSES", "DemoSegNet", "create_demo_seg_model", "evaluate_demo_seg", "load_demo_seg_model",
           "segmentation_sample", "train_demo_seg"]

SEG_CLASSES: tuple[str, ...] = ("background", *CLASSES)
DEFAULT_SEG_WEIGHTS = Path(__file__).with_name("demo_seg.safetensors")
SEG_ARCH = "DemoSegNet"
TRAIN_SEED = 0
EVAL_SEED = 4242


def _block(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                       bias=False),
        bn=nn.BatchNorm2d(out_ch),
        relu=nn.ReLU(inplace=True)))


class DemoSegNet(nn.Module):
    """Dilated FCN: ``stem`` (stride 2) → ``down`` (stride 4) → ``context`` (dilations 1, 2, 4, 8) → 1x1
    ``classifier`` + 1x1 ``skip`` from the stem, upsampled to the input size. Returns ``{"out": logits}`` as
    torchvision's segmentation models do."""

    def __init__(self, num_classes: int = len(SEG_CLASSES), width: int = 48) -> None:
        super().__init__()
        self.stem = _block(3, 24, 5, stride=2)
        self.down = _block(24, width, 3, stride=2)
        self.context = nn.Sequential(OrderedDict(
            (f"d{d}", _block(width, width, 3, dilation=d)) for d in (1, 2, 4, 8)))
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.skip = nn.Conv2d(24, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stem = self.stem(x)
        coarse = self.classifier(self.context(self.down(stem)))
        fine = F.interpolate(coarse, size=stem.shape[-2:], mode="bilinear", align_corners=False) + self.skip(stem)
        return {"out": F.interpolate(fine, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def create_demo_seg_model(num_classes: int = len(SEG_CLASSES)) -> nn.Module:
    """A freshly initialised :class:`DemoSegNet` (the registry loads the shipped weights into it)."""
    return DemoSegNet(num_classes)


def segmentation_sample(seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 [128, 128, 3], labels int64 [128, 128])`` of sample ``index`` of stream ``seed``: label 0 is
    background, ``1 + CLASSES.index(class)`` an object's visible pixels (exact, from the generator's masks)."""
    image, objects, masks = generate_sample_with_masks(sample_rng(seed, index))
    labels = np.zeros(masks[0].shape if masks else (128, 128), dtype=np.int64)
    for obj, mask in zip(objects, masks):
        labels[mask] = 1 + CLASSES.index(obj["class"])
    return np.asarray(image), labels


def _batch(seed: int, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = zip(*(segmentation_sample(seed, start + i) for i in range(n)))
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(DEMO_MEAN)[:, None, None]
    std = torch.tensor(DEMO_STD)[:, None, None]
    return (x - mean) / std, torch.from_numpy(np.stack(labels))


def confusion(pred: torch.Tensor, truth: torch.Tensor, classes: int) -> torch.Tensor:
    """``[classes, classes]`` pixel counts, rows = truth."""
    return torch.bincount(truth.flatten() * classes + pred.flatten(), minlength=classes * classes).view(classes,
                                                                                                        classes)


def miou(conf: torch.Tensor) -> tuple[float, list[float]]:
    """Mean intersection over union over classes present in the truth or the prediction (IoU = TP / (TP+FP+FN))."""
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    ious = [float(t / u) if u > 0 else float("nan") for t, u in zip(tp, union)]
    present = [v for v in ious if not math.isnan(v)]
    return float(np.mean(present)), ious


def evaluate_demo_seg(weights: str | Path | None = None, *, n: int = 300, seed: int = EVAL_SEED,
                      model: nn.Module | None = None) -> dict[str, Any]:
    """Held-out mIoU (background included) on ``n`` images of an unseen seed, and per-class IoU."""
    model = model if model is not None else load_demo_seg_model(weights)
    model.eval()
    classes = len(SEG_CLASSES)
    conf = torch.zeros((classes, classes), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, n, 50):
            x, y = _batch(seed, start, min(50, n - start))
            conf += confusion(model(x)["out"].argmax(1), y, classes)
    mean, ious = miou(conf)
    return {"miou": round(mean, 4), "iou": dict(zip(SEG_CLASSES, (round(v, 4) for v in ious))), "n": n,
            "seed": seed, "pixel_accuracy": round(float(conf.diag().sum() / conf.sum()), 4)}


def load_demo_seg_model(weights: str | Path | None = None) -> nn.Module:
    path = Path(weights) if weights is not None else DEFAULT_SEG_WEIGHTS
    model = create_demo_seg_model()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def train_demo_seg(out: str | Path = DEFAULT_SEG_WEIGHTS, *, seed: int = TRAIN_SEED, steps: int = 2000,
                   batch_size: int = 16, lr: float = 3e-3, eval_n: int = 300) -> dict[str, Any]:
    """AdamW with a cosine schedule on fresh synthetic images (never repeated), per-pixel cross-entropy; then the
    held-out mIoU on :data:`EVAL_SEED`. ``steps x batch_size`` images are shown."""
    torch.manual_seed(seed)
    model = create_demo_seg_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, y = _batch(seed + 1, step * batch_size, batch_size)
        loss = F.cross_entropy(model(x)["out"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            progress = {"step": step, "loss": round(float(loss.detach()), 4),
                        "seconds": round(time.perf_counter() - t0)}
            print(json.dumps(progress), flush=True)
    seconds = time.perf_counter() - t0
    result = evaluate_demo_seg(model=model, n=eval_n)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={"arch": SEG_ARCH, "classes": json.dumps(list(SEG_CLASSES)), "seed": str(seed),
                        "steps": str(steps), "batch_size": str(batch_size), "miou": str(result["miou"])})
    return {**result, "train_seconds": round(seconds, 1), "weights": str(out)}
