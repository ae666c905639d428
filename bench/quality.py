"""Explanation-quality benchmark: how good are xaas's maps, in numbers?

Runs every method on a held-out, seeded synthetic set from the demo generator (known boxes) with the demo model and
prints markdown tables (and ``--json`` the numbers)::

    python bench/quality.py --n 500 --json quality.json            # the full table (2 CPU cores: see --help)
    python bench/quality.py --quick                                  # a smaller, faster run
    python bench/quality.py --methods gradcam,layercam@features.block2,fused-cam:fusion=mean

Method syntax: ``name``, ``name@layer`` (layer override), ``name:key=value[:key=value]`` (method parameters).
Pass ``--weights`` to score other demo weights; the model runs in channels-last memory format (faster on CPU).

Evaluation unit: an (image, ground-truth class) pair; the class's own map is compared with that class's boxes.
Metrics (definitions and conventions in :mod:`service.quality`):

* localisation: box accuracy (largest connected component of ``map >= t * max``, IoU >= 0.5) at the Grad-CAM
  paper's t = 0.15, MaxBoxAcc (Choe et al. 2020) with its threshold, mean IoU at that threshold, MaxBoxAccV2;
* pointing game: the map's maximum inside a box of the class, enlarged by ``--tolerance`` px (2), against a
  uniformly random pixel (exact expectation) and the image centre;
* class discrimination: on images with two or more classes, the Pearson correlation of the maps of two classes
  present (all unordered pairs, at image resolution);
* faithfulness: deletion and insertion AUC (Petsiuk et al. 2018) with a Gaussian-blurred copy of the image as the
  substrate, ``--steps`` steps, the class's sigmoid probability, against a uniformly random map; one pair (the
  image's first object) per image on the first ``--di-images`` images;
* sanity (Adebayo et al. 2018): Spearman rank correlation between the heatmaps (negatives clipped, native
  resolution) of the trained model and of a randomised copy (:func:`service.quality.randomized_model`): every layer
  re-initialised ("full") and only the logit layer re-initialised ("head", the first step of the paper's cascading
  randomisation, which exposes class-insensitive maps); first pair of the first ``--sanity-images`` images; a
  correlation > 0.5 under either is flagged as a failure;
* ROAD (Rong et al. 2022): the class's probability after the 10 %, ..., 90 % most (MoRF, lower is better) or least
  (LeRF, higher is better) important pixels are removed and filled by noisy linear imputation
  (:func:`service.quality.noisy_linear_imputation`), averaged over the fractions; first pair of the first
  ``--road-images`` images (the imputation is a sparse solve per image and fraction, on the CPU);
* mass inside the class's own boxes (counterfactual Grad-CAM should put little there; plain Grad-CAM a lot).

``--segmentation`` measures the demo segmentation model (``demo-seg``) instead: the pointing game against exact
masks on held-out images of an unseen seed of the generator (default :data:`SEG_POINTING_SEED`, never used in
training or by the tests): for each class present in an image, the maximum of its explanation (Grad-CAM with the
class's predicted region, Seg-Grad-CAM, at layer ``context``; upsampled as the service renders it) must be a pixel
of that class's ground-truth mask. Reported with the random-pixel baseline (the mask's share of the image)::

    python bench/quality.py --segmentation --n 500

Methods whose cost is many forward passes per map (Score-CAM: one per channel; occlusion: one per window;
SmoothGrad / Integrated Gradients: one forward+backward per sample / step; RISE) run on the first
``--expensive-images`` images only; the table's ``pairs`` column says how many pairs each row used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from service.calibrate import MethodSpec, Pair, parse_method  # noqa: E402
from service.demo.data import CLASSES, generate_sample, sample_rng  # noqa: E402
from service.demo.model import DEMO_MEAN, DEMO_STD  # noqa: E402
from service.engine.baselines import gaussian_blur  # noqa: E402
from service.quality import (  # noqa: E402
    POINTING_TOLERANCE,
    auc,
    box_sweep,
    class_probability_fn,
    deletion_insertion,
    localization_summary,
    map_correlation,
    mass_inside,
    parse_thresholds,
    pointing_baselines,
    pointing_hit,
    randomized_model,
    rank_correlation,
    unit_map,
)
from service.road import road_curves, road_summary  # noqa: E402

DEFAULT_METHODS = (
    "cam", "gradcam", "gradcam-pp", "xgradcam", "hirescam", "layercam", "scorecam", "gradcam-counterfactual",
    "guided-backprop", "guided-gradcam", "saliency", "smoothgrad", "integrated-gradients", "occlusion",
)
#: Methods needing many model evaluations per map: run on the first ``expensive_images`` images only.
EXPENSIVE = {"scorecam", "occlusion", "smoothgrad", "integrated-gradients", "rise"}
SANITY_FAIL = 0.5
BENCH_THRESHOLDS = "0.01:0.09:0.01,0.1:0.95:0.025"
#: Per-channel model-space values of pixel 0 and pixel 1 (what the service passes to baselines as ``input_range``).
INPUT_RANGE = ([-m / s for m, s in zip(DEMO_MEAN, DEMO_STD)], [(1 - m) / s for m, s in zip(DEMO_MEAN, DEMO_STD)])
BASELINE_RANDOM = "baseline:random"
BASELINE_CENTRE = "baseline:centre"


# --------------------------------------------------------------------------------------------------- data


@dataclass
class BenchData:
    x: torch.Tensor                 # [N, 3, H, W] normalised model inputs
    size: tuple[int, int]           # (width, height) of every image
    pairs: list[Pair]               # every (image, class) pair, image-major
    seed: int

    def pairs_of(self, images: int) -> list[int]:
        return [k for k, p in enumerate(self.pairs) if p.image < images]

    def first_pairs(self, images: int) -> list[int]:
        seen, out = set(), []
        for k, p in enumerate(self.pairs):
            if p.image < images and p.image not in seen:
                seen.add(p.image)
                out.append(k)
        return out


def build_data(n: int, seed: int) -> BenchData:
    """``n`` samples of stream ``seed``: inputs normalised as the demo model expects, and the (image, class) pairs."""
    mean = np.asarray(DEMO_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(DEMO_STD, dtype=np.float32)[:, None, None]
    xs, pairs = [], []
    size = None
    for i in range(n):
        image, objects = generate_sample(sample_rng(seed, i))
        size = image.size
        arr = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        xs.append(torch.from_numpy(np.ascontiguousarray((arr - mean) / std)))
        by_class: dict[str, list[list[int]]] = {}
        for obj in objects:
            by_class.setdefault(obj["class"], []).append(list(obj["box"]))
        for label, boxes in by_class.items():
            pairs.append(Pair(i, CLASSES.index(label), label, boxes))
    assert size is not None
    return BenchData(torch.stack(xs), (int(size[0]), int(size[1])), pairs, seed)


# --------------------------------------------------------------------------------------------------- segmentation

#: Held-out stream of the segmentation pointing measurement: training reads stream 1, ``xaas eval-demo-seg`` 4242,
#: the tests 9001, 31337 and 1618.
SEG_POINTING_SEED = 2718


def segmentation_pointing(model: torch.nn.Module, methods: Sequence[str] = ("gradcam@context",), *, n: int = 500,
                          seed: int = SEG_POINTING_SEED, batch: int = 16,
                          log: Any = None) -> dict[str, Any]:
    """Pointing game of segmentation explanations against the generator's exact masks: per (image, present class)
    pair, whether the maximum of the class's map over its predicted region (upsampled to the image as ``/explain``
    renders it) lies in the class's true mask. Per method: ``pointing``, the random-pixel baseline
    ``pointing_random`` (mean mask share), per-class pointing, ``empty`` maps (count as misses), ``pairs``."""
    from service.demo.segmentation import SEG_CLASSES, segmentation_sample
    from service.engine.passes import complete
    from service.engine.targets import ClassRegion, TargetRequest
    from service.quality import pointing_in_mask
    from service.rendering import normalised_map

    mean = torch.tensor(DEMO_MEAN)[:, None, None]
    std = torch.tensor(DEMO_STD)[:, None, None]
    results: dict[str, Any] = {}
    for text in methods:
        spec = parse_method(text)
        layer = (spec.layer or "context") if spec.explainer.uses_layer else None
        hits: dict[int, list[bool]] = {}
        random_hit: list[float] = []
        empty = 0
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            samples = [segmentation_sample(seed, i) for i in range(start, min(n, start + batch))]
            x = torch.from_numpy(np.stack([px for px, _ in samples])).permute(0, 3, 1, 2).float() / 255.0
            present = [[int(c) for c in np.unique(labels) if c != 0] for _, labels in samples]
            requests = [TargetRequest(tuple(ClassRegion(c) for c in classes)) for classes in present]
            explained = complete(spec.explainer.steps(model, (x - mean) / std, requests, layer=layer,
                                                      task="segmentation", input_range=INPUT_RANGE, **spec.params))
            maps = explained.maps.detach().float().cpu().numpy()
            for r, (image, target) in enumerate(zip(explained.rows.image.tolist(), explained.rows.targets)):
                truth = samples[image][1] == target.index  # type: ignore[attr-defined]
                unit, stats = normalised_map(maps[r], (truth.shape[1], truth.shape[0]))
                empty += stats.empty
                hits.setdefault(target.index, []).append(pointing_in_mask(unit, truth))  # type: ignore[attr-defined]
                random_hit.append(float(truth.mean()))
        every = [h for per in hits.values() for h in per]
        results[text] = {
            "pointing": float(np.mean(every)) if every else math.nan,
            "pointing_random": float(np.mean(random_hit)) if random_hit else math.nan,
            "per_class": {SEG_CLASSES[c]: round(float(np.mean(v)), 4) for c, v in sorted(hits.items())},
            "pairs": len(every), "empty": int(empty), "seconds": round(time.perf_counter() - t0, 1)}
        if log is not None:
            log(f"{text}: pointing {results[text]['pointing']:.4f} over {len(every)} pairs "
                f"({results[text]['seconds']} s)")
    return {"model": "demo-seg", "images": n, "seed": seed, "methods": results}


def format_segmentation(result: dict[str, Any]) -> str:
    """Markdown table of :func:`segmentation_pointing`."""
    classes = list(next(iter(result["methods"].values()))["per_class"]) if result["methods"] else []
    head = ["method", "pointing", "random pixel", "pairs", "empty", *classes]
    lines = [f"Segmentation pointing game on {result['model']}: {result['images']} held-out images, seed "
             f"{result['seed']} (map maximum inside the class's true mask)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in result["methods"].items():
        cells = [name, _f(m["pointing"], 4), _f(m["pointing_random"], 4), str(m["pairs"]), str(m["empty"]),
                 *(_f(m["per_class"].get(c), 3) for c in classes)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- maps


def explain_rows(model: torch.nn.Module, method: MethodSpec, data: BenchData, rows: Sequence[int], *,
                 batch: int = 64) -> np.ndarray:
    """Raw maps ``[len(rows), h, w]`` for the given pair indices (batched ``explain`` calls)."""
    explainer = method.explainer
    layer = method.layer if explainer.uses_layer else None
    out = []
    for s in range(0, len(rows), batch):
        chunk = [data.pairs[r] for r in rows[s:s + batch]]
        x = data.x[torch.tensor([p.image for p in chunk])]
        t = torch.tensor([p.target for p in chunk])
        maps = explainer.explain(model, x, t, layer=layer, task="multilabel", input_range=INPUT_RANGE,
                                 **method.params)
        out.append(maps.detach().float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float32)


def baseline_maps(kind: str, data: BenchData, rows: Sequence[int], seed: int) -> np.ndarray:
    """Model-free reference maps: uniform noise (``random``) or a centred Gaussian (``centre``, sigma = side / 4)."""
    w, h = data.size
    if kind == BASELINE_RANDOM:
        rng = np.random.default_rng([seed, 7])
        return rng.random((len(rows), h, w), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = np.exp(-(((xx - (w - 1) / 2) / (w / 4)) ** 2 + ((yy - (h - 1) / 2) / (h / 4)) ** 2) / 2)
    return np.broadcast_to(g, (len(rows), h, w)).copy()


# --------------------------------------------------------------------------------------------------- metrics


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def map_metrics(units: np.ndarray, data: BenchData, rows: Sequence[int], thresholds: Sequence[float], *,
                tolerance: int = POINTING_TOLERANCE) -> dict[str, Any]:
    """Localisation, pointing, two-class correlation and mass-in-box for unit maps ``[len(rows), H, W]``."""
    pairs = [data.pairs[r] for r in rows]
    lg, an, hits, rnd, ctr, own, other, empty = [], [], [], [], [], [], [], 0
    by_image: dict[int, list[int]] = {}
    same_image: dict[int, list[Pair]] = {}
    for q in data.pairs:
        same_image.setdefault(q.image, []).append(q)
    for k, (pair, u) in enumerate(zip(pairs, units)):
        a, b = box_sweep(u, pair.boxes, thresholds)
        lg.append(a)
        an.append(b)
        hits.append(pointing_hit(u, pair.boxes, tolerance))
        r, c = pointing_baselines(pair.boxes, data.size, tolerance)
        rnd.append(r)
        ctr.append(c)
        own.append(mass_inside(u, pair.boxes))
        others = [bx for q in same_image.get(pair.image, ()) if q.target != pair.target for bx in q.boxes]
        other.append(mass_inside(u, others) if others else float("nan"))
        empty += int(not u.max() > 0)
        by_image.setdefault(pair.image, []).append(k)
    corrs = []
    for ks in by_image.values():
        for i in range(len(ks)):
            for j in range(i + 1, len(ks)):
                corrs.append(map_correlation(units[ks[i]], units[ks[j]]))
    loc = localization_summary(np.array(lg), np.array(an), thresholds, at=(0.15,))
    point = float(np.mean(hits)) if hits else float("nan")
    return {
        **loc,
        "empty_maps": empty,
        "pointing": point,
        "pointing_random": float(np.mean(rnd)) if rnd else float("nan"),
        "pointing_centre": float(np.mean(ctr)) if ctr else float("nan"),
        "two_class_corr": _nanmean(corrs),
        "two_class_pairs": int(np.isfinite(corrs).sum()) if corrs else 0,
        "two_class_undefined": int((~np.isfinite(corrs)).sum()) if corrs else 0,
        "mass_in_own_box": _nanmean(own),
        "mass_in_other_boxes": _nanmean(other),
    }


# --------------------------------------------------------------------------------------------------- benchmark


def run_benchmark(model: torch.nn.Module, methods: Sequence[str], *, n: int = 500, seed: int = 2024,
                  thresholds: str | Sequence[float] | None = BENCH_THRESHOLDS, expensive_images: int = 100,
                  di_images: int = 100, sanity_images: int = 40, road_images: int = 0, steps: int = 16,
                  blur_sigma: float = 5.0,
                  tolerance: int = POINTING_TOLERANCE,
                  batch: int = 64, random_seed: int = 1,
                  baselines: Sequence[str] = (BASELINE_RANDOM, BASELINE_CENTRE), baseline_maps_metrics: bool = True,
                  data: BenchData | None = None,
                  log=print) -> dict[str, Any]:
    """Every metric for every method; returns the JSON-able result (see :func:`format_tables`). ROAD runs on the
    first ``road_images`` pairs (0 here, 30 from the command line: its imputations are CPU solves).

    ``baselines`` adds model-free reference maps as extra rows; ``baseline_maps_metrics=False`` computes only their
    deletion/insertion AUCs (what the tests need). ``data`` reuses a :func:`build_data` set (then ``n`` and ``seed``
    are ignored).
    """
    say = log or (lambda _m: None)
    thresholds = parse_thresholds(thresholds)
    t_start = time.perf_counter()
    data = data or build_data(n, seed)
    n = int(data.x.shape[0])
    prob = class_probability_fn(model, "multilabel")
    substrate = gaussian_blur(data.x, blur_sigma)

    di_rows = data.first_pairs(min(n, di_images))
    di_x = data.x[torch.tensor([data.pairs[r].image for r in di_rows])] if di_rows else data.x[:0]
    di_sub = substrate[torch.tensor([data.pairs[r].image for r in di_rows])] if di_rows else data.x[:0]
    di_t = torch.tensor([data.pairs[r].target for r in di_rows], dtype=torch.long)
    endpoints = None
    if di_rows:
        endpoints = (prob(di_x, di_t), prob(di_sub, di_t))
    sanity_rows = data.first_pairs(min(n, sanity_images))
    road_rows = set(data.first_pairs(min(n, road_images, di_images)))
    # Full re-initialisation, and re-initialisation of the logit layer only (the first step of Adebayo et al.'s
    # cascading randomisation, which exposes class-insensitive methods).
    rmodels = {"full": randomized_model(model, seed=random_seed),
               "head": randomized_model(model, seed=random_seed, cascade=1)} if sanity_rows else {}

    def faithfulness(units_by_row: dict[int, np.ndarray], key: str) -> dict[str, Any]:
        keep = [k for k, r in enumerate(di_rows) if r in units_by_row]   # expensive methods may cover fewer pairs
        if not keep:
            return {}
        idx = torch.tensor(keep)
        sal = torch.from_numpy(np.stack([units_by_row[di_rows[k]] for k in keep]))
        ends = (endpoints[0][idx], endpoints[1][idx]) if endpoints is not None else None
        d, i = deletion_insertion(prob, di_x[idx], di_sub[idx], sal, di_t[idx], steps=steps, batch_size=128,
                                  seed=0, endpoints=ends)
        dels, ins = [auc(c) for c in d], [auc(c) for c in i]
        out = {"deletion_auc": float(np.mean(dels)), "insertion_auc": float(np.mean(ins)), "di_pairs": len(keep),
               "deletion_curve": [float(v) for v in d.mean(0)], "insertion_curve": [float(v) for v in i.mean(0)]}
        road_keep = [k for k in keep if di_rows[k] in road_rows]
        if road_keep:
            idx = torch.tensor(road_keep)
            sal = torch.from_numpy(np.stack([units_by_row[di_rows[k]] for k in road_keep]))
            morf, lerf = road_curves(prob, di_x[idx], sal, di_t[idx], seed=0)
            out.update(road_summary(morf, lerf), road_pairs=len(road_keep),
                       road_morf_curve=[float(v) for v in morf.mean(0)],
                       road_lerf_curve=[float(v) for v in lerf.mean(0)])
        return out

    results: dict[str, Any] = {}
    names = list(methods) + list(baselines)
    for name in names:
        t0 = time.perf_counter()
        if name in (BASELINE_RANDOM, BASELINE_CENTRE):
            rows = data.pairs_of(n)
            raw = baseline_maps(name, data, rows, random_seed)
            spec = None
        else:
            spec = parse_method(name)
            limit = min(n, expensive_images) if spec.explainer.name in EXPENSIVE else n
            rows = data.pairs_of(limit)
            raw = explain_rows(model, spec, data, rows, batch=16 if spec.explainer.name in EXPENSIVE else batch)
        units = np.stack([unit_map(m, data.size) for m in raw])
        if spec is None and not baseline_maps_metrics:      # a baseline wanted for deletion/insertion only
            results[name] = {"pairs": len(rows), **faithfulness(dict(zip(rows, units)), name)}
            continue
        res = map_metrics(units, data, rows, thresholds, tolerance=tolerance)
        res["images"] = int(max(data.pairs[r].image for r in rows) + 1) if rows else 0
        res["map_shape"] = list(raw.shape[1:])
        res.update(faithfulness(dict(zip(rows, units)), name))
        if spec is not None and rmodels:
            rowset = set(rows)
            srows = [r for r in sanity_rows if r in rowset]
            pos = {r: k for k, r in enumerate(rows)}
            for kind, rmodel in rmodels.items():
                suffix = "" if kind == "full" else "_head"
                randomised = explain_rows(rmodel, spec, data, srows, batch=16)
                rc = [rank_correlation(np.clip(raw[pos[r]], 0, None), np.clip(b, 0, None))
                      for r, b in zip(srows, randomised)]
                rc_abs = [rank_correlation(np.abs(raw[pos[r]]), np.abs(b)) for r, b in zip(srows, randomised)]
                res["sanity_rank_corr" + suffix] = _nanmean(rc)
                res["sanity_rank_corr_abs" + suffix] = _nanmean(rc_abs)
                res["sanity_undefined" + suffix] = int((~np.isfinite(rc)).sum())
            res["sanity_pairs"] = len(srows)
            worst = np.nanmax([res["sanity_rank_corr"], res["sanity_rank_corr_head"], -1.0])
            res["sanity_fails"] = bool(worst > SANITY_FAIL)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results[name] = res
        say(f"{name:>28s}: pairs {len(rows):4d}  MaxBoxAcc {res['max_box_acc']:.3f}@{res['best_threshold']:g}  "
            f"pointing {res['pointing']:.3f}  corr2 {res['two_class_corr']:.3f}  "
            f"del {res.get('deletion_auc', float('nan')):.3f} ins {res.get('insertion_auc', float('nan')):.3f}  "
            f"ROAD {res.get('road_morf', float('nan')):.3f}/{res.get('road_lerf', float('nan')):.3f}  "
            f"sanity {res.get('sanity_rank_corr', float('nan')):.3f}/"
            f"{res.get('sanity_rank_corr_head', float('nan')):.3f}  "
            f"{res['seconds']:.1f}s")
    return {
        "config": {"n": n, "seed": data.seed, "pairs": len(data.pairs), "thresholds": list(thresholds),
                   "iou_threshold": 0.5, "pointing_tolerance_px": tolerance, "steps": steps,
                   "substrate": f"gaussian blur sigma {blur_sigma} px", "di_images": len(di_rows),
                   "sanity_images": len(sanity_rows), "road_images": len(road_rows),
                   "expensive_images": min(n, expensive_images),
                   "sanity": "Spearman rank correlation of heatmaps (negatives clipped, native resolution) between the "
                             "trained model and (full) every layer re-initialised / (head) the logit layer "
                             "re-initialised", "sanity_fail_above": SANITY_FAIL,
                   "torch_threads": torch.get_num_threads()},
        "substrate_probability": float(endpoints[1].mean()) if endpoints else None,
        "image_probability": float(endpoints[0].mean()) if endpoints else None,
        "methods": results,
        "sanity_failures": [k for k, v in results.items() if v.get("sanity_fails")],
        "seconds": round(time.perf_counter() - t_start, 1),
    }


# --------------------------------------------------------------------------------------------------- output


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_tables(result: dict[str, Any]) -> str:
    cfg, res = result["config"], result["methods"]
    names = list(res)
    out = [
        f"## Explanation quality — demo model, {cfg['n']} held-out images (seed {cfg['seed']}), {cfg['pairs']} "
        f"(image, class) pairs",
        "",
        "Localisation: box = largest connected component of `map >= t·max`, correct when IoU >= 0.5 with a box of "
        "the class. MaxBoxAcc = best over t ∈ {" + ", ".join(f"{t:g}" for t in cfg["thresholds"]) + "}. "
        f"Pointing tolerance {cfg['pointing_tolerance_px']} px. Deletion/insertion: {cfg['steps']} steps, "
        f"{cfg['substrate']}, {cfg['di_images']} pairs. ROAD: MoRF / LeRF probability after removing 10-90 % of the "
        f"pixels with noisy linear imputation, {cfg.get('road_images', 0)} pairs. Sanity: {cfg['sanity']}, "
        f"{cfg['sanity_images']} pairs, "
        f"fails above {cfg['sanity_fail_above']}.",
        "",
        "| method | pairs | BoxAcc@0.15 | MaxBoxAcc | best t | mean IoU | MaxBoxAccV2 | pointing | ×random | "
        "2-class corr | mass in box | deletion ↓ | insertion ↑ | ROAD MoRF ↓ | ROAD LeRF ↑ | sanity ρ full | "
        "sanity ρ head | s/pair |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in names:
        r = res[k]
        ratio = r["pointing"] / r["pointing_random"] if r["pointing_random"] else float("nan")
        flag = " ⚠" if r.get("sanity_fails") else ""
        out.append(
            f"| {k} | {r['pairs']} | {_f(r['box_accuracy_at'].get('0.15'))} | **{_f(r['max_box_acc'])}** | "
            f"{r['best_threshold']:g} | {_f(r['mean_iou'])} | {_f(r['max_box_acc_v2'])} | {_f(r['pointing'])} | "
            f"{_f(ratio, 1)} | {_f(r['two_class_corr'])} | {_f(r['mass_in_own_box'])} | "
            f"{_f(r.get('deletion_auc'))} | {_f(r.get('insertion_auc'))} | {_f(r.get('road_morf'))} | "
            f"{_f(r.get('road_lerf'))} | {_f(r.get('sanity_rank_corr'))} | "
            f"{_f(r.get('sanity_rank_corr_head'))}{flag} | "
            f"{_f(r['seconds'] / max(1, r['pairs']), 4)} |")
    any_r = next(iter(res.values()))
    out += [
        "",
        f"Pointing baselines (all pairs): uniformly random pixel {_f(any_r['pointing_random'])}, image centre "
        f"{_f(res.get(BASELINE_CENTRE, any_r)['pointing_centre'])}. "
        f"Mean class probability: image {_f(result.get('image_probability'))}, blurred substrate "
        f"{_f(result.get('substrate_probability'))}.",
        "",
    ]
    if "gradcam" in res and "gradcam-counterfactual" in res:
        g, c = res["gradcam"], res["gradcam-counterfactual"]
        out += [
            "### Counterfactual Grad-CAM vs Grad-CAM",
            "",
            "| method | mass in own box | mass in other classes' boxes | empty maps |",
            "|---|---:|---:|---:|",
            f"| gradcam | {_f(g['mass_in_own_box'])} | {_f(g['mass_in_other_boxes'])} | {g['empty_maps']} |",
            f"| gradcam-counterfactual | {_f(c['mass_in_own_box'])} | {_f(c['mass_in_other_boxes'])} | "
            f"{c['empty_maps']} |",
            "",
        ]
    out += ["### Box accuracy per threshold", "",
            "| t | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for i, t in enumerate(cfg["thresholds"]):
        out.append(f"| {t:g} | " + " | ".join(_f(res[k]["box_accuracy"][i]) for k in names) + " |")
    fails = result.get("sanity_failures") or []
    out += ["", "Sanity-check failures (rank correlation > "
            f"{cfg['sanity_fail_above']}): " + (", ".join(fails) if fails else "none"),
            f"Total {result['seconds']:.0f}s with {cfg['torch_threads']} torch threads."]
    return "\n".join(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj


def _pick(value: int | None, default: int) -> int:
    return default if value is None else max(0, int(value))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="held-out images (default 500; --quick: 100)")
    ap.add_argument("--seed", type=int, default=None,
                    help=f"data stream (default 2024, the demo's held-out stream; --segmentation {SEG_POINTING_SEED})")
    ap.add_argument("--segmentation", action="store_true",
                    help="the segmentation demo model's pointing game against exact masks instead (methods default "
                         "to gradcam@context; --n default 500, --quick 60)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated methods, 'name@layer' for a layer override (default: all engine methods "
                         "but RISE, plus the fusion methods)")
    ap.add_argument("--quick", action="store_true",
                    help="100 images (12 for the expensive methods), 40 deletion/insertion and 12 sanity pairs")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    ap.add_argument("--weights", type=Path, default=None, help="demo weights (default: the shipped file)")
    ap.add_argument("--thresholds", default=BENCH_THRESHOLDS,
                    help=f"thresholds swept for MaxBoxAcc (default {BENCH_THRESHOLDS}: fine steps at the low end, "
                         "where gradient maps peak)")
    ap.add_argument("--expensive-images", type=int, default=None,
                    help="images for Score-CAM, occlusion, SmoothGrad, IG, RISE (default 100; --quick 12)")
    ap.add_argument("--di-images", type=int, default=None, help="pairs for deletion/insertion (default 100; quick 40)")
    ap.add_argument("--sanity-images", type=int, default=None, help="pairs for the sanity check (default 40; quick 12)")
    ap.add_argument("--road-images", type=int, default=None, help="pairs for ROAD (default 30; quick 8; 0: none)")
    ap.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    ap.add_argument("--blur-sigma", type=float, default=5.0, help="substrate blur (pixels)")
    ap.add_argument("--tolerance", type=int, default=POINTING_TOLERANCE, help="pointing-game tolerance (pixels)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--no-channels-last", action="store_true", help="keep the model's default memory format")
    args = ap.parse_args(argv)

    quick = args.quick
    torch.set_num_threads(max(1, args.threads))
    if args.segmentation:
        return _main_segmentation(args)
    n = args.n or (100 if quick else 500)
    from service.demo.train import load_demo_model

    model = load_demo_model(args.weights)
    for p in model.parameters():
        p.requires_grad_(False)
    if not args.no_channels_last:
        model = model.to(memory_format=torch.channels_last)   # 1.3-2x faster convolutions on CPU
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    else:
        from service.engine.fusion import BENCH_METHODS

        methods = list(DEFAULT_METHODS) + list(BENCH_METHODS)
    result = run_benchmark(
        model, methods, n=n, seed=2024 if args.seed is None else args.seed, thresholds=args.thresholds,
        expensive_images=_pick(args.expensive_images, 12 if quick else 100),
        di_images=_pick(args.di_images, 40 if quick else 100),
        sanity_images=_pick(args.sanity_images, 12 if quick else 40),
        road_images=_pick(args.road_images, 8 if quick else 30),
        steps=args.steps, blur_sigma=args.blur_sigma, tolerance=args.tolerance,
        log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_tables(result))
    if args.json:
        args.json.write_text(json.dumps(_jsonable(result), indent=1) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


def _main_segmentation(args: argparse.Namespace) -> int:
    from service.demo.segmentation import load_demo_seg_model

    model = load_demo_seg_model(args.weights).requires_grad_(False)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else ["gradcam@context"]
    result = segmentation_pointing(model, methods, n=args.n or (60 if args.quick else 500),
                                   seed=SEG_POINTING_SEED if args.seed is None else args.seed,
                                   log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_segmentation(result))
    if args.json:
        args.json.write_text(json.dumps(_jsonable(result), indent=1) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
