"""``xaas evaluate --model NAME FOLDER``: the quality measures of ``bench/quality.py`` for a served model on the user's
labelled folder, written into the model's registry entry as ``method_trust:`` (:mod:`service.trust`).

For every method (default: the model's applicable methods that cost one pass, :data:`CHEAP`), on the folder's
(image, class) pairs (the ``labels.json`` format of ``xaas demo-data``; boxes in the image's own pixels):

* model-parameter randomisation sanity (Adebayo et al. 2018): Spearman correlation of the maps of the model and of
  a copy with every layer / only the logit layer re-initialised (:func:`service.quality.randomized_model`), on the
  first ``sanity_pairs`` pairs (one per image);
* pointing game and MaxBoxAcc against the boxes (:mod:`service.quality`), on every pair; a random-pixel baseline;
* deletion / insertion (Petsiuk et al. 2018, blurred substrate) and ROAD (Rong et al. 2022, noisy linear
  imputation) on the first ``faithfulness_pairs`` / ``road_pairs`` pairs, each against a uniformly random map.

Maps are computed as the service computes them (registry preprocessing, the model's target layer, the same engine
calls); the report is JSON-able and :func:`trust_entries` turns it into validated ``method_trust`` entries.

Example::

    report = evaluate("data/mine", model="demo", methods=["gradcam", "saliency"])
    update_registry_entry("service/models.yaml", "demo", {"method_trust": trust_entries(report)})
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibrate import MethodSpec, Pair, load_model, load_pairs, parse_method
from .engine.baselines import gaussian_blur
from .errors import ConfigError
from .quality import (
    auc,
    box_sweep,
    class_probability_fn,
    deletion_insertion,
    localization_summary,
    parse_thresholds,
    pointing_baselines,
    pointing_hit,
    randomized_model,
    rank_correlation,
    unit_map,
)
from .road import road_curves, road_summary
from .trust import MethodTrust, trust_flags

__all__ = ["CHEAP", "evaluate", "format_evaluation", "maps_of", "trust_entries"]

#: Methods whose map costs about one forward(+backward): the default set (the others need ``--methods``).
CHEAP = ("cam", "gradcam", "gradcam-pp", "xgradcam", "hirescam", "layercam", "gradcam-counterfactual",
         "guided-backprop", "guided-gradcam", "saliency", "fused-cam", "attention-rollout", "attention-gradients")
#: Substrate blur for deletion/insertion as a fraction of the shorter input side (bench/quality.py: 5 px of 128).
BLUR_FRACTION = 5 / 128


def maps_of(module: torch.nn.Module, loaded: Any, spec: MethodSpec, inputs: torch.Tensor, pairs: Sequence[Pair], *,
          batch_size: int = 16) -> list[np.ndarray]:
    """Raw maps of ``module`` (the served one or a randomised copy), as ``/explain`` computes them."""
    layer = (spec.layer or loaded.target_layer) if spec.explainer.uses_layer else None
    out: list[np.ndarray] = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        x = inputs[torch.tensor([p.image for p in chunk])].to(loaded.device)
        t = torch.tensor([p.target for p in chunk], device=loaded.device)
        maps = spec.explainer.explain(module, x, t, layer=layer, task=loaded.task, input_range=loaded.input_range,
                                      **spec.params)
        out.extend(maps.detach().float().cpu().numpy())
    return out


def _first_per_image(pairs: Sequence[Pair], limit: int) -> list[int]:
    seen: set[int] = set()
    out: list[int] = []
    for k, p in enumerate(pairs):
        if p.image not in seen and len(out) < limit:
            seen.add(p.image)
            out.append(k)
    return out


def evaluate(data_dir: str | Path, *, models_file: str | Path | None = None, model: str | None = None,
             methods: Sequence[str] | None = None, limit: int | None = None, sanity_pairs: int = 20,
             faithfulness_pairs: int = 30, road_pairs: int = 10, steps: int = 16, seed: int = 0,
             loaded: Any = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure ``methods`` on ``data_dir``; returns ``{"model", "data", "images", "pairs", "methods": {name:
    MethodTrust fields}, "baseline": {...}}``. ``loaded`` skips loading the model from ``models_file``."""
    say = log or (lambda _m: None)
    lm = loaded if loaded is not None else load_model(models_file, model)
    if lm.task not in ("multiclass", "multilabel"):
        raise ConfigError(f"xaas evaluate measures classifiers; model {lm.name!r} is a {lm.task} model")
    names = list(methods) if methods else [m for m in lm.capabilities.usable_methods if m in CHEAP]
    specs = [parse_method(m) for m in names]
    usable = set(lm.capabilities.usable_methods)
    refused = [s.text for s in specs if s.explainer.name not in usable]
    if refused:
        raise ConfigError(f"methods {refused} do not apply to model {lm.name!r} (usable: {', '.join(sorted(usable))})")
    t0 = time.perf_counter()
    inputs, sizes, pairs, files = load_pairs(data_dir, lm, limit=limit)
    if not pairs:
        raise ConfigError(f"{data_dir}: no labelled objects to evaluate on")
    say(f"evaluate: {len(files)} images, {len(pairs)} (image, class) pairs, model {lm.name} "
        f"({time.perf_counter() - t0:.1f}s to load)")
    h, w = (int(v) for v in lm.spec.input_size)
    prob = class_probability_fn(lm.module, lm.task)
    thresholds = parse_thresholds(None)

    # Pointing baseline: a uniformly random pixel (exact expectation), over every pair.
    rnd = [pointing_baselines(p.boxes, sizes[p.image])[0] for p in pairs]
    # Faithfulness rows: the first pair of each image; a random map as the reference.
    fa = _first_per_image(pairs, faithfulness_pairs)
    ro = fa[: max(0, min(road_pairs, len(fa)))]
    x_fa = inputs[torch.tensor([pairs[k].image for k in fa])].to(lm.device) if fa else inputs[:0]
    t_fa = torch.tensor([pairs[k].target for k in fa], device=lm.device)
    substrate = gaussian_blur(x_fa, BLUR_FRACTION * min(h, w))
    ends = (prob(x_fa, t_fa), prob(substrate, t_fa)) if fa else None
    gen = np.random.default_rng([seed, 11])
    random_maps = torch.from_numpy(gen.random((len(fa), h, w), dtype=np.float32))
    baseline: dict[str, Any] = {"pointing_random": float(np.mean(rnd))}
    if fa:
        d, _ = deletion_insertion(prob, x_fa, substrate, random_maps, t_fa, steps=steps, seed=seed, endpoints=ends)
        baseline["deletion_auc_random"] = float(np.mean([auc(c) for c in d]))
    if ro:
        idx = torch.tensor(range(len(ro)))
        morf, lerf = road_curves(prob, x_fa[idx], random_maps[idx], t_fa[idx], seed=seed)
        s = road_summary(morf, lerf)
        baseline["road_morf_random"], baseline["road_lerf_random"] = s["road_morf"], s["road_lerf"]

    sanity_rows = _first_per_image(pairs, sanity_pairs)
    randomised = {"full": randomized_model(lm.module, seed=seed + 1),
                  "head": randomized_model(lm.module, seed=seed + 1, cascade=1)} if sanity_rows else {}
    results: dict[str, Any] = {}
    stamp = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    for spec in specs:
        start = time.perf_counter()
        raw = maps_of(lm.module, lm, spec, inputs, pairs)
        units = [unit_map(m, sizes[p.image]) for m, p in zip(raw, pairs)]
        hits = [pointing_hit(u, p.boxes) for u, p in zip(units, pairs)]
        lg, an = zip(*(box_sweep(u, p.boxes, thresholds) for u, p in zip(units, pairs)))
        loc = localization_summary(np.array(lg), np.array(an), thresholds)
        res: dict[str, Any] = {"pairs": len(pairs), "data": str(data_dir), "evaluated": stamp,
                               "pointing": float(np.mean(hits)), "pointing_random": baseline["pointing_random"],
                               "max_box_acc": loc["max_box_acc"], "best_threshold": loc["best_threshold"]}
        if fa:
            sal = torch.from_numpy(np.stack([unit_map(raw[k], (w, h)) for k in fa]))
            d, i = deletion_insertion(prob, x_fa, substrate, sal, t_fa, steps=steps, seed=seed, endpoints=ends)
            res.update(deletion_auc=float(np.mean([auc(c) for c in d])),
                       insertion_auc=float(np.mean([auc(c) for c in i])),
                       deletion_auc_random=baseline["deletion_auc_random"], faithfulness_pairs=len(fa))
            if ro:
                morf, lerf = road_curves(prob, x_fa[: len(ro)], sal[: len(ro)], t_fa[: len(ro)], seed=seed)
                res.update({k: v for k, v in road_summary(morf, lerf).items() if k != "road_gap"},
                           road_morf_random=baseline["road_morf_random"], road_lerf_random=baseline["road_lerf_random"],
                           road_pairs=len(ro))
        for kind, module in randomised.items():
            rows = [pairs[k] for k in sanity_rows]
            other = maps_of(module, lm, spec, inputs, rows)
            rc = [rank_correlation(np.clip(raw[k], 0, None), np.clip(b, 0, None)) for k, b in zip(sanity_rows, other)]
            finite = [v for v in rc if np.isfinite(v)]
            res["sanity_rank_corr" + ("" if kind == "full" else "_head")] = float(np.mean(finite)) if finite else None
        res["sanity_pairs"] = len(sanity_rows)
        trust = MethodTrust.model_validate(_rounded(res))
        results[spec.text] = trust.model_dump(exclude_none=True)
        flags = trust_flags(spec.explainer.name, trust)
        say(f"  {spec.text}: pointing {res['pointing']:.3f}, sanity {_f(res.get('sanity_rank_corr'))}/"
            f"{_f(res.get('sanity_rank_corr_head'))}, deletion {_f(res.get('deletion_auc'))}, ROAD "
            f"{_f(res.get('road_morf'))}/{_f(res.get('road_lerf'))} — {'passes' if not flags else '; '.join(flags)} "
            f"({time.perf_counter() - start:.1f}s)")
    return {"model": lm.name, "data": str(data_dir), "images": len(files), "pairs": len(pairs), "methods": results,
            "baseline": _rounded(baseline)}


def trust_entries(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The report's per-method numbers as ``method_trust`` entries (validated, ``None`` left out). Only methods
    as ``/explain`` runs them by name (no layer override, default parameters) are entries: the registry flags what a
    client gets when it asks for that method."""
    from .engine import METHODS

    return {name: MethodTrust.model_validate(v).model_dump(exclude_none=True) for name, v in report["methods"].items()
            if name in METHODS}


def format_evaluation(report: dict[str, Any]) -> str:
    """Markdown table: one row per method with its numbers and flags."""
    lines = [f"model `{report['model']}` · {report['data']} · {report['images']} images · {report['pairs']} "
             "(image, class) pairs", "",
             "| method | pointing | MaxBoxAcc | deletion ↓ | insertion ↑ | ROAD MoRF ↓ | ROAD LeRF ↑ | sanity ρ full / "
             "head | verdict |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, v in report["methods"].items():
        flags = trust_flags(name, MethodTrust.model_validate(v))
        verdict = "passes" if not flags else "; ".join(f.split(":")[0] for f in flags)
        lines.append(f"| {name} | {_f(v.get('pointing'))} | {_f(v.get('max_box_acc'))} | {_f(v.get('deletion_auc'))} | "
                     f"{_f(v.get('insertion_auc'))} | {_f(v.get('road_morf'))} | {_f(v.get('road_lerf'))} | "
                     f"{_f(v.get('sanity_rank_corr'))} / {_f(v.get('sanity_rank_corr_head'))} | {verdict} |")
    b = report["baseline"]
    lines += ["", f"random map: pointing {_f(b.get('pointing_random'))}, deletion {_f(b.get('deletion_auc_random'))}, "
                  f"ROAD {_f(b.get('road_morf_random'))} / {_f(b.get('road_lerf_random'))}"]
    return "\n".join(lines)


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    """4 decimals: what the registry stores (and what its textual edit verifies byte for byte)."""
    return {k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in d.items()}


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"
