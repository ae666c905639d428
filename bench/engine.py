"""Engine speed: each method's time relative to a plain forward pass, side by side with grad-cam and captum.

For every model and batch size, each repetition round times a plain forward pass (``torch.inference_mode()``) and
then every implementation of every method once, so that all medians come from the same stretch of (possibly
shared) CPU time. Ratios are ``median(explanation) / median(forward)``; one warm-up call precedes timing.

Our engine runs on the model as the registry serves it (eval, parameters frozen). grad-cam needs parameters that
require grad (its gradient hooks sit on tensors), so the reference libraries run on an unfrozen copy, i.e. the way
they are normally used on a torchvision model; captum's input-gradient methods run on the frozen model.

Usage::

    python bench/engine.py                       # demo (if importable), resnet18, resnet50 at 224 px; batch 1 and 16
    python bench/engine.py --quick               # 3 repeats, cheaper settings for occlusion / integrated gradients
    python bench/engine.py --models resnet18 --batches 1,4 --repeats 7 --methods gradcam,guided-backprop

Goals on CPU: Grad-CAM <= 1.2x a forward pass and >= 3x faster than grad-cam's GradCAM; guided backprop <= 2.5x.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.engine import METHODS, find_target_layer
from service.engine import base as engine_base

DEFAULT_METHODS = ("gradcam", "gradcam-pp", "layercam", "guided-backprop", "saliency", "integrated-gradients",
                   "occlusion")


def build_model(name: str) -> tuple[nn.Module, int, str] | None:
    """(model, input side, task) or None when unavailable."""
    if name == "demo":
        try:
            from service.demo.model import DEMO_INPUT_SIZE, create_demo_model
        except Exception as exc:  # noqa: BLE001 - the demo is optional here
            print(f"# skipping demo model: {type(exc).__name__}: {exc}")
            return None
        return create_demo_model().eval().requires_grad_(False), DEMO_INPUT_SIZE[0], "multilabel"
    import torchvision

    return getattr(torchvision.models, name)(weights=None).eval().requires_grad_(False), 224, "multiclass"


def method_params(method: str, args: argparse.Namespace, size: int) -> dict:
    if method == "integrated-gradients":
        return {"steps": args.ig_steps}
    if method == "occlusion":
        window = max(1, size // args.occlusion_grid)
        return {"window": window, "stride": window}
    if method == "smoothgrad":
        return {"samples": args.ig_steps}
    return {}


def references(method: str, model: nn.Module, trainable: nn.Module, layer: str, params: dict, batch: int
               ) -> dict[str, Callable[[torch.Tensor, torch.Tensor], object]]:
    """Callables ``f(x, targets)`` of the reference libraries for ``method`` (those that implement it)."""
    out: dict[str, Callable] = {}
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        pgc = None
    try:
        import captum.attr as ca
    except ImportError:
        ca = None
    layer_module = trainable.get_submodule(layer)
    pkg = {"gradcam": "GradCAM", "gradcam-pp": "GradCAMPlusPlus", "layercam": "LayerCAM", "hirescam": "HiResCAM",
           "xgradcam": "XGradCAM"}
    if pgc is not None and method in pkg:
        cls = getattr(pgc, pkg[method])

        def run_pkg(x, t, cls=cls):
            with cls(model=trainable, target_layers=[layer_module]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])

        out["grad-cam"] = run_pkg
    if ca is None:
        return out
    if method == "gradcam":
        lgc = ca.LayerGradCam(trainable, layer_module)
        out["captum"] = lambda x, t: lgc.attribute(x, target=t, relu_attributions=True)
    elif method == "guided-backprop":
        gb = ca.GuidedBackprop(model)
        out["captum"] = lambda x, t: gb.attribute(x.clone(), target=t)
    elif method == "saliency":
        sal = ca.Saliency(model)
        out["captum"] = lambda x, t: sal.attribute(x.clone(), target=t, abs=True)
    elif method == "integrated-gradients":
        ig = ca.IntegratedGradients(model)
        out["captum"] = lambda x, t: ig.attribute(x, target=t, n_steps=params["steps"], method="riemann_middle",
                                                  internal_batch_size=engine_base.BACKWARD_CHUNK)
    elif method == "occlusion":
        occ = ca.Occlusion(model)
        w, s = params["window"], params["stride"]
        per_eval = max(1, engine_base.FORWARD_CHUNK // batch)
        out["captum"] = lambda x, t: occ.attribute(x, target=t, sliding_window_shapes=(x.shape[1], w, w),
                                                   strides=(x.shape[1], s, s), baselines=0,
                                                   perturbations_per_eval=per_eval)
    return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    built = build_model(name)
    if built is None:
        return []
    model, size, task = built
    trainable = copy.deepcopy(model).requires_grad_(True)
    layer = find_target_layer(model, (3, size, size))
    rows = []
    for batch in args.batches:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=gen)
        with torch.inference_mode():
            classes = model(x[:1]).shape[1]
        t = torch.randint(0, classes, (batch,), generator=gen)

        def forward(x=x):
            with torch.inference_mode():
                model(x)

        for method in args.methods:
            if args.quick and batch > 1 and method in ("integrated-gradients", "occlusion") \
                    and name not in ("demo", "resnet18"):
                continue  # minutes per repeat on 2 cores; covered at batch 1 and on the smaller models
            explainer = METHODS[method]
            params = method_params(method, args, size)
            impls: dict[str, Callable[[], object]] = {
                "xaas": lambda e=explainer, p=params, x=x, t=t: e.explain(model, x, t, layer=layer, task=task, **p)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for lib, fn in references(method, model, trainable, layer, params, batch).items():
                    impls[lib] = lambda fn=fn, x=x, t=t: fn(x, t)
                times: dict[str, list[float]] = {"forward": []}
                failed: dict[str, str] = {}
                for key, fn in impls.items():  # warm-up (allocator, oneDNN primitives)
                    try:
                        fn()
                    except Exception as exc:  # noqa: BLE001 - a reference library may not support the model
                        failed[key] = f"{type(exc).__name__}"
                forward()
                for _ in range(args.repeats):
                    times["forward"].append(timed(forward))
                    for key, fn in impls.items():
                        if key not in failed:
                            times.setdefault(key, []).append(timed(fn))
            fwd, fwd_best = statistics.median(times["forward"]), min(times["forward"])
            row = {"model": name, "batch": batch, "method": method, "forward_ms": fwd * 1e3, "layer": layer,
                   "params": params}
            for key in ("xaas", "grad-cam", "captum"):
                if key in times:
                    med = statistics.median(times[key])
                    row[f"{key}_ms"], row[f"{key}_x"] = med * 1e3, med / fwd
                    row[f"{key}_best_x"] = min(times[key]) / fwd_best
                elif key in failed:
                    row[f"{key}_ms"] = failed[key]
            rows.append(row)
            print_row(row)
            sys.stdout.flush()
    return rows


HEADER = (f"{'model':<10} {'B':>3} {'method':<22} {'fwd ms':>8} {'xaas ms':>9} {'xaas/fwd':>8} {'(best)':>6} "
          f"{'grad-cam ms':>11} {'/fwd':>6} {'captum ms':>10} {'/fwd':>6} {'vs grad-cam':>11} {'vs captum':>9}")


def _cell(row: dict, key: str, width: int) -> str:
    v = row.get(key)
    if v is None:
        return f"{'-':>{width}}"
    if isinstance(v, str):
        return f"{v[:width]:>{width}}"
    return f"{v:>{width}.{1 if key.endswith('_ms') else 2}f}"


def print_row(row: dict) -> None:
    def speed(key: str, width: int) -> str:
        ref = row.get(key)
        return f"{ref / row['xaas_ms']:>{width - 1}.1f}x" if isinstance(ref, float) else f"{'-':>{width}}"

    print(f"{row['model']:<10} {row['batch']:>3} {row['method']:<22} {row['forward_ms']:>8.1f} "
          f"{_cell(row, 'xaas_ms', 9)} {_cell(row, 'xaas_x', 8)} {_cell(row, 'xaas_best_x', 6)} "
          f"{_cell(row, 'grad-cam_ms', 11)} "
          f"{_cell(row, 'grad-cam_x', 6)} {_cell(row, 'captum_ms', 10)} {_cell(row, 'captum_x', 6)} "
          f"{speed('grad-cam_ms', 11)} {speed('captum_ms', 9)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,resnet18,resnet50", help="comma list: demo and torchvision names")
    ap.add_argument("--batches", default="1,16", help="comma list of batch sizes")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma list of method names")
    ap.add_argument("--ig-steps", type=int, default=16, help="integrated-gradients steps (smoothgrad samples)")
    ap.add_argument("--occlusion-grid", type=int, default=4, help="occlusion: window = stride = size / grid")
    ap.add_argument("--quick", action="store_true",
                    help="3 repeats, 8 IG steps; skip IG/occlusion at batch > 1 on resnet50-sized models")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    if args.quick:
        args.repeats = min(args.repeats, 3)
        args.ig_steps = min(args.ig_steps, 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, repeats={args.repeats}, "
          f"IG steps={args.ig_steps}, occlusion grid={args.occlusion_grid}x{args.occlusion_grid} (window = stride), "
          f"FORWARD_CHUNK={engine_base.FORWARD_CHUNK}, BACKWARD_CHUNK={engine_base.BACKWARD_CHUNK}")
    print("# ratios: median(method) / median(plain forward under inference_mode), same rounds; (best): min / min, "
          "less sensitive to CPU contention; vs X: median(X) / median(xaas)")
    print(HEADER)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        bench_model(name, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
