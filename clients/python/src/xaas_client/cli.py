"""``xaas-client``: predictions, explanations, boxes and feature views from a running xaas server, for shells and
scripts (also ``python -m xaas_client``; the service's ``xaas predict ...`` commands are aliases of these).

It imports only the standard library and this package, so it runs wherever the client installs — no torch, NumPy or
Pillow: the PNGs it writes are the server's bytes, base64-decoded.

Exit codes: 0 ok, 1 the server refused a request, 2 usage or file error, 3 cannot connect. Messages on stderr start
with ``xaas:`` whichever command was typed, so scripts match one prefix.

(A little over our usual ~500 lines on purpose: one argparse tree whose subcommands share option sets, one error
path and one per-image loop; what is printed lives in :mod:`xaas_client._output`.)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ._output import (
    Progress,
    activations_table,
    explain_table,
    filters_summary,
    format_table,
    impression_summary,
    localize_table,
    model_summary,
    models_table,
    predict_table,
    stored_summary,
)
from .client import DEFAULT_URL, Client
from .errors import JobTimeout, XaasConnectionError, XaasError
from .types import ExplainResponse, LocalizeResponse

__all__ = ["COMMANDS", "CommandError", "build_parser", "format_table", "main"]

EXIT_OK, EXIT_REQUEST_ERROR, EXIT_USAGE, EXIT_CONNECT = 0, 1, 2, 3
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".dcm", ".dicom"})
# Options with a flag of their own must not sneak in as method parameters, where they would be sent twice.
_RESERVED_PARAMS = frozenset({"model", "target", "top_k", "outputs", "method", "threshold", "all_components",
                              "min_area", "region"})

COMMANDS: dict[str, str] = {  # name -> summary; the service's `xaas --help` shows these for its aliases too
    "predict": "classify an image or a folder of images",
    "explain": "explain an image or a folder of images (heatmaps)",
    "localize": "boxes for an image or a folder of images",
    "activations": "a layer's activations for an image",
    "filters": "a convolution layer's filters as a grid",
    "impression": "a class impression: an input optimised for a class (background job)",
    "dicomweb": "explain or localize an instance of the server's PACS (DICOMweb), optionally storing the DICOM results",
    "audit": "audit a labelled folder or zip for dataset bias (a job on the server): JSON + HTML report",
    "models": "the server's models, or one model's classes, input (a mil model's patches), methods and refusals",
}
# dicomweb actions, each with the DICOM result it asks for when --outputs is not given.
_DICOM_DEFAULT = {"explain": "dicom-pm", "localize": "dicom-sr"}

Ask = Callable[[Client, Path], Any]
Render = Callable[[str, Any], str]


class CommandError(Exception):
    """A failure already worded for the user, with the exit code it ends the command with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None, *, prog: str = "xaas-client") -> int:
    """Run one command; ``prog`` names the command in usage and help (the ``xaas`` aliases pass ``"xaas"``)."""
    args = build_parser(prog).parse_args(argv)
    try:
        return int(args.func(args) or EXIT_OK)
    except CommandError as exc:
        _say(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130


# --- arguments -------------------------------------------------------------------------------------------------------

def build_parser(prog: str = "xaas-client") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Ask a running xaas server for predictions, "
                                     "explanations, boxes and feature views.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = _shared_options("print the raw JSON response")
    images = [_image_options(), _shared_options("print the raw JSON response(s) (JSON Lines for a folder)")]

    def add(name: str, parents: list[argparse.ArgumentParser], func: Callable[[argparse.Namespace], int]):
        summary = COMMANDS[name]
        command = sub.add_parser(name, parents=parents, help=summary,
                                 description=f"{summary[0].upper()}{summary[1:]}.")
        command.set_defaults(func=func)
        return command

    p = add("predict", images, _predict)
    p.add_argument("--labelmap", type=Path, metavar="PNG",
                   help="segmentation models: write the labelmap (8-bit PNG of the class per pixel) here")

    p = add("explain", images, _explain)
    p.add_argument("--method", default="gradcam", help="explanation method (default gradcam; see GET /methods)")
    _region_option(p)
    _detection_options(p)
    _param_option(p, "a method parameter, e.g. window=16; repeatable")
    p.add_argument("--out", type=Path, help="write the first explanation's heatmap PNG here; for a folder input, "
                                            "a folder receiving <name>.heatmap.png files")
    p.add_argument("--overlay", action="store_true", help="with --out: write the overlay (heatmap over the image)")
    _async_options(p)

    p = add("localize", images, _localize)
    p.add_argument("--method", help="heatmap method (default: the server's, gradcam)")
    p.add_argument("--threshold", type=float, help="fraction of the map's maximum (default: the server's)")
    p.add_argument("--all-components", action="store_true", default=None, help="box every region, not the largest")
    p.add_argument("--min-area", type=int, help="with --all-components: smallest region kept, in pixels")
    _region_option(p)
    _detection_options(p)
    _async_options(p)
    _param_option(p, "a method parameter; repeatable")

    p = add("activations", [shared], _activations)
    p.add_argument("image", type=Path, metavar="IMAGE", help="an image file")
    p.add_argument("--layer", help="layer with a spatial output (default: the model's target layer)")
    p.add_argument("--top", type=int, help="channels in the grid, highest mean first (default: the server's, 16)")
    p.add_argument("--channel", type=int, help="one channel at native resolution instead of the grid")
    p.add_argument("--out", type=Path, help="write the grid PNG (or with --channel, the channel PNG) here")

    p = add("filters", [shared], _filters)
    p.add_argument("--layer", help="convolution layer (default: the first one)")
    p.add_argument("--out", type=Path, help="write the filter grid PNG here")

    p = add("impression", [shared], _impression)
    p.add_argument("target", type=_target, metavar="TARGET", help="class index or label")
    p.add_argument("--steps", type=int, help="optimisation steps (default: the server's, 200)")
    p.add_argument("--seed", type=int, help="random seed (default: the server's, 0)")
    p.add_argument("--lr", type=float, help="learning rate (default: the server's)")
    p.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the job; then it is cancelled "
                                                             "(default 600)")
    p.add_argument("--out", type=Path, help="write the impression PNG here")

    p = add("dicomweb", [_class_options(), shared], _dicomweb)
    p.add_argument("action", choices=sorted(_DICOM_DEFAULT), help="explain (heatmaps as DICOM) or localize (boxes as "
                                                                  "a DICOM SR)")
    p.add_argument("study", metavar="STUDY_UID", help="Study Instance UID of the image in the PACS")
    p.add_argument("series", metavar="SERIES_UID", help="its Series Instance UID")
    p.add_argument("instance", metavar="INSTANCE_UID", help="its SOP Instance UID")
    p.add_argument("--method", help="explanation method (explain: default gradcam; localize: the server's)")
    p.add_argument("--outputs", action="append", type=_kinds, metavar="KIND[,KIND]",
                   help="DICOM results: dicom-pm, dicom-seg, dicom-sc (explain), dicom-sr (localize); comma-separated "
                        "or repeated (default dicom-pm, or dicom-sr for localize)")
    p.add_argument("--store", action="store_true", help="the server writes the DICOM results back into the "
                                                        "source's study (STOW-RS)")
    p.add_argument("--out", type=Path, metavar="FOLDER", help="write the DICOM results into this folder as "
                                                              "<kind>-<class index>.dcm (localize: sr.dcm)")
    p.add_argument("--threshold", type=float, help="fraction of the map's maximum: the boxes (localize) or the "
                                                   "dicom-seg mask (explain); default: the server's")
    p.add_argument("--fractional", action="store_true", help="explain: dicom-seg as a FRACTIONAL segmentation")
    _param_option(p, "a method parameter; repeatable")

    p = add("models", [shared], _models)
    p.add_argument("name", nargs="?", metavar="NAME", help="one model's details (default: list them all)")

    p = add("audit", [shared], _audit)
    p.add_argument("data", type=Path, metavar="FOLDER|ZIP", help="labels.json and its images, as a folder or a zip")
    p.add_argument("--method", help="explanation method (default: the server's, gradcam)")
    p.add_argument("--layer", help="layer for CAM methods (default: the model's)")
    p.add_argument("--no-boxes", action="store_true", default=None, help="boxless mode even when there are boxes")
    p.add_argument("--limit", type=int, help="audit only the first N images")
    p.add_argument("--wait", type=float, default=3600.0, help="seconds to wait for the job; then it is cancelled "
                                                              "(default 3600)")
    p.add_argument("--out", type=Path, metavar="FOLDER", help="write audit.json and audit.html into this folder")
    return parser


def _shared_options(json_help: str) -> argparse.ArgumentParser:
    """What every command needs to reach the server and pick a model and output form; one definition for all."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--server", default=os.environ.get("XAAS_URL") or DEFAULT_URL,
                        help=f"service URL (default $XAAS_URL or {DEFAULT_URL})")
    shared.add_argument("--api-key", help="sent as 'Authorization: Bearer' (default $XAAS_API_KEY)")
    shared.add_argument("--model", help="registry name (default: the server's default model)")
    shared.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    shared.add_argument("--retries", type=int, default=3, help="retries on 429/503/connect failures (default 3)")
    shared.add_argument("--json", action="store_true", help=json_help)
    return shared


def _image_options() -> argparse.ArgumentParser:
    """The input and class choice of predict/explain/localize, which accept a folder as well as one image."""
    images = argparse.ArgumentParser(add_help=False, parents=[_class_options()])
    images.add_argument("image", type=Path, metavar="IMAGE_OR_FOLDER", help="an image file, or a folder of images")
    return images


def _class_options() -> argparse.ArgumentParser:
    """Which classes to explain: --target / --top-k (read by :func:`_classes`)."""
    classes = argparse.ArgumentParser(add_help=False)
    classes.add_argument("--target", action="append", type=_target, metavar="T", help="class index or label; "
                                                                                     "repeatable")
    classes.add_argument("--top-k", type=int, metavar="K", help="without --target: the K best classes")
    return classes


def _async_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--async", dest="run_async", action="store_true",
                        help="run it as a job on the server (slow methods: Score-CAM, RISE, large occlusions); "
                             "progress on stderr, Ctrl-C cancels the job")
    parser.add_argument("--wait", type=float, default=600.0,
                        help="with --async: seconds to wait for the job (default 600); then it is cancelled")


def _region_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", type=_region, metavar="REGION",
                        help="segmentation models: where each class is explained: predicted (server default), all, "
                             "a box x0,y0,x1,y1 in original pixels, or mask:FILE.png (non-zero = inside)")


def _detection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detection", metavar="ID|BOX",
                        help="detection models: the detection explained: its id (from predict) or a box "
                             "x0,y0,x1,y1 in original pixels with --target its label")
    parser.add_argument("--box-regression", action="store_true", default=None,
                        help="detection models: explain the score plus the box's IoU (where the box is)")


def _region(text: str) -> str | bytes:
    """``mask:FILE`` reads the mask PNG (sent as ``mask:<base64>``); anything else goes as written (the server
    checks it and names ``region`` when it is wrong)."""
    if text.lower().startswith("mask:"):
        path = Path(text[5:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read the mask {path}: {exc.strerror or exc}") from None
    return text


def _param_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--param", action="append", default=[], type=_param, metavar="NAME=VALUE", help=help)


def _target(text: str) -> int | str:
    # ASCII digits only: "¹".isdigit() is true, and the server reads such strings as labels, not indices.
    digits = text[1:] if text.startswith("-") else text
    return int(text) if digits.isascii() and digits.isdigit() else text


def _kinds(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    if not kinds:
        raise argparse.ArgumentTypeError(f"expected DICOM output kinds such as dicom-pm, got {text!r}")
    return kinds


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    if name.strip() in _RESERVED_PARAMS:
        raise argparse.ArgumentTypeError(f"{name!r} has its own option (--{name.strip().replace('_', '-')})")
    return name.strip(), value


# --- commands: one small function each ---------------------------------------------------------------------------

def _predict(args: argparse.Namespace) -> int:
    outputs = ["mask", "labelmap"] if args.labelmap is not None else None
    if args.labelmap is not None and args.image.is_dir():
        raise CommandError("--labelmap takes one image, not a folder", EXIT_USAGE)

    def save(result: Any, path: Path) -> None:
        if args.labelmap is not None:
            try:
                args.labelmap.write_bytes(result.labelmap_png())
            except ValueError as exc:  # a classifier: no labelmap
                raise CommandError(str(exc), EXIT_USAGE) from None

    return _each_image(args, _image_files(args.image),
                       lambda client, path: client.predict(path, outputs=outputs, **_classes(args)), predict_table,
                       save)


def _explain(args: argparse.Namespace) -> int:
    files = _image_files(args.image)
    out = _output_folder(args.out) if args.out is not None and args.image.is_dir() else args.out
    outputs = ["heatmap", "overlay"] if args.overlay else ["heatmap"]

    def ask(client: Client, path: Path) -> Any:
        if args.run_async:
            started = client.explain(args.method, path, outputs=outputs, wait=False, region=args.region,
                                     **_detection(args), **_classes(args), **_params(args))
            return _await_job(client, started, args.wait, f"{args.method} {path.name}")
        return client.explain(args.method, path, outputs=outputs, region=args.region, **_detection(args),
                              **_classes(args), **_params(args))

    def save(result: Any, path: Path) -> None:
        if out is not None:
            name = f"{path.stem}.{'overlay' if args.overlay else 'heatmap'}.png"
            _write_map(result, out / name if out.is_dir() else out, overlay=args.overlay)

    return _each_image(args, files, ask, explain_table, save)


def _localize(args: argparse.Namespace) -> int:
    def ask(client: Client, path: Path) -> Any:
        options = dict(method=args.method, threshold=args.threshold, all_components=args.all_components,
                       min_area=args.min_area, region=args.region, **_detection(args), **_classes(args),
                       **_params(args))
        if args.run_async:
            return _await_job(client, client.localize(path, wait=False, **options), args.wait, f"localize {path.name}")
        return client.localize(path, **options)

    return _each_image(args, _image_files(args.image), ask, localize_table)


def _detection(args: argparse.Namespace) -> dict[str, Any]:
    return {"detection": args.detection, "box_regression": args.box_regression}


def _activations(args: argparse.Namespace) -> int:
    if not args.image.is_file():
        raise CommandError(f"no such file: {args.image}", EXIT_USAGE)
    result = _ask(args, lambda client: client.activations(args.image, model=args.model, layer=args.layer,
                                                          top=args.top, channel=args.channel), path=args.image)
    png = result.channel_png() if args.channel is not None else result.grid_png()
    return _show(args, result, activations_table, png)


def _filters(args: argparse.Namespace) -> int:
    result = _ask(args, lambda client: client.filters(args.model, layer=args.layer))
    return _show(args, result, filters_summary, result.grid_png())


def _impression(args: argparse.Namespace) -> int:
    result = _ask(args, lambda client: _run_impression(client, args))
    return _show(args, result, impression_summary, result.image_png())


def _dicomweb(args: argparse.Namespace) -> int:
    """One instance of the server's PACS: explained or localized there, the table and the stored UIDs printed, the
    DICOM results optionally written to --out."""
    outputs = [kind for group in args.outputs or [[_DICOM_DEFAULT[args.action]]] for kind in group]
    folder = _output_folder(args.out, "--out must be a folder for the DICOM results") if args.out else None
    options: dict[str, Any] = {**_classes(args), **_params(args), "threshold": args.threshold}
    if args.fractional:
        options["segmentation_type"] = "fractional"
    reference = (args.study, args.series, args.instance)
    if args.action == "explain":
        def ask(client: Client) -> Any:
            return client.explain_dicomweb(args.method or "gradcam", *reference, store=args.store, outputs=outputs,
                                           **options)
    else:
        def ask(client: Client) -> Any:
            return client.localize_dicomweb(*reference, method=args.method, store=args.store, outputs=outputs,
                                            **options)
    result = _ask(args, ask)
    name = f"instance {args.instance}"
    if args.json:
        print(json.dumps(result.body, indent=2))
    elif args.action == "explain":
        print(explain_table(name, ExplainResponse.model_validate(result.body)))
    else:
        print(localize_table(name, LocalizeResponse.model_validate(result.body)))
    if not args.json:
        print(stored_summary(result.stored, args.store))
    if folder is not None:
        _write_dicom(folder, args.action, result)
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    name = args.name or args.model
    result = _ask(args, lambda client: client.model(name) if name else client.models())
    if args.json:
        body = result.to_json() if name else {"models": [m.to_json() for m in result]}
        print(json.dumps(body, indent=2))
    else:
        print(model_summary(result) if name else models_table(result))
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    """Upload the set, wait for the job (progress on stderr), print the per-class table or the JSON report."""
    def ask(client: Client) -> tuple[dict[str, Any], str | None]:
        handle = client.audit(args.data, model=args.model, method=args.method, layer=args.layer,
                              boxless=args.no_boxes, limit=args.limit)
        report = _await_job(client, handle, args.wait, "audit")
        return report, client.audit_report_html(handle.id) if args.out is not None else None

    report, page = _ask(args, ask, path=args.data)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        rows = [[label, str(c["pairs"]), *(f"{c[k]:.3f}" if c.get(k) is not None else "-"
                                            for k in ("in_object", "pointing", "centre", "agreement", "baseline")),
                 ", ".join(c["flags"]) or "-"] for label, c in report["classes"].items()]
        print(format_table(f"audit of {report['model']} ({report['method']}, {report['mode']}, {report['images']} "
                           "images)", ["class", "pairs", "in object", "pointing", "centre", "agreement", "baseline",
                                       "flags"], rows, text_columns=frozenset({"class", "flags"})))
        print("flagged: " + (", ".join(report["flagged"]) or "none"))
    if args.out is not None:
        folder = _output_folder(args.out, "--out must be a folder for audit.json and audit.html")
        (folder / "audit.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        (folder / "audit.html").write_text(page or "", encoding="utf-8")
        _say(f"wrote {folder / 'audit.json'} and {folder / 'audit.html'}")
    return EXIT_OK


# --- running requests --------------------------------------------------------------------------------------------

def _connect(args: argparse.Namespace) -> Client:
    return Client(args.server, api_key=args.api_key, timeout=args.timeout, retries=max(0, args.retries))


@contextlib.contextmanager
def _request_errors(server: str, path: Path | None = None, where: str = "") -> Iterator[None]:
    """The one mapping from the client's exceptions to exit codes: no answer 3, a refusal 1, an unreadable file 2."""
    try:
        yield
    except XaasConnectionError as exc:
        raise CommandError(f"cannot connect to {server}: {exc.detail}", EXIT_CONNECT) from exc
    except XaasError as exc:
        head = f"{exc.status} {exc.title}: " if exc.status else ""
        raise CommandError(f"{where}{head}{exc.detail}", EXIT_REQUEST_ERROR) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CommandError(f"{where}cannot read {path}: {reason}" if path else f"{where}{reason}", EXIT_USAGE) from exc


def _ask(args: argparse.Namespace, call: Callable[[Client], Any], path: Path | None = None) -> Any:
    """One request (or one polled job) on a fresh client, errors mapped by :func:`_request_errors`."""
    with _connect(args) as client, _request_errors(args.server, path):
        return call(client)


def _each_image(args: argparse.Namespace, files: list[Path], ask: Ask, render: Render,
                save: Callable[[Any, Path], None] | None = None) -> int:
    """Ask about each file in turn on one connection. A folder goes on past a refused or unreadable image (exit 1 at
    the end, its name in the message) but stops at a failed connection: the rest would fail the same way."""
    folder = args.image.is_dir()
    status = EXIT_OK
    progress = Progress(len(files))
    with _connect(args) as client:
        for done, path in enumerate(files):
            progress.update(done, path.name)
            try:
                with _request_errors(args.server, path, f"{path.name}: " if folder else ""):
                    result = ask(client, path)
            except CommandError as exc:
                progress.clear()
                if not folder or exc.code == EXIT_CONNECT:
                    raise
                _say(str(exc))
                status = EXIT_REQUEST_ERROR
                continue
            progress.clear()
            if args.json:
                body = result.to_json()
                print(json.dumps({"file": path.name, "response": body}) if folder else json.dumps(body, indent=2))
            else:
                print(render(path.name, result))
            if save is not None:
                save(result, path)
        progress.update(len(files))
        progress.clear()
    return status


def _show(args: argparse.Namespace, result: Any, render: Callable[[Any], str], png: bytes) -> int:
    """Print a feature view (JSON or the summary) and write its PNG to ``--out``."""
    print(json.dumps(result.to_json(), indent=2) if args.json else render(result))
    if args.out is not None:
        _write_png(args.out, png)
    return EXIT_OK


def _job_printer(label: str) -> Callable[[Any], None]:
    """Print each new state of a job on stderr: ``<label> <id>: running 120/1280 masked forwards p=0.93``."""
    shown: list[tuple[str, int]] = []

    def show(job: Any) -> None:
        p = job.progress
        done, total, unit = (p.done or p.step, p.total or p.steps, p.unit) if p else (0, 0, "")
        state = (job.status, done)
        if shown and shown[-1] == state:
            return
        shown.append(state)
        where = f" {done}/{total} {unit}" if total else ""
        prob = f" p={job.probability:.3f}" if job.probability is not None else ""
        print(f"{label} {job.id}: {job.status}{where}{prob}", file=sys.stderr, flush=True)

    return show


def _await_job(client: Client, handle: Any, wait: float, label: str) -> Any:
    """Wait for a started job, showing its progress; on timeout or Ctrl-C the job is cancelled on the server."""
    try:
        return handle.result(timeout=wait, poll_interval=0.25, on_progress=_job_printer(label))
    except (KeyboardInterrupt, JobTimeout):
        with contextlib.suppress(Exception):  # best effort on the way out
            handle.cancel()
            _say(f"cancelled job {handle.id}")
        raise


def _run_impression(client: Client, args: argparse.Namespace) -> Any:
    """Start the job and poll it, printing each new state on stderr; Ctrl-C cancels the job on the server."""
    started: list[str] = []
    show = _job_printer("impression")

    def track(job: Any) -> None:
        if not started:
            started.append(job.id)
        show(job)

    try:
        return client.class_impression(args.model, args.target, steps=args.steps, seed=args.seed, lr=args.lr,
                                       timeout=args.wait, on_progress=track)
    except KeyboardInterrupt:
        if started:
            with contextlib.suppress(Exception):  # best effort on the way out
                client.cancel_job(started[0])
                _say(f"cancelled job {started[0]}")
        raise


def _classes(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "target": args.target, "top_k": args.top_k}


def _params(args: argparse.Namespace) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in args.param:
        params.setdefault(name, []).append(value)
    return params


# --- files ------------------------------------------------------------------------------------------------------

def _image_files(target: Path) -> list[Path]:
    """The image itself, or the folder's image files (sorted, not recursive, skipping our own outputs)."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise CommandError(f"no such file or folder: {target}", EXIT_USAGE)
    files = sorted(p for p in target.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                   and not p.name.endswith((".heatmap.png", ".overlay.png")))
    if not files:
        raise CommandError(f"no image files in folder {target}", EXIT_USAGE)
    return files


def _output_folder(out: Path, problem: str = "--out must be a folder when explaining a folder") -> Path:
    """``--out`` naming a folder: created before the first request rather than failing after it."""
    if out.exists() and not out.is_dir():
        raise CommandError(f"{problem}: {out}", EXIT_USAGE)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_map(result: Any, path: Path, *, overlay: bool) -> None:
    if not result.explanations:
        _say(f"no explanation to write to {path}")
        return
    first = result.explanations[0]
    _write_png(path, first.overlay_png() if overlay else first.heatmap_png())


def _write_dicom(folder: Path, action: str, result: Any) -> None:
    """Each DICOM result as a Part 10 file: ``<kind>-<class index>.dcm`` (explain), ``sr.dcm`` (localize)."""
    if action == "explain":
        indices = [item.get("index") for item in result.body.get("explanations", [])]
        files = [(f"{kind}-{index}.dcm", blob) for index, item in zip(indices, result.dicom, strict=True)
                 for kind, blob in item.items()]
    else:
        files = [(f"{kind}.dcm", blob) for item in result.dicom for kind, blob in item.items()]
    if not files:
        _say(f"no DICOM results to write to {folder}")
    for name, blob in files:
        path = folder / name
        path.write_bytes(base64.b64decode(blob))
        print(f"wrote {path}", file=sys.stderr)


def _write_png(path: Path, png: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    print(f"wrote {path}", file=sys.stderr)


def _say(message: str) -> None:
    print(f"xaas: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
