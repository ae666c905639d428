"""``DemoVolNet``: the demo 3-D model, a small 3-D CNN trained on synthetic volumes whose every voxel is known.

Each volume (``[24, 32, 32]`` voxels, CT-like values: noisy soft tissue around 40 HU, a smooth bias field) holds one
object — a sphere, a cube or a rod (a cylinder along a random axis) — of random size and place, and the model says which
(:data:`VOLUME_CLASSES`). The generator keeps the object's exact mask, so a map can be checked voxel by voxel: the
3-D pointing game (does the map's maximum fall inside the object?) on an unseen seed.

* ``features``: three conv3d-BN-ReLU blocks (the second and third after a 2x max pool), post-ReLU, 16 channels of
  ``6 x 8 x 8`` at the default size — the natural 3-D Grad-CAM layer; then global average pooling and one linear
  layer (so CAM applies too).

Reproduce the shipped weights and their held-out numbers::

    xaas train-demo-3d           # writes service/demo/demo_vol.safetensors, prints held-out accuracy and pointing
    xaas eval-demo-3d --n 200    # on an unseen seed
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

__all__ = ["VOLUME_CLASSES", "VOLUME_SIZE", "VOLUME_WINDOW", "DemoVolNet", "create_demo_volume_model",
           "evaluate_demo_volume", "load_demo_volume_model", "train_demo_volume", "volume_sample"]

VOLUME_CLASSES: tuple[str, ...] = ("sphere", "cube", "rod")
VOLUME_SIZE = (24, 32, 32)
#: The registry window of the demo entry: soft tissue to bright objects, mapped to [0, 1].
VOLUME_WINDOW = (200.0, 800.0)
DEFAULT_VOLUME_WEIGHTS = Path(__file__).with_name("demo_vol.safetensors")
ARCH = "DemoVolNet"
TRAIN_SEED = 0
EVAL_SEED = 7331
MEAN, STD = 0.3, 0.3


def volume_sample(seed: int, index: int, size: tuple[int, int, int] = VOLUME_SIZE
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(voxels float32 [D, H, W] in whole HU, exact object mask, class index)`` of sample ``index`` of stream
    ``seed``: one object of a random class, radius and centre (inside the volume), noise and a bias field."""
    rng = np.random.default_rng([seed, index])
    d, h, w = size
    zz, yy, xx = np.meshgrid(np.arange(d) + 0.5, np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    label = int(rng.integers(len(VOLUME_CLASSES)))
    r = rng.uniform(0.22, 0.32) * min(d, h, w)
    c = [rng.uniform(r + 1, s - r - 1) for s in (d, h, w)]
    dz, dy, dx = zz - c[0], yy - c[1], xx - c[2]
    kind = VOLUME_CLASSES[label]
    if kind == "sphere":
        mask = dz ** 2 + dy ** 2 + dx ** 2 <= r * r
    elif kind == "cube":
        side = r * 0.85
        mask = (np.abs(dz) <= side) & (np.abs(dy) <= side) & (np.abs(dx) <= side)
    else:   # a rod: a cylinder of radius r/2 and half-length 1.6 r along a random axis
        axis = int(rng.integers(3))
        offsets = [dz, dy, dx]
        along = offsets.pop(axis)
        half = min(1.6 * r, c[axis] - 1, (d, h, w)[axis] - c[axis] - 1)   # stays inside the volume
        mask = (offsets[0] ** 2 + offsets[1] ** 2 <= (r / 2) ** 2) & (np.abs(along) <= half)
    bias = 60.0 * np.sin(zz / d * math.pi * rng.uniform(0.5, 1.5) + rng.uniform(0, math.pi)) * \
        np.cos(xx / w * math.pi * rng.uniform(0.5, 1.5))
    voxels = 40.0 + bias + rng.normal(0.0, 25.0, size)
    voxels[mask] += rng.uniform(300.0, 500.0)
    return np.rint(voxels).astype(np.float32), mask, label


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv3d(in_ch, out_ch, 3, padding=1, bias=False),
                                     bn=nn.BatchNorm3d(out_ch), relu=nn.ReLU(inplace=True)))


class DemoVolNet(nn.Module):
    """``features`` (conv3d blocks, 2x max pools) → global average pool → ``fc``."""

    def __init__(self, num_classes: int = len(VOLUME_CLASSES), width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            b1=_block(1, width), p1=nn.MaxPool3d(2), b2=_block(width, 2 * width), p2=nn.MaxPool3d(2),
            b3=_block(2 * width, 2 * width)))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3, 4)))


def create_demo_volume_model(num_classes: int = len(VOLUME_CLASSES)) -> nn.Module:
    """A freshly initialised :class:`DemoVolNet` (the registry loads the shipped weights into it)."""
    return DemoVolNet(num_classes)


def model_input(voxels: np.ndarray) -> torch.Tensor:
    """What the registry entry feeds the model: the window to [0, 1], then ``(x - 0.3) / 0.3`` (``[1, D, H, W]``)."""
    lo = VOLUME_WINDOW[0] - VOLUME_WINDOW[1] / 2
    x = np.clip((voxels - lo) / VOLUME_WINDOW[1], 0.0, 1.0)
    return (torch.from_numpy(x).float()[None] - MEAN) / STD


def _batch(seed: int, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    samples = [volume_sample(seed, start + i) for i in range(n)]
    x = torch.stack([model_input(v) for v, _, _ in samples])
    return x, torch.tensor([label for _, _, label in samples]), [m for _, m, _ in samples]


def pointing_3d(maps: torch.Tensor, masks: list[np.ndarray]) -> list[bool]:
    """Per map ``[d, h, w]`` (any grid): is its maximum, upsampled trilinearly to the mask's grid, inside the mask?"""
    hits = []
    for m, mask in zip(maps, masks):
        up = F.interpolate(m[None, None].float(), size=mask.shape, mode="trilinear", align_corners=False)[0, 0]
        hits.append(bool(mask.reshape(-1)[int(up.reshape(-1).argmax())]))
    return hits


def evaluate_demo_volume(weights: str | Path | None = None, *, n: int = 200, seed: int = EVAL_SEED,
                         model: nn.Module | None = None) -> dict[str, Any]:
    """Held-out accuracy and Grad-CAM 3-D pointing (layer ``features``, the true class) on ``n`` unseen volumes,
    beside the pointing of a random voxel (the mean object fraction)."""
    from ..engine import get_method

    model = model if model is not None else load_demo_volume_model(weights)
    model.eval().requires_grad_(False)
    correct, hits, fraction = 0, [], []
    for start in range(0, n, 25):
        x, y, masks = _batch(seed, start, min(25, n - start))
        with torch.no_grad():
            correct += int((model(x).argmax(1) == y).sum())
        maps = get_method("gradcam").explain(model, x, y, layer="features")
        hits += pointing_3d(maps, masks)
        fraction += [float(m.mean()) for m in masks]
    return {"accuracy": round(correct / n, 4), "pointing_gradcam": round(float(np.mean(hits)), 4),
            "pointing_random_voxel": round(float(np.mean(fraction)), 4), "n": n, "seed": seed}


def load_demo_volume_model(weights: str | Path | None = None) -> nn.Module:
    path = Path(weights) if weights is not None else DEFAULT_VOLUME_WEIGHTS
    model = create_demo_volume_model()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def train_demo_volume(out: str | Path = DEFAULT_VOLUME_WEIGHTS, *, seed: int = TRAIN_SEED, steps: int = 400,
                      batch_size: int = 16, lr: float = 3e-3, eval_n: int = 200) -> dict[str, Any]:
    """AdamW with a cosine schedule on fresh synthetic volumes (never repeated), cross-entropy; then the held-out
    numbers on :data:`EVAL_SEED`."""
    torch.manual_seed(seed)
    model = create_demo_volume_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, y, _ = _batch(seed + 1, step * batch_size, batch_size)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(json.dumps({"step": step, "loss": round(float(loss.detach()), 4),
                              "seconds": round(time.perf_counter() - t0)}), flush=True)
    seconds = time.perf_counter() - t0
    result = evaluate_demo_volume(model=model, n=eval_n)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={"arch": ARCH, "classes": json.dumps(list(VOLUME_CLASSES)), "seed": str(seed),
                        "steps": str(steps), "batch_size": str(batch_size), "accuracy": str(result["accuracy"])})
    return {**result, "train_seconds": round(seconds, 1), "weights": str(out)}
