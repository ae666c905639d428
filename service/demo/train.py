"""Train, evaluate and load the shipped demo model.

Three entry points, each meant to back one CLI sub-command (arguments map
one-to-one onto flags):

* :func:`train_demo` -- ``xaas train-demo [--out PATH --seed S --presentations N]``
* :func:`evaluate_demo` -- ``xaas eval-demo [--weights PATH --n N --seed S]``
* :func:`load_demo_model` -- what the service calls to get its default model.

Training data is generated on the fly from stream ``seed`` of
:class:`~service.demo.data.SyntheticShapes` (every presentation is a new
image); evaluation uses a different stream (:data:`EVAL_SEED`), so the
held-out images are never seen in training.

Weights are stored with safetensors; the file's metadata records the class
names, architecture, normalisation and training provenance so a loader never
has to guess.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from service.demo.data import CLASSES, SyntheticShapes
from service.demo.model import ARCH_NAME, DEMO_INPUT_SIZE, DEMO_MEAN, DEMO_STD, create_demo_model

__all__ = [
    "DEFAULT_WEIGHTS",
    "EVAL_SEED",
    "average_precision",
    "evaluate_demo",
    "load_demo_model",
    "predict_probs",
    "read_demo_metadata",
    "train_demo",
]

DEFAULT_WEIGHTS: Path = Path(__file__).with_name("demo_cnn.safetensors")
# Held-out stream for evaluation; training refuses to use it.
EVAL_SEED = 2024
FORMAT_VERSION = "1"
_LOG_EVERY = 250  # steps
# A converged run ends around 0.02; a run stuck at chance stays near 0.6.
_CHANCE_LOSS_WARNING = 0.3


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Non-interpolated average precision, as ``sklearn.metrics.average_precision_score``.

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over the distinct score thresholds
    (tied scores form one threshold, so ties are not broken optimistically).
    Returns ``nan`` when there are no positives (AP is undefined).
    """
    y = np.asarray(y_true, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores differ in size: {y.shape} vs {s.shape}")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # Last index of each run of equal scores = one threshold.
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last].astype(np.float64)
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _multilabel_metrics(targets: np.ndarray, probs: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    per_class = {c: average_precision(targets[:, k], probs[:, k]) for k, c in enumerate(classes)}
    defined = [v for v in per_class.values() if not math.isnan(v)]
    exact = np.all((probs >= 0.5) == (targets > 0.5), axis=1)
    return {
        "mAP": float(np.mean(defined)) if defined else float("nan"),
        "exact_match": float(exact.mean()) if len(exact) else float("nan"),
        "per_class_ap": per_class,
    }


# --------------------------------------------------------------------------
# Loading / saving
# --------------------------------------------------------------------------


def read_demo_metadata(weights_path: str | Path | None = None) -> dict[str, Any]:
    """The decoded metadata of a demo weights file (classes as a list, etc.)."""
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata() or {}
    meta: dict[str, Any] = dict(raw)
    for key in ("classes", "mean", "std", "input_size"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    for key in ("seed", "presentations", "batch_size"):
        if key in meta:
            meta[key] = int(meta[key])
    if "lr" in meta:
        meta["lr"] = float(meta["lr"])
    return meta


def _save_weights(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    # contiguous(): training runs channels_last, safetensors wants dense rows.
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format_version": FORMAT_VERSION,
        "arch": ARCH_NAME,
        "classes": json.dumps(list(CLASSES)),
        "mean": json.dumps(list(DEMO_MEAN)),
        "std": json.dumps(list(DEMO_STD)),
        "input_size": json.dumps(list(DEMO_INPUT_SIZE)),
        **{k: str(v) for k, v in meta.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_demo_model(weights_path: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The demo :class:`~service.demo.model.DemoNet` with trained weights, in eval mode.

    ``weights_path`` defaults to the shipped ``demo_cnn.safetensors`` next to
    this module.  The file's metadata must name the ``DemoNet`` architecture;
    the number of outputs comes from its class list.  The class names are
    also attached as ``model.class_names`` for callers that label outputs.
    """
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"demo weights not found: {path} (train them with train_demo / `xaas train-demo`)")
    meta = read_demo_metadata(path)
    if meta.get("arch") != ARCH_NAME:
        raise ValueError(f"{path}: architecture {meta.get('arch')!r} is not {ARCH_NAME!r}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: metadata has no class list")
    model = create_demo_model(num_classes=len(classes))
    model.load_state_dict(load_file(str(path)), strict=True)
    model.class_names = tuple(classes)  # type: ignore[assignment]
    return model.to(device).eval()


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def _bf16_supported() -> bool:
    """Whether this CPU has native bf16 matmul/conv (AVX512-BF16 or AMX).

    Without it, bf16 autocast is emulated and slower than float32.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero (multiplier on the base lr)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _random_flips(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Independent horizontal and vertical flips per image (labels unchanged)."""
    n = x.shape[0]
    h = torch.rand(n, generator=gen) < 0.5
    v = torch.rand(n, generator=gen) < 0.5
    x = torch.where(h[:, None, None, None], x.flip(3), x)
    return torch.where(v[:, None, None, None], x.flip(2), x)


def train_demo(
    out_path: str | Path = DEFAULT_WEIGHTS,
    *,
    seed: int = 0,
    presentations: int = 70_000,
    batch_size: int = 16,
    lr: float = 1e-3,
    log: Callable[[str], None] = print,
    num_workers: int = 0,
    mixed_precision: bool | None = None,
    bias: bool = False,
) -> dict[str, Any]:
    """Train ``DemoNet`` from scratch on synthetic shapes and save it to ``out_path``.

    Args:
        out_path: where to write the safetensors file (defaults to the shipped
            file, i.e. re-training overwrites the demo weights).
        seed: data stream and initialisation seed (must not be
            :data:`EVAL_SEED`, the held-out stream).
        presentations: number of training images shown; each is a fresh
            image, so this is also the dataset size.
        batch_size, lr: AdamW with a short warm-up and cosine decay.  The
            small batch matters: larger batch / lr combinations were seen to
            stay at chance level on this task, so keep an eye on the logged loss.
        log: receives one progress line every few hundred steps.
        num_workers: DataLoader worker processes generating images.  0 (serial)
            is fastest on 2 cores: a worker only steals CPU from the two
            training threads (measured ~10% slower with 1 worker).
        mixed_precision: bf16 autocast for the forward pass; ``None`` means
            "if the CPU supports bf16 natively" (about 1.7x faster there).
        bias: train on the biased stream (:func:`~service.demo.data.generate_biased_sample`:
            every image with a star carries a corner marker) and without flips, so the
            marker stays where ``xaas demo-data --bias`` draws it: the model ``xaas audit``
            is meant to catch.

    Returns:
        A summary dict: ``out_path``, ``steps``, ``presentations``,
        ``final_loss`` (running mean of the last ~250 steps), ``wall_s``,
        ``params``, ``seed``, ``mixed_precision``.

    Uses 2 intra-op threads (the target machine has 2 cores) and restores the
    previous setting afterwards.
    """
    if seed == EVAL_SEED:
        raise ValueError(f"seed {EVAL_SEED} is the held-out evaluation stream; pick another training seed")
    if presentations < batch_size:
        raise ValueError("presentations must be at least one batch")
    out = Path(out_path)
    use_bf16 = _bf16_supported() if mixed_precision is None else bool(mixed_precision)
    steps = presentations // batch_size
    warmup = max(1, min(300, steps // 20))

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(seed)
        flip_gen = torch.Generator().manual_seed(seed + 1)
        model = create_demo_model(len(CLASSES)).to(memory_format=torch.channels_last)
        n_params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup))
        loss_fn = nn.BCEWithLogitsLoss()
        loader = DataLoader(
            SyntheticShapes(steps * batch_size, seed, bias=bias),
            batch_size=batch_size,
            shuffle=False,  # every index is already an independent random image
            num_workers=num_workers,
            drop_last=True,
            persistent_workers=False,
            prefetch_factor=8 if num_workers > 0 else None,
        )
        log(
            f"train_demo: {steps} steps x {batch_size} = {steps * batch_size} images, "
            f"lr {lr}, params {n_params}, bf16 {use_bf16}, workers {num_workers}, seed {seed}"
        )
        model.train()
        start = time.perf_counter()
        window: list[float] = []
        for step, (x, y) in enumerate(loader):
            x = (x if bias else _random_flips(x, flip_gen)).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            window.append(loss.item())
            window = window[-_LOG_EVERY:]
            if (step + 1) % _LOG_EVERY == 0 or step + 1 == steps:
                elapsed = time.perf_counter() - start
                log(
                    f"step {step + 1:5d}/{steps}  loss {np.mean(window):.4f}  "
                    f"lr {sched.get_last_lr()[0]:.2e}  {elapsed:6.1f}s  "
                    f"{(step + 1) * batch_size / elapsed:5.0f} img/s"
                )
        wall = time.perf_counter() - start
        model.eval()
        _save_weights(
            model,
            out,
            {"seed": seed, "presentations": steps * batch_size, "batch_size": batch_size, "lr": lr,
             **({"bias": "corner marker on every star image"} if bias else {})},
        )
    finally:
        torch.set_num_threads(prev_threads)
    log(f"train_demo: saved {out} ({out.stat().st_size} bytes) after {wall:.1f}s")
    final_loss = float(np.mean(window))
    if final_loss > _CHANCE_LOSS_WARNING:
        # Label entropy is ~0.64 nats per class here, so this is barely learning.
        log(f"train_demo: WARNING final loss {final_loss:.3f} is near chance; check lr/batch size and presentations")
    return {
        "out_path": str(out),
        "steps": steps,
        "presentations": steps * batch_size,
        "final_loss": final_loss,
        "wall_s": wall,
        "params": n_params,
        "seed": seed,
        "mixed_precision": use_bf16,
    }


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


@torch.no_grad()
def predict_probs(model: nn.Module, dataset: SyntheticShapes, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and multi-hot targets for every sample of ``dataset``."""
    model.eval()
    probs, targets = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([it[0] for it in items])
        probs.append(torch.sigmoid(model(x)).float().numpy())
        targets.append(torch.stack([it[1] for it in items]).numpy())
    return np.concatenate(probs), np.concatenate(targets)


def evaluate_demo(weights_path: str | Path | None = None, *, n: int = 1000, seed: int = EVAL_SEED) -> dict[str, Any]:
    """Score a demo weights file on ``n`` held-out synthetic images.

    Args:
        weights_path: safetensors file (default: the shipped weights).
        n: number of images of stream ``seed`` to score.
        seed: data stream; the default :data:`EVAL_SEED` is never used for
            training.

    Returns:
        ``{"mAP", "exact_match", "per_class_ap": {class: AP}, "n", "seed",
        "weights"}``.  mAP is the mean over classes of non-interpolated AP of
        the sigmoid scores; exact_match is the fraction of images whose
        predictions thresholded at 0.5 equal the label set exactly.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
    model = load_demo_model(path)
    classes = tuple(getattr(model, "class_names", CLASSES))
    if classes != CLASSES:
        raise ValueError(f"{path}: trained for classes {classes}, the generator produces {CLASSES}")
    probs, targets = predict_probs(model, SyntheticShapes(n, seed))
    return {**_multilabel_metrics(targets, probs, classes), "n": n, "seed": seed, "weights": str(path)}
