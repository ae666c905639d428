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

    p = sub.add_parser("export-openapi", help="write the OpenAPI document")
    p.add_argument("--out", type=Path, default=Path("openapi/openapi.json"))
    p.set_defaults(func=_export_openapi)

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


def _export_openapi(args: argparse.Namespace) -> int:
    from .openapi import export_openapi

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(export_openapi())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
