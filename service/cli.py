"""``xaas`` command line: serve, demo data/training/evaluation, calibration, OpenAPI export.

predict/explain/localize/activations/filters/impression/dicomweb are aliases of the client's ``xaas-client`` commands.

(A little over our usual ~500 lines on purpose: one argparse tree and one small function per command, as in
MLServer's ``cli/main.py``; the work of each command lives in its own module — serve, demo, calibrate, evaluate,
audit — so what is here is flags and wiring.)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in CLIENT_COMMANDS:
        # Forwarded before parsing: argparse cannot hand an unknown option list to a sub-command verbatim.
        return _client_alias(argv)
    parser = argparse.ArgumentParser(prog="xaas", description="Explanation-as-a-service for image models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", help="interface (default XAAS_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default XAAS_PORT or 8000)")
    p.add_argument("--models", type=Path, help="models.yaml (default XAAS_MODELS or the shipped demo registry)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device policy (default XAAS_DEVICE or auto)")
    ray = p.add_argument_group("scale-out on Ray Serve (needs the ray extra: pip install 'xaas[ray]')")
    ray.add_argument("--ray", action="store_true",
                     help="serve through Ray Serve: start a local Ray cluster (or join --address) and deploy the app "
                          "as --replicas replicas, each a complete server; Ctrl-C or SIGTERM drains and removes it")
    ray.add_argument("--replicas", type=int, default=None, help="replicas of the app (default 1)")
    ray.add_argument("--gpus-per-replica", type=float, default=None,
                     help="GPUs each replica reserves; fractions share one (0.5: two replicas per GPU; default 0)")
    ray.add_argument("--cpus-per-replica", type=float, default=None,
                     help="CPUs each replica reserves (default XAAS_RAY_CPUS_PER_REPLICA or 1)")
    ray.add_argument("--address", default=None,
                     help="Ray cluster to join (e.g. auto, or ray://head:10001); default RAY_ADDRESS, else a new local "
                          "cluster")
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo-data", help="write a synthetic dataset with known boxes (PNGs + labels.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bias", action="store_true",
                   help="a biased set: every image with a star carries a corner marker (for `xaas audit`)")
    p.add_argument("--masks", action="store_true",
                   help="also write each object's exact mask (masks/00000_0.png, named by the object's 'mask')")
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("train-demo", help="train the demo CNN on synthetic data (CPU, a few minutes)")
    p.add_argument("--out", type=Path, default=None, help="weights file (default: the shipped file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--presentations", type=int, default=None,
                   help="training images shown (default: the shipped recipe; --bias: 16000)")
    p.add_argument("--bias", action="store_true",
                   help="train on the biased set of `xaas demo-data --bias` (default --out demo_cnn_bias.safetensors)")
    p.set_defaults(func=_train_demo)

    p = sub.add_parser("eval-demo", help="held-out mAP and exact-match of the demo model")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_eval_demo)

    p = sub.add_parser("train-demo-seg", help="train the demo segmentation model on synthetic shapes (CPU, minutes)")
    p.add_argument("--out", type=Path, default=None, help="weights file (default: the shipped file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped recipe)")
    p.set_defaults(func=_train_demo_seg)

    p = sub.add_parser("eval-demo-seg", help="held-out mIoU of the demo segmentation model")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_eval_demo_seg)

    p = sub.add_parser("train-demo-3d", help="train the demo 3-D model on synthetic volumes (CPU, minutes)")
    p.add_argument("--out", type=Path, default=None, help="weights file (default: the shipped file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped recipe)")
    p.set_defaults(func=_train_demo_3d)

    p = sub.add_parser("eval-demo-3d", help="held-out accuracy and 3-D Grad-CAM pointing of the demo 3-D model")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_eval_demo_3d)

    p = sub.add_parser("train-demo-mil", help="train the demo attention-MIL model and its whole-image CNN baseline "
                                              "on synthetic large images (CPU, minutes)")
    p.add_argument("--out", type=Path, default=None, help="weights file (default: the shipped file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped recipe)")
    p.set_defaults(func=_train_demo_mil)

    p = sub.add_parser("eval-demo-mil", help="held-out AUC and lesion localization of the demo MIL model's attention, "
                                             "beside the Grad-CAM of a whole-image CNN")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--size", type=int, default=512, help="image side in pixels (the model trained on 512)")
    p.set_defaults(func=_eval_demo_mil)

    p = sub.add_parser("demo-volume", help="write a synthetic volume as a DICOM series folder and a NIfTI file")
    p.add_argument("out", type=Path, help="folder to write series/ and volume.nii.gz into")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--index", type=int, default=0)
    p.set_defaults(func=_demo_volume)

    # calibrate, evaluate and audit read the same labelled folder with the same model choice
    labelled = argparse.ArgumentParser(add_help=False)
    labelled.add_argument("data_dir", type=Path, help="folder with labels.json and its images (see `xaas demo-data`)")
    labelled.add_argument("--model", default=None, help="registry name (default: the registry's default model)")
    labelled.add_argument("--models", type=Path, default=None,
                          help="models.yaml (default XAAS_MODELS or the shipped registry)")
    labelled.add_argument("--limit", type=int, default=None, help="use only the first N images")

    p = sub.add_parser("calibrate", parents=[labelled],
                       help="measure /localize on a labelled folder and pick its threshold (MaxBoxAcc)",
                       description="Sweep thresholds x methods on a folder in the demo-data format (labels.json with "
                                   "boxes), report box accuracy (IoU >= 0.5, largest component) per threshold, "
                                   "MaxBoxAcc and the best threshold; --write stores the winner in the model's "
                                   "registry entry.")
    p.add_argument("--methods", default="gradcam",
                   help="comma-separated methods; 'name@layer' overrides the layer, 'name:key=value' a parameter "
                        "(default gradcam)")
    p.add_argument("--thresholds", default="0.05:0.95:0.05", help="start:stop:step (inclusive) or a,b,c")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--write", nargs="?", const=True, default=None, metavar="MODELS_YAML",
                   help="write the best threshold and method into the model's entry of MODELS_YAML (default: the "
                        "--models file); comments and the rest of the file are kept")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="print the report as JSON instead of tables (or write it to PATH)")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("evaluate", parents=[labelled],
                       help="measure every method on a labelled folder for one model and store the results as its "
                            "method_trust (shown by /models/{name})",
                       description="Randomisation sanity, pointing and box accuracy, deletion/insertion and ROAD for "
                                   "each method on a folder in the demo-data format; writes them into the model's "
                                   "registry entry as method_trust (restart the service to serve them).")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods (default: the model's applicable one-pass methods)")
    p.add_argument("--sanity-pairs", type=int, default=20)
    p.add_argument("--faithfulness-pairs", type=int, default=30, help="pairs for deletion/insertion")
    p.add_argument("--road-pairs", type=int, default=10, help="pairs for ROAD (a sparse solve per fraction)")
    p.add_argument("--write", type=Path, default=None, metavar="MODELS_YAML",
                   help="write into this registry file instead of --models (written unless --no-write)")
    p.add_argument("--no-write", action="store_true", help="only report")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="print the report as JSON instead of a table (or write it to PATH)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("audit", parents=[labelled],
                       help="where the model looks, per class, over a labelled folder (dataset bias): JSON + HTML "
                            "report",
                       description="Explain every (image, class) pair of a folder in the demo-data format; per class "
                                   "the share of map mass on the object, in the background and in each border band, "
                                   "the pointing rate and flags; writes audit.json and a self-contained audit.html.")
    p.add_argument("--weights", type=Path, default=None,
                   help="other weights for the model's architecture (e.g. the biased demo model)")
    p.add_argument("--method", default="gradcam", help="method, 'name@layer' or 'name:key=value' (default gradcam)")
    p.add_argument("--border", type=float, default=0.1, help="border band width as a fraction of the side")
    p.add_argument("--no-boxes", action="store_true",
                   help="boxless mode even when labels.json has boxes (automatic when objects have none)")
    p.add_argument("--out", type=Path, default=Path("audit"), help="folder for audit.json and audit.html")
    p.set_defaults(func=_audit)

    p = sub.add_parser("export-openapi", help="write the OpenAPI document")
    p.add_argument("--out", type=Path, default=Path("openapi/openapi.json"))
    p.set_defaults(func=_export_openapi)

    _add_client_aliases(sub)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"xaas: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .config import Settings
    from .logs import setup_logging
    from .registry import read_registry_file

    given = {"host": args.host, "port": args.port, "models": args.models, "device": args.device}
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = Settings(**overrides)
    setup_logging(settings.log_level)
    read_registry_file(Path(settings.models))  # fail fast, in one line, before binding the port
    ray_only = {"--replicas": args.replicas, "--gpus-per-replica": args.gpus_per_replica,
                "--cpus-per-replica": args.cpus_per_replica, "--address": args.address}
    if args.ray:
        return _serve_ray(settings, args)
    given_ray = [flag for flag, value in ray_only.items() if value is not None]
    if given_ray:
        print(f"xaas: {', '.join(given_ray)} only apply with --ray", file=sys.stderr)
        return 2
    if settings.job_store == "redis":  # likewise: an unreachable Redis is one line now, not a failed start-up later
        from .redis_jobs import RedisJobStore

        RedisJobStore.from_settings(settings).close()

    failure: list[str] = []
    server: uvicorn.Server | None = None

    def on_load_failure(message: str) -> None:
        failure.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=on_load_failure)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            timeout_graceful_shutdown=int(settings.shutdown_grace) + 5)
    server = uvicorn.Server(config)
    server.run()
    if failure:
        print(f"xaas: configuration error: {failure[0]}", file=sys.stderr)
        return 3
    return 0


def _serve_ray(settings, args: argparse.Namespace) -> int:
    """Start (or join) a Ray cluster, deploy the app, wait for Ctrl-C/SIGTERM, then remove it gracefully: Serve stops
    routing to the replicas, lets their ongoing requests finish and runs each one's drain (XAAS_SHUTDOWN_GRACE)."""
    import os
    import signal
    import threading

    replicas = 1 if args.replicas is None else args.replicas
    gpus = 0.0 if args.gpus_per_replica is None else args.gpus_per_replica
    if replicas < 1 or gpus < 0 or (args.cpus_per_replica is not None and args.cpus_per_replica < 0):
        print("xaas: --replicas must be >= 1, --gpus-per-replica and --cpus-per-replica >= 0", file=sys.stderr)
        return 2
    try:
        import ray
        from ray import serve

        from .ray_app import APP_NAME, build_app, serve_limits
    except ImportError as exc:
        print(f"xaas: --ray needs Ray Serve: pip install 'xaas[ray]' ({exc})", file=sys.stderr)
        return 2

    address = args.address or os.environ.get("RAY_ADDRESS") or None
    limits = serve_limits(settings, replicas)
    if address is None:
        # Serve's own plain-text errors (its 429, 408, 503) as problem+json: a hook its proxies read from their
        # environment, which the cluster started here inherits. A joined cluster needs it set where it was started.
        from .ray_proxy import CALLBACK

        os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", CALLBACK)
    ray.init(address=address, namespace="xaas", log_to_driver=True)
    try:
        # http_options belong to the cluster's Serve instance: on a cluster where Serve already runs they stay as
        # they are (Serve warns), so set request_timeout_s there too (deploy/ray/serve.yaml).
        serve.start(http_options={"host": settings.host, "port": settings.port,
                                  "request_timeout_s": limits.request_timeout_s})
        app = build_app(settings, replicas=replicas, gpus_per_replica=gpus, cpus_per_replica=args.cpus_per_replica)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        print(f"xaas: {replicas} replica(s) on Ray Serve at http://{settings.host}:{settings.port} "
              f"(max_ongoing_requests {limits.max_ongoing_requests}, max_queued_requests "
              f"{limits.max_queued_requests}); Ctrl-C or SIGTERM to drain and stop", file=sys.stderr, flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        print("xaas: draining the replicas", file=sys.stderr, flush=True)
        serve.delete(APP_NAME)
        if address is None:
            serve.shutdown()
    finally:
        ray.shutdown()
    return 0


#: Training images of ``xaas train-demo --bias``: the marker is learnt long before the shapes (minutes on 2 cores).
BIAS_PRESENTATIONS = 16_000


def _demo_data(args: argparse.Namespace) -> int:
    from .demo.data import generate_dataset

    path = generate_dataset(args.out, args.n, args.seed, bias=args.bias, masks=args.masks)
    print(f"wrote {args.n} {'biased ' if args.bias else ''}images{', their masks' if args.masks else ''} and "
          f"labels.json to {path}")
    return 0


def _train_demo(args: argparse.Namespace) -> int:
    from .demo import train

    kwargs: dict = {"seed": args.seed, "bias": args.bias}
    if args.presentations:
        kwargs["presentations"] = args.presentations
    elif args.bias:
        kwargs["presentations"] = BIAS_PRESENTATIONS
    # A biased model never overwrites the shipped weights by default.
    out = args.out or (Path("demo_cnn_bias.safetensors") if args.bias else train.DEFAULT_WEIGHTS)
    result = train.train_demo(out, **kwargs)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _eval_demo(args: argparse.Namespace) -> int:
    from .demo import train

    kwargs = {"n": args.n}
    if args.seed is not None:
        kwargs["seed"] = args.seed
    result = train.evaluate_demo(args.weights or train.DEFAULT_WEIGHTS, **kwargs)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _train_demo_seg(args: argparse.Namespace) -> int:
    from .demo import segmentation

    return _train(segmentation.train_demo_seg, segmentation.DEFAULT_SEG_WEIGHTS, args)


def _eval_demo_seg(args: argparse.Namespace) -> int:
    from .demo import segmentation

    return _evaluate_demo(segmentation.evaluate_demo_seg, args)


def _train_demo_3d(args: argparse.Namespace) -> int:
    from .demo import volume_model

    return _train(volume_model.train_demo_volume, volume_model.DEFAULT_VOLUME_WEIGHTS, args)


def _eval_demo_3d(args: argparse.Namespace) -> int:
    from .demo import volume_model

    return _evaluate_demo(volume_model.evaluate_demo_volume, args)


def _train_demo_mil(args: argparse.Namespace) -> int:
    from .demo import mil

    return _train(mil.train_demo_mil, mil.DEFAULT_MIL_WEIGHTS, args)


def _eval_demo_mil(args: argparse.Namespace) -> int:
    from .demo import mil

    return _evaluate_demo(functools.partial(mil.evaluate_demo_mil, size=args.size), args)


def _train(train: Any, default_out: Path, args: argparse.Namespace) -> int:
    """A demo model's training command: ``--out``, ``--seed``, ``--steps`` (else the shipped recipe's)."""
    kwargs: dict = {"seed": args.seed}
    if args.steps:
        kwargs["steps"] = args.steps
    print(json.dumps(train(args.out or default_out, **kwargs), indent=2, default=str))
    return 0


def _evaluate_demo(evaluate: Any, args: argparse.Namespace) -> int:
    """A demo model's held-out evaluation: ``--weights``, ``--n``, ``--seed`` (else the model's evaluation seed)."""
    kwargs: dict = {"n": args.n}
    if args.seed is not None:
        kwargs["seed"] = args.seed
    print(json.dumps(evaluate(args.weights, **kwargs), indent=2, default=str))
    return 0


def _demo_volume(args: argparse.Namespace) -> int:
    from .demo.volume_model import VOLUME_CLASSES, volume_sample
    from .demo.volumes import dicom_series, nifti_file

    voxels, mask, label = volume_sample(args.seed, args.index)
    series = args.out / "series"
    series.mkdir(parents=True, exist_ok=True)
    for k, blob in enumerate(dicom_series(voxels)):
        (series / f"slice{k:03d}.dcm").write_bytes(blob)
    (args.out / "volume.nii.gz").write_bytes(nifti_file(voxels))
    print(json.dumps({"class": VOLUME_CLASSES[label], "series": str(series), "slices": int(voxels.shape[0]),
                      "nifti": str(args.out / "volume.nii.gz"), "object_voxels": int(mask.sum())}, indent=2))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import os

    from .calibrate import calibrate, format_report, update_registry_entry
    from .config import DEFAULT_MODELS_FILE
    from .errors import XaasError

    models = args.models or Path(os.environ.get("XAAS_MODELS") or DEFAULT_MODELS_FILE)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    as_json = args.json is not None
    try:
        report = calibrate(args.data_dir, models_file=models, model=args.model, methods=methods,
                           thresholds=args.thresholds, batch_size=args.batch_size, limit=args.limit,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError, XaasError) as exc:
        print(f"xaas calibrate: {getattr(exc, 'detail', None) or exc}", file=sys.stderr)
        return 2
    if args.write is not None:
        target = models if args.write is True else Path(args.write)
        best = report["best_writable"]
        if best is None:
            print("xaas calibrate: no evaluated method can be written (layer overrides, parameters and unregistered "
                  "methods cannot be set in models.yaml); nothing written", file=sys.stderr)
            return 1
        method = best["method"]
        update_registry_entry(target, report["model"], {"localize_threshold": best["threshold"],
                                                        "localize_method": method})
        report["written"] = {"file": str(target), "localize_threshold": best["threshold"], "localize_method": method}
        print(f"wrote localize_threshold: {best['threshold']:g}, localize_method: {method} for model "
              f"'{report['model']}' in {target}", file=sys.stderr)
        if best.get("sanity"):
            print(f"note: {method} {best['sanity']}", file=sys.stderr)
    return _print_report(report, args.json if as_json else None, format_report)


def _print_report(report: dict, json_to: str | None, as_table: Any) -> int:
    """A command's report: JSON to stdout (``-``) or a file, else its table."""
    if json_to is None:
        print(as_table(report))
    elif json_to == "-":
        print(json.dumps(report, indent=2))
    else:
        Path(json_to).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import os

    from .calibrate import load_model, update_registry_entry
    from .config import DEFAULT_MODELS_FILE
    from .errors import XaasError
    from .evaluate import evaluate, format_evaluation, trust_entries

    models = args.models or Path(os.environ.get("XAAS_MODELS") or DEFAULT_MODELS_FILE)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    try:
        loaded = load_model(models, args.model)
        report = evaluate(args.data_dir, loaded=loaded, methods=methods, limit=args.limit,
                          sanity_pairs=args.sanity_pairs, faithfulness_pairs=args.faithfulness_pairs,
                          road_pairs=args.road_pairs, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError, XaasError) as exc:
        print(f"xaas evaluate: {getattr(exc, 'detail', None) or exc}", file=sys.stderr)
        return 2
    if not args.no_write:
        target = args.write or models
        entries = trust_entries(report)
        if entries:
            # Methods measured earlier and not now keep their numbers.
            merged = {**{k: v.model_dump(exclude_none=True) for k, v in loaded.spec.method_trust.items()}, **entries}
            update_registry_entry(target, report["model"], {"method_trust": merged})
            report["written"] = {"file": str(target), "methods": sorted(entries)}
            print(f"wrote method_trust for {', '.join(sorted(entries))} of model '{report['model']}' in {target}",
                  file=sys.stderr)
    return _print_report(report, args.json, format_evaluation)


def _audit(args: argparse.Namespace) -> int:
    import os

    from .audit import audit, public
    from .audit_report import format_audit, render_html
    from .calibrate import load_model
    from .config import DEFAULT_MODELS_FILE
    from .errors import XaasError

    models = args.models or Path(os.environ.get("XAAS_MODELS") or DEFAULT_MODELS_FILE)
    try:
        loaded = load_model(models, args.model)
        if args.weights is not None:
            from safetensors.torch import load_file

            loaded.module.load_state_dict(load_file(str(args.weights)))
        report = audit(args.data_dir, loaded=loaded, method=args.method, limit=args.limit, border=args.border,
                       boxless=args.no_boxes, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError, RuntimeError, XaasError) as exc:
        print(f"xaas audit: {getattr(exc, 'detail', None) or exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "audit.json").write_text(json.dumps(public(report), indent=1) + "\n")
    (args.out / "audit.html").write_text(render_html(report), encoding="utf-8")
    print(format_audit(report))
    print(f"wrote {args.out / 'audit.json'} and {args.out / 'audit.html'}", file=sys.stderr)
    return 0


def _export_openapi(args: argparse.Namespace) -> int:
    from .openapi import export_openapi

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(export_openapi())
    print(f"wrote {args.out}")
    return 0


# --- client commands: aliases of xaas-client ---------------------------------------------------------------------

# Implemented once, in the client package (xaas_client.cli), which installs without torch; `xaas predict ...` forwards
# its argv there unchanged so both spellings behave the same.
CLIENT_COMMANDS = ("predict", "explain", "localize", "activations", "filters", "impression", "dicomweb")


def _add_client_aliases(sub: argparse._SubParsersAction) -> None:
    """List the aliases in ``xaas --help``; :func:`main` forwards them before parsing, so these parsers stay empty."""
    try:
        from xaas_client.cli import COMMANDS as summaries
    except ImportError:
        summaries = {}
    for name in CLIENT_COMMANDS:
        summary = f" {summaries[name]}" if name in summaries else ""
        sub.add_parser(name, add_help=False, help=f"(alias of xaas-client {name}){summary}")


def _client_alias(argv: list[str]) -> int:
    """Run ``xaas-client <argv>``: same flags, output and exit codes; usage lines say ``xaas``."""
    try:
        from xaas_client.cli import main as client_main
    except ImportError as exc:
        print(f"xaas: 'xaas {argv[0]}' is an alias of 'xaas-client {argv[0]}', which needs the client package: "
              f"pip install clients/python ({exc})", file=sys.stderr)
        return 2
    return client_main(argv, prog="xaas")


if __name__ == "__main__":
    sys.exit(main())
