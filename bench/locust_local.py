"""A bounded local run of bench/locustfile.py against `xaas serve` on 127.0.0.1, printing throughput and error rate.

    python bench/locust_local.py --locust /path/to/venv/bin/locust --users 8 --seconds 30

`--locust` is the locust executable (install it in its own virtualenv: `python -m venv /tmp/lv && /tmp/lv/bin/pip
install locust`). The server runs the shipped demo registry unless `--models` is given.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._server import running_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--locust", default="locust")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--models", type=Path, default=None)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="xaas-locust-")) / "run"
    with running_server(args.models, {"XAAS_DEVICE": "cpu"}) as server:
        subprocess.run([args.locust, "-f", str(Path(__file__).with_name("locustfile.py")), "--host", server.url,
                        "--headless", "-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s",
                        "--csv", str(out), "--only-summary"], check=True, timeout=args.seconds + 120,
                       stdout=subprocess.DEVNULL)
    with open(f"{out}_stats.csv") as fh:
        rows = list(csv.DictReader(fh))
    print(f"\nlocust, {args.users} users, {args.seconds} s against xaas serve on 127.0.0.1\n")
    print("| endpoint | requests | failures | error rate | req/s | median ms | p95 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        n, f = int(r["Request Count"]), int(r["Failure Count"])
        print(f"| {r['Name']} | {n} | {f} | {f / n if n else 0:.1%} | {float(r['Requests/s']):.1f} | "
              f"{r['50%']} | {r['95%']} | {r['99%']} |")


if __name__ == "__main__":
    main()
