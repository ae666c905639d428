"""``xaas`` command line: serve, demo data/training/evaluation, OpenAPI export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xaas", description="Explanation-as-a-service for image models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", help="interface (default XAAS_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default XAAS_PORT or 8000)")
    p.add_argument("--models", type=Path, help="models.yaml (default XAAS_MODELS or the shipped demo registry)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device policy (default XAAS_DEVICE or auto)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo-data", help="write a synthetic dataset with known boxes (PNGs + labels.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("train-demo", help="train the demo CNN on synthetic data (CPU, a few minutes)")
    p.add_argument("--out", type=Path, default=None, help="weights file (default: the shipped file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--presentations", type=int, default=None, help="training images shown (default: the shipped recipe)")
    p.set_defaults(func=_train_demo)

    p = sub.add_parser("eval-demo", help="held-out mAP and exact-match of the demo model")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_eval_demo)

    p = sub.add_parser("calibrate", help="measure /localize on a labelled folder and pick its threshold (MaxBoxAcc)",
                       description="Sweep thresholds x methods on a folder in the demo-data format (labels.json with "
                                   "boxes), report box accuracy (IoU >= 0.5, largest component) per threshold, MaxBoxAcc "
                                   "and the best threshold; --write stores the winner in the model's registry entry.")
    p.add_argument("data_dir", type=Path, help="folder with labels.json and its images (see `xaas demo-data`)")
    p.add_argument("--model", default=None, help="registry name (default: the registry's default model)")
    p.add_argument("--models", type=Path, default=None, help="models.yaml (default XAAS_MODELS or the shipped registry)")
    p.add_argument("--methods", default="gradcam",
                   help="comma-separated methods; 'name@layer' overrides the layer, 'name:key=value' a parameter "
                        "(default gradcam)")
    p.add_argument("--thresholds", default="0.05:0.95:0.05", help="start:stop:step (inclusive) or a,b,c")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--write", nargs="?", const=True, default=None, metavar="MODELS_YAML",
                   help="write the best threshold and method into the model's entry of MODELS_YAML (default: the "
                        "--models file); comments and the rest of the file are kept")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="print the report as JSON instead of tables (or write it to PATH)")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("export-openapi", help="write the OpenAPI document")
    p.add_argument("--out", type=Path, default=Path("openapi/openapi.json"))
    p.set_defaults(func=_export_openapi)

    _add_client_commands(sub)

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

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "models": args.models, "device": args.device}.items() if v is not None}
    settings = Settings(**overrides)
    setup_logging(settings.log_level)
    read_registry_file(Path(settings.models))  # fail fast, in one line, before binding the port

    failure: list[str] = []
    server: uvicorn.Server | None = None

    def on_load_failure(message: str) -> None:
        failure.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=on_load_failure)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, timeout_graceful_shutdown=int(settings.shutdown_grace) + 5)
    server = uvicorn.Server(config)
    server.run()
    if failure:
        print(f"xaas: configuration error: {failure[0]}", file=sys.stderr)
        return 3
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from .demo.data import generate_dataset

    path = generate_dataset(args.out, args.n, args.seed)
    print(f"wrote {args.n} images and labels.json to {path}")
    return 0


def _train_demo(args: argparse.Namespace) -> int:
    from .demo import train

    kwargs = {"seed": args.seed}
    if args.presentations:
        kwargs["presentations"] = args.presentations
    out = args.out or train.DEFAULT_WEIGHTS
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
    if as_json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    else:
        print(format_report(report))
    return 0


def _export_openapi(args: argparse.Namespace) -> int:
    from .openapi import export_openapi

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(export_openapi())
    print(f"wrote {args.out}")
    return 0


# --- client commands: predict / explain / localize against a running server, through xaas_client -------------------

CLIENT_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".dcm", ".dicom"})
EXIT_REQUEST_ERROR, EXIT_USAGE, EXIT_CONNECT = 1, 2, 3
_RESERVED_PARAMS = frozenset({"model", "target", "top_k", "outputs", "method", "threshold", "all_components", "min_area"})


def _add_client_commands(sub: argparse._SubParsersAction) -> None:
    """``xaas predict|explain|localize``: the service's own client, so a shell user needs no curl incantations."""
    import os

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("image", type=Path, metavar="IMAGE_OR_FOLDER", help="an image file, or a folder of images")
    common.add_argument("--server", default=os.environ.get("XAAS_URL") or "http://127.0.0.1:8000",
                        help="service URL (default $XAAS_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="sent as 'Authorization: Bearer' (default $XAAS_API_KEY)")
    common.add_argument("--model", help="registry name (default: the server's default model)")
    common.add_argument("--target", action="append", type=_cli_target, metavar="T",
                        help="class index or label; repeatable")
    common.add_argument("--top-k", type=int, metavar="K", help="without --target: the K best classes")
    common.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    common.add_argument("--retries", type=int, default=3, help="retries on 429/503/connect failures (default 3)")
    common.add_argument("--json", action="store_true", help="print the raw JSON response(s) (JSON Lines for a folder)")

    p = sub.add_parser("predict", parents=[common], help="classify an image or a folder of images (running server)")
    p.set_defaults(func=_client_command, endpoint="predict")

    p = sub.add_parser("explain", parents=[common], help="explain an image or a folder of images (running server)")
    p.add_argument("--method", default="gradcam", help="explanation method (default gradcam; see GET /methods)")
    p.add_argument("--param", action="append", default=[], type=_cli_param, metavar="NAME=VALUE",
                   help="a method parameter, e.g. window=16; repeatable")
    p.add_argument("--out", type=Path, help="write the first explanation's heatmap PNG here; for a folder input, "
                                            "a folder receiving <name>.heatmap.png files")
    p.add_argument("--overlay", action="store_true", help="with --out: write the overlay (heatmap over the image)")
    p.set_defaults(func=_client_command, endpoint="explain")

    p = sub.add_parser("localize", parents=[common], help="boxes for an image or a folder of images (running server)")
    p.add_argument("--method", help="heatmap method (default: the server's, gradcam)")
    p.add_argument("--threshold", type=float, help="fraction of the map's maximum (default: the server's)")
    p.add_argument("--all-components", action="store_true", default=None, help="box every region, not the largest")
    p.add_argument("--min-area", type=int, help="with --all-components: smallest region kept, in pixels")
    p.add_argument("--param", action="append", default=[], type=_cli_param, metavar="NAME=VALUE",
                   help="a method parameter; repeatable")
    p.set_defaults(func=_client_command, endpoint="localize")

    _add_feature_commands(sub)


def _cli_target(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _cli_param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if name.strip() in _RESERVED_PARAMS:
        raise argparse.ArgumentTypeError(f"{name!r} has its own option (--{name.strip().replace('_', '-')})")
    return name.strip(), value


class _Progress:
    """A minimal progress bar on stderr, drawn only on a terminal (no tqdm dependency, no noise in logs/pipes)."""

    def __init__(self, total: int, stream=None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = total > 1 and self.stream.isatty()

    def update(self, done: int, label: str = "") -> None:
        if self.enabled:
            filled = round(24 * done / self.total)
            self.stream.write(f"\r\033[K[{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total} {label}"[:200])
            self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _image_files(target: Path) -> list[Path]:
    """The image itself, or the folder's image files (sorted, not recursive, skipping our own outputs)."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise FileNotFoundError(f"no such file or folder: {target}")
    files = sorted(p for p in target.iterdir()
                   if p.is_file() and p.suffix.lower() in CLIENT_IMAGE_SUFFIXES and not p.name.startswith(".")
                   and not p.name.endswith((".heatmap.png", ".overlay.png")))
    if not files:
        raise FileNotFoundError(f"no image files in folder {target}")
    return files


def _client_command(args: argparse.Namespace) -> int:
    try:
        from xaas_client import Client, XaasConnectionError, XaasError
    except ImportError:
        print("xaas: this command needs the client package: pip install -e clients/python", file=sys.stderr)
        return EXIT_USAGE
    try:
        files = _image_files(args.image)
    except FileNotFoundError as exc:
        print(f"xaas: {exc}", file=sys.stderr)
        return EXIT_USAGE
    folder = args.image.is_dir()
    out: Path | None = getattr(args, "out", None)
    if out is not None and folder:
        if out.exists() and not out.is_dir():
            print(f"xaas: --out must be a folder when explaining a folder: {out}", file=sys.stderr)
            return EXIT_USAGE
        out.mkdir(parents=True, exist_ok=True)
    status = 0
    progress = _Progress(len(files))
    with Client(args.server, api_key=args.api_key, timeout=args.timeout, retries=max(0, args.retries)) as client:
        for done, path in enumerate(files):
            progress.update(done, path.name)
            where = f"{path.name}: " if folder else ""
            try:
                result = _client_request(client, args, path)
            except XaasConnectionError as exc:
                progress.clear()
                print(f"xaas: cannot connect to {args.server}: {exc.detail}", file=sys.stderr)
                return EXIT_CONNECT
            except XaasError as exc:
                progress.clear()
                head = f"{exc.status} {exc.title}: " if exc.status else ""
                print(f"xaas: {where}{head}{exc.detail}", file=sys.stderr)
                status = EXIT_REQUEST_ERROR
                continue
            except OSError as exc:
                progress.clear()
                print(f"xaas: {where}cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
                status = EXIT_USAGE if not folder else EXIT_REQUEST_ERROR
                continue
            progress.clear()
            if args.json:
                body = result.to_json()
                print(json.dumps({"file": path.name, "response": body}) if folder else json.dumps(body, indent=2))
            else:
                print(_client_table(args.endpoint, path.name, result))
            if out is not None:
                into_folder = folder or out.is_dir()
                name = f"{path.stem}.{'overlay' if args.overlay else 'heatmap'}.png"
                _write_map(result, out / name if into_folder else out, overlay=args.overlay)
        progress.update(len(files))
        progress.clear()
    return status


def _client_request(client, args: argparse.Namespace, path: Path):
    common = {"model": args.model, "target": args.target, "top_k": args.top_k}
    if args.endpoint == "predict":
        return client.predict(path, **common)
    params: dict[str, list[str]] = {}
    for name, value in args.param:
        params.setdefault(name, []).append(value)
    if args.endpoint == "explain":
        outputs = ["heatmap", "overlay"] if args.overlay else ["heatmap"]
        return client.explain(args.method, path, outputs=outputs, **common, **params)
    return client.localize(path, method=args.method, threshold=args.threshold, all_components=args.all_components,
                           min_area=args.min_area, **common, **params)


def _write_map(result, path: Path, *, overlay: bool) -> None:
    if not result.explanations:
        print(f"xaas: no explanation to write to {path}", file=sys.stderr)
        return
    first = result.explanations[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(first.overlay_png() if overlay else first.heatmap_png())
    print(f"wrote {path}", file=sys.stderr)


def _client_table(endpoint: str, name: str, result) -> str:
    """A readable, aligned table of one response."""
    size = f"{result.image.width}x{result.image.height}"
    if endpoint == "predict":
        title = f"{name}: {result.model} ({result.task}), {size}"
        header = ["index", "label", "score"]
        rows = [[str(p.index), p.label, f"{p.score:.4f}"] for p in result.predictions]
    elif endpoint == "explain":
        layer = f", layer {result.layer}" if result.layer else ""
        title = f"{name}: {result.method} on {result.model}{layer}, {size}"
        header = ["index", "label", "score", "map"]
        rows = [[str(e.index), e.label, f"{e.score:.4f}", "empty" if e.empty else ("non-finite" if e.nonfinite else "")]
                for e in result.explanations]
    else:
        title = f"{name}: {result.method} boxes on {result.model} (threshold {result.threshold:g}), {size}"
        header = ["index", "label", "score", "x0", "y0", "x1", "y1"]
        rows = [[str(b.index), b.label, f"{b.score:.4f}", *map(str, b.box)] for b in result.boxes]
    if not rows:
        return f"{title}\n  (none)"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    text_columns = {"label", "map"}  # left-aligned; numbers are right-aligned

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.ljust(w) if h in text_columns else c.rjust(w)
                                for h, c, w in zip(header, cells, widths)).rstrip()

    return "\n".join([title, line(header), *map(line, rows)])



# --- feature commands: activations / filters / impression against a running server, through xaas_client ------------

def _add_feature_commands(sub: argparse._SubParsersAction) -> None:
    """``xaas activations|filters|impression``: feature visualisation through the client, like predict/explain."""
    import os

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=os.environ.get("XAAS_URL") or "http://127.0.0.1:8000",
                        help="service URL (default $XAAS_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", help="sent as 'Authorization: Bearer' (default $XAAS_API_KEY)")
    common.add_argument("--model", help="registry name (default: the server's default model)")
    common.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    common.add_argument("--retries", type=int, default=3, help="retries on 429/503/connect failures (default 3)")
    common.add_argument("--json", action="store_true", help="print the raw JSON response")

    p = sub.add_parser("activations", parents=[common], help="a layer's activations for an image (running server)")
    p.add_argument("image", type=Path, metavar="IMAGE", help="an image file")
    p.add_argument("--layer", help="layer with a spatial output (default: the model's target layer)")
    p.add_argument("--top", type=int, help="channels in the grid, highest mean first (default: the server's, 16)")
    p.add_argument("--channel", type=int, help="one channel at native resolution instead of the grid")
    p.add_argument("--out", type=Path, help="write the grid PNG (or with --channel, the channel PNG) here")
    p.set_defaults(func=_feature_command, endpoint="activations")

    p = sub.add_parser("filters", parents=[common], help="a convolution layer's filters as a grid (running server)")
    p.add_argument("--layer", help="convolution layer (default: the first one)")
    p.add_argument("--out", type=Path, help="write the filter grid PNG here")
    p.set_defaults(func=_feature_command, endpoint="filters")

    p = sub.add_parser("impression", parents=[common],
                       help="a class impression: an input optimised for a class (running server, background job)")
    p.add_argument("target", type=_cli_target, metavar="TARGET", help="class index or label")
    p.add_argument("--steps", type=int, help="optimisation steps (default: the server's, 200)")
    p.add_argument("--seed", type=int, help="random seed (default: the server's, 0)")
    p.add_argument("--lr", type=float, help="learning rate (default: the server's)")
    p.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the job; then it is cancelled "
                                                             "(default 600)")
    p.add_argument("--out", type=Path, help="write the impression PNG here")
    p.set_defaults(func=_feature_command, endpoint="impression")


def _feature_command(args: argparse.Namespace) -> int:
    try:
        from xaas_client import Client, XaasConnectionError, XaasError
    except ImportError:
        print("xaas: this command needs the client package: pip install -e clients/python", file=sys.stderr)
        return EXIT_USAGE
    if args.endpoint == "activations" and not args.image.is_file():
        print(f"xaas: no such file: {args.image}", file=sys.stderr)
        return EXIT_USAGE
    with Client(args.server, api_key=args.api_key, timeout=args.timeout, retries=max(0, args.retries)) as client:
        try:
            if args.endpoint == "activations":
                result = client.activations(args.image, model=args.model, layer=args.layer, top=args.top,
                                            channel=args.channel)
                png = result.channel_png() if args.channel is not None else result.grid_png()
            elif args.endpoint == "filters":
                result = client.filters(args.model, layer=args.layer)
                png = result.grid_png()
            else:
                result = _run_impression(client, args)
                png = result.image_png()
        except XaasConnectionError as exc:
            print(f"xaas: cannot connect to {args.server}: {exc.detail}", file=sys.stderr)
            return EXIT_CONNECT
        except XaasError as exc:
            head = f"{exc.status} {exc.title}: " if exc.status else ""
            print(f"xaas: {head}{exc.detail}", file=sys.stderr)
            return EXIT_REQUEST_ERROR
        except OSError as exc:
            print(f"xaas: cannot read {args.image}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    print(json.dumps(result.to_json(), indent=2) if args.json else _feature_summary(args.endpoint, result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(png)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _run_impression(client, args: argparse.Namespace):
    """Start the job and poll it, printing progress on stderr; Ctrl-C cancels the job on the server."""
    shown: list[tuple] = []

    def report(job) -> None:
        step = (job.status, job.progress.step if job.progress else 0)
        if shown and shown[-1] == step:
            return
        shown.append(step)
        where = f" {job.progress.step}/{job.progress.steps}" if job.progress else ""
        prob = f" p={job.probability:.3f}" if job.probability is not None else ""
        print(f"impression {job.id}: {job.status}{where}{prob}", file=sys.stderr, flush=True)

    started: list = []

    def track(job) -> None:
        if not started:
            started.append(job.id)
        report(job)

    try:
        return client.class_impression(args.model, args.target, steps=args.steps, seed=args.seed, lr=args.lr,
                                       timeout=args.wait, on_progress=track)
    except KeyboardInterrupt:
        if started:
            try:
                client.cancel_job(started[0])
                print(f"xaas: cancelled job {started[0]}", file=sys.stderr)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        raise


def _feature_summary(endpoint: str, result) -> str:
    if endpoint == "activations":
        c, h, w = result.shape
        title = f"{result.layer} of {result.model}: {c} channels of {h}x{w}"
        header = ["channel", "mean", "max", "positive"]
        rows = [[str(s.index), f"{s.mean:.4f}", f"{s.max:.4f}", f"{s.fraction_positive:.2f}"] for s in result.channels]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  " + "  ".join(cell.rjust(wd) for cell, wd in zip(r, widths)) for r in [header, *rows]]
        return "\n".join([title, *lines])
    if endpoint == "filters":
        kh, kw = result.kernel_size
        return (f"{result.layer} of {result.model}: {result.count} filters {kh}x{kw} over {result.in_channels} "
                f"input channel(s), shown {result.mode}; conv layers: {', '.join(result.conv_layers)}")
    prob = f", probability {result.probability:.4f}" if result.probability is not None else ""
    steps = f" after {result.progress.steps} steps" if result.progress else ""
    return f"impression of {result.label!r} (class {result.target}) on {result.model}: {result.status}{steps}{prob}"


if __name__ == "__main__":
    sys.exit(main())
