"""Perturbation methods: change the input, watch the score. No gradients; every masked or occluded copy is run in
no-grad forward passes of at most ``FORWARD_CHUNK`` images (halved on GPU out-of-memory), so memory stays bounded
whatever the batch size. One pass: the unperturbed forward (occlusion's reference, or the clean images that RISE
puts in its first chunk) yields the reported scores and the top-k targets, and every perturbed copy of an image is
scored for all of that image's targets at once. Progress counts perturbed forwards.

Example::

    maps = METHODS["occlusion"].explain(model, x, targets, layer=None, task="multiclass", window=32, stride=16)
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FieldError, InvalidOption
from .base import Explained, Explainer, ParamSpec, forward_chunk_size, logits_of
from .baselines import BASELINES, make_baseline
from .passes import Steps, rows_of_samples, run_in_chunks
from .targets import Rows, TargetRequest, plan_rows, reported_scores, target_scores

__all__ = ["DRISE", "MAX_OCCLUSION_WINDOWS", "RISE", "Occlusion", "occlusion_starts", "rise_masks", "rise_upsample"]

#: Upper bound on occluded copies per row; a request beyond it is refused rather than left to run for minutes.
MAX_OCCLUSION_WINDOWS = 4096


def occlusion_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: ``0, stride, 2*stride, ...`` plus one window flush with the far edge when the
    stride does not land there, so that every pixel is covered at least once."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


class Occlusion(Explainer):
    r"""Occlusion sensitivity (Zeiler & Fergus, ECCV 2014): slide a ``window x window`` patch filled with the
    baseline over the input with step ``stride`` and record the drop of the target logit,

        d_w = y^c(x) - y^c(x \text{ with window } w \text{ replaced by the baseline}),
        M_{ij} = \frac{1}{|W_{ij}|} \sum_{w \in W_{ij}} d_w,   W_{ij} = \text{windows covering pixel } (i, j).

    Signed: occluding a patch can raise the score. A last window flush with the border covers any remainder
    (:func:`occlusion_starts`), so every pixel gets a value. Cost: ``n_windows + 1`` forwards per row
    (169 + 1 for window 32, stride 16 at 224 px). On volumes the patch is a ``window``-sided cube sliding along
    depth, height and width (the same bound on the count of windows).

    Example::

        Occlusion().explain(model, x, targets, layer=None, task="multiclass", window=16, stride=8)
    """

    name = "occlusion"
    volumes = True
    family = "perturbation"
    signed = True
    description = ("Occlusion: drop of the class score when a sliding patch is replaced by the baseline, averaged "
                   "over the patches covering each pixel.")
    params = (
        ParamSpec("window", int, 32, 1, 4096, description="side of the square patch (a cube on volumes), in "
                                                           "model-input pixels"),
        ParamSpec("stride", int, 16, 1, 4096, description="step between patches, in model-input pixels"),
        ParamSpec("baseline", str, "zero", choices=BASELINES,
                  description="patch content: zero (model-space zeros = mean colour when normalised), black, mean, "
                              "blur"),
        ParamSpec("blur_sigma", float, 0.05, 0.001, 1.0,
                  description="Gaussian sigma of the blur baseline as a fraction of the shorter input side"),
    )

    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Steps[Explained]:
        p, ctx = self._bind(params)
        x = inputs
        b, size = x.shape[0], tuple(int(s) for s in x.shape[2:])     # (H, W) or a volume's (D, H, W)
        win, stride = p["window"], p["stride"]
        shown = "x".join(map(str, size))
        if win > min(size):
            raise InvalidOption(f"window {win} exceeds the model input size {shown}",
                                errors=[FieldError("window", f"must be <= {min(size)}")])
        starts = [occlusion_starts(s, win, stride) for s in size]
        grid = tuple(len(a) for a in starts)
        n = math.prod(grid)
        if n > MAX_OCCLUSION_WINDOWS:
            raise InvalidOption(
                f"window {win} and stride {stride} give {n} occluded copies per image on a {shown} input "
                f"(limit {MAX_OCCLUSION_WINDOWS}); increase stride or window",
                errors=[FieldError("stride", "too many windows")])
        base = make_baseline(x, p["baseline"], blur_sigma=p["blur_sigma"], input_range=ctx.get("input_range"))
        chunk = forward_chunk_size(self, x, ctx)
        with torch.no_grad():
            logits = torch.cat([logits_of(model(x[s:e]), e - s) for s, e in _spans(b, chunk)])
            rows = plan_rows(logits, requests, task)
            reference = target_scores(logits, rows, task).float()
        drops = torch.zeros((len(rows), n), device=x.device, dtype=torch.float32)
        wanted = torch.tensor([i for i in range(b) if rows.per_image[i]], dtype=torch.long, device=x.device)

        def occlude(start: int, stop: int) -> None:
            with torch.no_grad():
                flat = torch.arange(start, stop, device=x.device)
                image = wanted[flat // n]
                images = x[image]
                for i, k in enumerate((flat % n).tolist()):
                    corner = [a[j] for a, j in zip(starts, _unravel(k, grid))]
                    window = (slice(None), *(slice(c, c + win) for c in corner))
                    images[i][window] = base[int(image[i])][window]
                out = logits_of(model(images), stop - start)
                sample_rows = rows_of_samples(rows, image)
                scores = target_scores(out, sample_rows, task).float()
                index = (flat % n)[sample_rows.image]
                drops[sample_rows.slot, index] = reference[sample_rows.slot] - scores

        yield from run_in_chunks(len(wanted) * n, chunk, occlude, "windows")
        # Windows form a product grid, so coverage factorises per axis: sum_w d_w 1[w covers (i,j)] = R_y^T D R_x
        # (and likewise with R_z for volumes).
        cover = [_coverage(a, win, s, x.device) for a, s in zip(starts, size)]
        if len(size) == 2:
            total = torch.einsum("yh,byx,xw->bhw", cover[0], drops.view(len(rows), *grid), cover[1])
        else:
            total = torch.einsum("zd,bzyx,yh,xw->bdhw", cover[0], drops.view(len(rows), *grid), cover[1], cover[2])
        counts = cover[0].sum(0)
        for c in cover[1:]:
            counts = counts[..., None] * c.sum(0)
        return Explained(rows, total / counts, reported_scores(logits, rows, task))


def _unravel(k: int, grid: tuple[int, ...]) -> list[int]:
    """Row-major multi-index of window ``k`` on a product grid of window starts."""
    out = []
    for n in reversed(grid):
        out.append(k % n)
        k //= n
    return out[::-1]


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def _coverage(starts: list[int], window: int, size: int, device: torch.device) -> Tensor:
    pos = torch.arange(size, device=device)
    s = torch.tensor(starts, device=device)[:, None]
    return ((pos >= s) & (pos < s + window)).float()


def rise_masks(seed: int, count: int, cells: int, keep: float, size: Sequence[int], *, device: torch.device | str,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, list[tuple[int, int]]]:
    """The low-resolution binary grids ``[count, 1, cells, cells]`` (on ``device``) and the random crop offsets
    ``(dy, dx)`` of RISE, drawn from ``seed`` alone so that every row sees the same masks."""
    h, w = size
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    grids = (torch.rand((count, 1, cells, cells), generator=gen, device=device) < keep).to(dtype)
    cell_h, cell_w = math.ceil(h / cells), math.ceil(w / cells)
    # Offsets are needed as Python slice bounds; drawing them host-side avoids a device sync per chunk.
    rng = random.Random(int(seed))
    shifts = [(rng.randrange(cell_h), rng.randrange(cell_w)) for _ in range(count)]
    return grids, shifts


def rise_upsample(grids: Tensor, shifts: Sequence[tuple[int, int]], size: Sequence[int]) -> Tensor:
    """Masks ``[m, 1, H, W]`` from grids: bilinear upsampling to ``(cells+1)`` cells, then a shifted crop."""
    h, w = size
    cells = grids.shape[-1]
    cell_h, cell_w = math.ceil(h / cells), math.ceil(w / cells)
    up = F.interpolate(grids, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear",
                       align_corners=False)
    return torch.stack([up[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts)])


class RISE(Explainer):
    r"""RISE (Petsiuk et al., BMVC 2018): randomized input sampling. ``N`` masks are made by drawing a
    ``cells x cells`` binary grid (each cell kept with probability ``p``), upsampling it bilinearly to
    ``(cells+1)`` cell sizes and cropping ``H x W`` at a random shift; then

        M = \frac{1}{N p} \sum_{i=1}^{N} P_c(x \odot m_i) \, m_i

    with ``P_c`` the softmax probability of class ``c`` (multiclass) or its sigmoid (multilabel). Masks depend on
    ``seed`` only. Non-negative. Cost: ``masks`` forwards per row (the paper uses 4000-8000).

    Example::

        RISE().explain(model, x, targets, layer=None, task="multiclass", masks=2000)
    """

    name = "rise"
    family = "perturbation"
    description = "RISE: average of random smooth masks weighted by the class probability of the masked input."
    params = (
        ParamSpec("masks", int, 500, 1, 20000, description="number of random masks"),
        ParamSpec("cells", int, 8, 2, 64, description="mask grid resolution (cells per side)"),
        ParamSpec("p", float, 0.5, 0.01, 0.99, description="probability that a grid cell is kept"),
        ParamSpec("seed", int, 0, 0, 2**31 - 1, description="seed of the masks"),
    )

    def run(self, model: nn.Module, inputs: Tensor, requests: Sequence[TargetRequest], *, layer: str | None,
            task: str, **params: Any) -> Steps[Explained]:
        p, ctx = self._bind(params)
        x = inputs
        b, c, h, w = x.shape
        n = p["masks"]
        grids, shifts = rise_masks(p["seed"], n, p["cells"], p["p"], (h, w), device=x.device)
        chunk = forward_chunk_size(self, x, ctx)
        # The clean images ride in the first chunk's forward when they are few: their logits give the scores and the
        # top-k targets. A large batch of clean images gets its own no-grad forward instead of shrinking every chunk.
        rides_along = b <= max(1, chunk // 8)
        with torch.no_grad():
            logits = None if rides_along else logits_of(model(x), b)
        state: dict[str, Any] = {"logits": logits, "rows": None, "total": None}

        def masked(start: int, stop: int) -> None:
            with torch.no_grad(), _half_on_cuda(x):
                flat = torch.arange(start, stop, device=x.device)
                image, mask = flat // n, (flat % n)
                masks = torch.cat([rise_upsample(grids[m0:m1], shifts[m0:m1], (h, w))
                                   for m0, m1 in _mask_spans(mask.tolist())])          # [s, 1, H, W]
                batch = x[image] * masks.to(x.dtype)
                clean = state["logits"] is None
                out = logits_of(model(torch.cat([x, batch]) if clean else batch), stop - start + (b if clean else 0))
                if clean:
                    state["logits"], out = out[:b].float(), out[b:]
                if state["rows"] is None:
                    state["rows"] = plan_rows(state["logits"], requests, task)
                    state["total"] = torch.zeros((len(state["rows"]), h, w), device=x.device, dtype=torch.float32)
                sample_rows = rows_of_samples(state["rows"], image)
                probs = self.mask_weights(out, sample_rows, task)
                state["total"].index_add_(0, sample_rows.slot, probs.view(-1, 1, 1) * masks[sample_rows.image, 0]
                                          .float())

        yield from run_in_chunks(b * n, max(1, chunk - b) if rides_along else chunk, masked, "masks")
        rows = state["rows"]
        return Explained(rows, state["total"] / (n * p["p"]), reported_scores(state["logits"], rows, task))

    def mask_weights(self, output: Tensor, rows: Rows, task: str) -> Tensor:
        """``[R]`` weight of each masked forward's mask for its row: the target's reported score (a probability)."""
        return reported_scores(output, rows, task)


class DRISE(RISE):
    r"""D-RISE (Petsiuk et al., CVPR 2021): RISE for object detectors. The same random masks, each weighted by how
    well the masked image still holds the explained detection ``d_t``: the best match over its detections ``d_j``,

        w_i = \max_j \mathrm{IoU}(L_t, L_j) \cdot \cos(P_t, P_j) \cdot O_j,
        M = \frac{1}{N p} \sum_{i=1}^{N} w_i \, m_i

    (:func:`~service.engine.detection.drise_similarity`: torchvision reports one class and score per detection, so
    ``cos(P_t, P_j) O_j`` is the detection's score for the same label and 0 for another). Detection models only;
    non-negative; ``masks`` forwards per image (the paper uses 5000).

    Example::

        DRISE().explain(detector, x, torch.tensor([0]), layer=None, task="detection", masks=1000)
    """

    name = "drise"
    tasks = ("detection",)
    description = "D-RISE: random masks weighted by how well the masked image keeps the detection (IoU x score)."

    def check_model(self, model: nn.Module, input_shape: Sequence[int], *, layer: str | None = None,
                    task: str = "multiclass") -> None:
        if task != "detection":
            raise InvalidOption("drise explains detections; use rise for classifiers and segmentation models")

    def mask_weights(self, output: Tensor, rows: Rows, task: str) -> Tensor:
        from .detection import drise_similarity

        return drise_similarity(output, rows.image, rows.targets)


def _mask_spans(masks: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs ``[m0, m1)`` of mask indices (a chunk may wrap from one image's last masks to the next's
    first), so masks are upsampled in runs rather than one by one."""
    spans: list[tuple[int, int]] = []
    for m in masks:
        if spans and spans[-1][1] == m:
            spans[-1] = (spans[-1][0], m + 1)
        else:
            spans.append((m, m + 1))
    return spans


def _half_on_cuda(x: Tensor) -> Any:
    """fp16 autocast for the no-grad masked forwards on CUDA; a no-op on the CPU."""
    if x.is_cuda:
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
