"""``DemoMIL``: the demo attention-MIL model, trained on synthetic large images whose lesions are known pixel by pixel.

Each image (``512 x 512``, RGB, an H&E-like look) is a pink "tissue" texture — smooth colour fields and about a
thousand small purple nuclei scattered over it (as many per area at other sizes). A *lesion* image (class 1) also
holds one to three small lesions: a disk of 11–16 px radius packed with larger, darker nuclei. The lesions cover
under 1 % of the image, the situation where a whole-image CNN's Grad-CAM "highlights some random portion". The
generator keeps each lesion's exact mask.

* ``DemoMIL`` (:data:`PATCH` px patches, no overlap, 256 per image): a small conv encoder (four conv-ReLU blocks,
  GAP, 64-d embedding ``h_k``), gated attention pooling (:class:`service.engine.mil.GatedAttention`, one branch) and a
  linear head ``f``; it answers the :mod:`service.engine.mil` protocol, with ``patch_logits = f(h_k)``.
* ``DemoWholeCNN``, the baseline: the same budget of training on the whole image downscaled to 256 px, a plain CNN
  with a GAP → linear head; its Grad-CAM (last conv block, ``features``) is what the MIL attention is compared with.

Reproduce the shipped weights and their held-out numbers::

    xaas train-demo-mil           # writes service/demo/demo_mil.safetensors and demo_mil_cnn.safetensors
    xaas eval-demo-mil --n 200    # held-out AUC, pointing, lesion mass and patch AUC, attention vs Grad-CAM
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
from scipy import ndimage
from scipy.stats import rankdata
from torch import nn

from ..engine.mil import GatedAttention, Tiling, tile

__all__ = ["MIL_CLASSES", "MIL_SIZE", "PATCH", "DemoMIL", "DemoWholeCNN", "create_demo_mil_model",
           "evaluate_demo_mil", "lesion_image", "load_demo_mil", "train_demo_mil"]

MIL_CLASSES: tuple[str, ...] = ("normal", "lesion")
MIL_SIZE = 512
PATCH = 32
BASELINE_SIZE = 256
DEFAULT_MIL_WEIGHTS = Path(__file__).with_name("demo_mil.safetensors")
DEFAULT_BASELINE_WEIGHTS = Path(__file__).with_name("demo_mil_cnn.safetensors")
TRAIN_SEED = 0
EVAL_SEED = 4242
MEAN = (0.883, 0.682, 0.831)
STD = (0.086, 0.085, 0.055)
#: Pointing-game tolerance (Zhang et al. 2018): a maximum within this many pixels of a lesion is a hit.
POINTING_TOLERANCE = 15


# --------------------------------------------------------------------------------------------------- data


def _nuclei(rng: np.random.Generator, shape: tuple[int, int], count: int, radius: float,
            where: np.ndarray | None = None) -> np.ndarray:
    """A boolean map of ``count`` disks of ``radius`` px at random places (inside ``where`` when given)."""
    seeds = np.zeros(shape, dtype=bool)
    if where is None:
        ys, xs = rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)
    else:
        cand = np.flatnonzero(where)
        pick = cand[rng.integers(0, cand.size, count)]
        ys, xs = np.unravel_index(pick, shape)
    seeds[ys, xs] = True
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return ndimage.binary_dilation(seeds, structure=yy ** 2 + xx ** 2 <= radius ** 2)


def lesion_image(seed: int, index: int, size: int = MIL_SIZE, *, label: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(uint8 [size, size, 3] RGB, exact lesion mask [size, size] bool, class)`` of sample ``index`` of stream
    ``seed``; class 1 images hold 1–3 lesions (see the module docstring), class 0 none. ``label`` forces the class."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(2)) if label is None else int(label)
    shape = (size, size)
    low = rng.normal(0.0, 1.0, (3, size // 32 + 1, size // 32 + 1))
    field = np.stack([ndimage.zoom(c, 32, order=1)[:size, :size] for c in low])          # smooth colour fields
    tissue = np.array([0.90, 0.70, 0.84])[:, None, None] + 0.04 * field
    img = tissue.copy()
    stroma = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.0)
    img += 0.05 * stroma[None]
    density = (size / MIL_SIZE) ** 2   # larger images keep the training images' nuclei per patch
    nuclei = _nuclei(rng, shape, int(rng.integers(900, 1300) * density), rng.uniform(1.5, 2.5))
    purple = np.array([0.55, 0.35, 0.65])[:, None, None]
    img = np.where(nuclei[None], purple + 0.05 * field, img)
    mask = np.zeros(shape, dtype=bool)
    if label == 1:
        yy, xx = np.mgrid[0:size, 0:size]
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(11, 16)
            cy, cx = rng.uniform(r + 2, size - r - 2, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            mask |= disk
            dark = _nuclei(rng, shape, int(rng.integers(14, 22)), rng.uniform(2.8, 3.6), where=disk) & disk
            img = np.where(dark[None], np.array([0.30, 0.15, 0.45])[:, None, None], img)
    img += rng.normal(0.0, 0.02, (3, *shape))
    pixels = np.clip(np.rint(img.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
    return pixels, mask, label


def model_input(pixels: np.ndarray) -> torch.Tensor:
    """The registry entry's preprocessing: ``[3, H, W]`` float, ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def bag_of(pixels: np.ndarray) -> tuple[torch.Tensor, Tiling]:
    tiling = Tiling.of(height=pixels.shape[0], width=pixels.shape[1], patch=PATCH, stride=PATCH)
    return tile(model_input(pixels), tiling), tiling


# --------------------------------------------------------------------------------------------------- models


def _block(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1), relu=nn.ReLU()))


def _trunk(width: int) -> OrderedDict[str, nn.Module]:
    """Four conv-ReLU blocks (the first with stride 2), two 2x max pools: ``1/8`` of the input's side."""
    return OrderedDict(b1=_block(3, width, stride=2), b2=_block(width, 2 * width), p2=nn.MaxPool2d(2),
                       b3=_block(2 * width, 4 * width), p3=nn.MaxPool2d(2), b4=_block(4 * width, 4 * width))


class DemoMIL(nn.Module):
    """Patch encoder → gated attention → linear head, on bags ``[B, N, 3, 32, 32]`` (the mil protocol)."""

    def __init__(self, num_classes: int = len(MIL_CLASSES), width: int = 8) -> None:
        super().__init__()
        dim = 4 * width
        self.encoder = nn.Sequential(OrderedDict(**_trunk(width), gap=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten()))
        self.attention = GatedAttention(dim, hidden=16, branches=1)
        self.head = nn.Linear(dim, num_classes)
        self.chunk = 1024   # patches per encoder pass: bounds the memory of a large bag

    def forward(self, bags: torch.Tensor) -> dict[str, torch.Tensor]:
        b, n = bags.shape[:2]
        flat = bags.reshape(b * n, *bags.shape[2:])
        h = torch.cat([self.encoder(c) for c in flat.split(self.chunk)]).reshape(b, n, -1)
        a = self.attention(h)                                          # [B, 1, N]
        logits = self.head(GatedAttention.pool(h, a)[:, 0])
        return {"logits": logits, "attention": a, "patch_logits": self.head(h)}


class DemoWholeCNN(nn.Module):
    """The baseline: a plain CNN on the whole image downscaled to 256 px; ``features`` → GAP → ``fc``."""

    def __init__(self, num_classes: int = len(MIL_CLASSES), width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(_trunk(width))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def create_demo_mil_model(num_classes: int = len(MIL_CLASSES)) -> nn.Module:
    """A freshly initialised :class:`DemoMIL` (the registry loads the shipped weights into it)."""
    return DemoMIL(num_classes)


def load_demo_mil(weights: str | Path | None = None, baseline: str | Path | None = None
                  ) -> tuple[nn.Module, nn.Module]:
    mil, cnn = DemoMIL(), DemoWholeCNN()
    mil.load_state_dict(load_file(str(weights or DEFAULT_MIL_WEIGHTS)), strict=True)
    cnn.load_state_dict(load_file(str(baseline or DEFAULT_BASELINE_WEIGHTS)), strict=True)
    return mil.eval().requires_grad_(False), cnn.eval().requires_grad_(False)


def _downscaled(pixels: np.ndarray, side: int = BASELINE_SIZE) -> torch.Tensor:
    return F.interpolate(model_input(pixels)[None], size=(side, side), mode="bilinear", align_corners=False,
                         antialias=True)[0]


# --------------------------------------------------------------------------------------------------- training


def train_demo_mil(out: str | Path = DEFAULT_MIL_WEIGHTS, *, seed: int = TRAIN_SEED, steps: int = 400,
                   batch_size: int = 4, lr: float = 1e-3, eval_n: int = 100,
                   baseline_out: str | Path | None = None) -> dict[str, Any]:
    """Both models on the same fresh synthetic images (never repeated; half of each batch lesion images), AdamW with
    a cosine schedule, cross-entropy on the bag (MIL) or image (baseline) class; then the held-out numbers."""
    torch.manual_seed(seed)
    mil, cnn = DemoMIL(), DemoWholeCNN()
    opts = [torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4) for m in (mil, cnn)]
    t0 = time.perf_counter()
    mil.train()
    cnn.train()
    for step in range(steps):
        scale = min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        images = [lesion_image(seed + 1, step * batch_size + i, label=i % 2) for i in range(batch_size)]
        y = torch.tensor([label for _, _, label in images])
        bags = torch.stack([bag_of(p)[0] for p, _, _ in images])
        whole = torch.stack([_downscaled(p) for p, _, _ in images])
        losses = []
        for model, opt, x in ((mil, opts[0], bags), (cnn, opts[1], whole)):
            for group in opt.param_groups:
                group["lr"] = lr * scale
            out_ = model(x)
            loss = F.cross_entropy(out_["logits"] if isinstance(out_, dict) else out_, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # a batch of 4 can spike the loss (measured: 0.01 -> 2.2 at step 150) and kill the ReLU encoder
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(round(float(loss.detach()), 4))
        if step % 25 == 0:
            print(json.dumps({"step": step, "loss_mil": losses[0], "loss_cnn": losses[1],
                              "seconds": round(time.perf_counter() - t0)}), flush=True)
    seconds = time.perf_counter() - t0
    mil.eval().requires_grad_(False)
    cnn.eval().requires_grad_(False)
    out = Path(out)
    baseline_out = Path(baseline_out) if baseline_out else out.with_name(out.stem + "_cnn.safetensors")
    meta = {"seed": str(seed), "steps": str(steps), "batch_size": str(batch_size),
            "classes": json.dumps(list(MIL_CLASSES))}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in mil.state_dict().items()}, str(out), metadata={"arch": "DemoMIL", **meta})
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(baseline_out),
              metadata={"arch": "DemoWholeCNN", **meta})
    result = evaluate_demo_mil(models=(mil, cnn), n=eval_n) if eval_n else {}
    return {**result, "train_seconds": round(seconds, 1), "weights": str(out), "baseline_weights": str(baseline_out)}


# --------------------------------------------------------------------------------------------------- evaluation


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank statistic (Mann–Whitney U), ties counted half."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if not pos.size or not neg.size:
        return float("nan")
    ranks = rankdata(scores)   # average ranks: a tie counts half
    return float((ranks[labels].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def _upsampled(m: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(m[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]


def map_scores(heat: torch.Tensor, mask: np.ndarray, tiling: Tiling) -> dict[str, Any]:
    """One positive image's localization figures of a map ``[h, w]`` (any grid, upsampled bilinearly to the image):
    pointing hit (maximum within :data:`POINTING_TOLERANCE` px of a lesion), the map's mass on lesion patches
    (patches holding a lesion pixel; map clipped at 0), and per-patch mean values with their lesion labels."""
    size = mask.shape[0]
    up = _upsampled(heat, size).clamp_min(0).numpy()
    near = ndimage.distance_transform_edt(~mask) <= POINTING_TOLERANCE
    hit = bool(near.reshape(-1)[int(up.reshape(-1).argmax())])
    m = torch.from_numpy(mask.astype(np.float32))
    per_patch = tile(torch.from_numpy(up)[None], tiling).mean((1, 2, 3)).numpy()
    lesion = tile(m[None], tiling).amax((1, 2, 3)).numpy() > 0
    mass = float(per_patch[lesion].sum() / max(per_patch.sum(), 1e-12))
    return {"hit": hit, "mass": mass, "area": float(lesion.mean()), "patch_scores": per_patch, "patch_labels": lesion}


def evaluate_demo_mil(weights: str | Path | None = None, *, n: int = 200, seed: int = EVAL_SEED, size: int = MIL_SIZE,
                      models: tuple[nn.Module, nn.Module] | None = None) -> dict[str, Any]:
    """On ``n`` unseen ``size``² images (half lesion images): the bag AUC of both models, and on the lesion images the
    localization of the MIL attention (``attention-mil``, the service's method, ``weights`` attention and product),
    of the MIL patch encoder's Grad-CAM (``mil-gradcam`` at ``encoder.b4``, ``mil_gradcam``) and of the baseline's
    Grad-CAM (``gradcam`` at ``features``, the lesion class) — pointing game, map mass on lesion patches (beside the
    lesion patches' share of the image: a uniform map's mass) and patch-level AUC.

    The baseline reads each image twice: at its fixed input size (:data:`BASELINE_SIZE`², as a whole-image classifier
    is served: a larger image is downscaled more; ``cnn``) and at the training scale (the image at half its side;
    ``cnn_native``: the GAP head accepts any size, at memory growing with the image). At ``size`` 512 the two are
    the same input."""
    from ..engine import get_method
    from ..engine.targets import ClassLogit, TargetRequest

    mil, cnn = models if models is not None else load_demo_mil(weights)
    gradcam, attention_mil, mil_gradcam = get_method("gradcam"), get_method("attention-mil"), get_method("mil-gradcam")
    target = [TargetRequest((ClassLogit(1),))]
    labels: list[int] = []
    probs: dict[str, list[float]] = {"mil": [], "cnn": [], "cnn_native": []}
    found: dict[str, list[dict[str, Any]]] = {"attention": [], "product": [], "mil_gradcam": [], "gradcam": [],
                                              "gradcam_native": []}
    for i in range(n):
        pixels, mask, label = lesion_image(seed, i, size, label=i % 2)
        bag, tiling = bag_of(pixels)
        views = {"cnn": _downscaled(pixels), "cnn_native": _downscaled(pixels, size // 2)}
        explained = attention_mil.explain_bags(mil, bag[None], target, tiling=tiling)
        probs["mil"].append(float(explained.scores[0]))
        with torch.no_grad():
            for name, view in views.items():
                probs[name].append(float(torch.softmax(cnn(view[None]), 1)[0, 1]))
        labels.append(label)
        if label == 1:
            found["attention"].append(map_scores(explained.maps[0], mask, tiling))
            product = attention_mil.explain_bags(mil, bag[None], target, tiling=tiling, weights="product")
            found["product"].append(map_scores(product.maps[0], mask, tiling))
            cam = mil_gradcam.explain_bags(mil, bag[None], target, tiling=tiling, layer="encoder.b4")
            found["mil_gradcam"].append(map_scores(cam.maps[0], mask, tiling))
            for name, view in views.items():
                cam = gradcam.explain(cnn, view[None], torch.tensor([1]), layer="features")[0]
                found[name.replace("cnn", "gradcam")].append(map_scores(cam, mask, tiling))
    y = np.array(labels)
    result: dict[str, Any] = {"n": n, "seed": seed, "size": size}
    result.update({f"auc_{name}": round(auc(np.array(p), y), 4) for name, p in probs.items()})
    for name, rows in found.items():
        result[f"pointing_{name}"] = round(float(np.mean([r["hit"] for r in rows])), 4)
        result[f"lesion_mass_{name}"] = round(float(np.mean([r["mass"] for r in rows])), 4)
        result[f"patch_auc_{name}"] = round(auc(np.concatenate([r["patch_scores"] for r in rows]),
                                                np.concatenate([r["patch_labels"] for r in rows])), 4)
    result["lesion_area_uniform"] = round(float(np.mean([r["area"] for r in found["attention"]])), 4)
    return result
