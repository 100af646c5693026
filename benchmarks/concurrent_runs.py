"""Concurrent runs on one store, repeated: two `trainflow run` started together in one folder,
for each case, `--tries` times; each pair must exit 0 twice with a lone run's test metrics.

    .venv/bin/python benchmarks/concurrent_runs.py --tries 5

Cases: one spec with the runs' embedded Prefect servers and one Prefect home (what a user
starting two runs gets), and against one real server: one spec with one home, two specs with
a home each, one spec with a home each. tests/faults/test_concurrency.py runs each case once
(the last one not at all); this script prints the figures for RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402

from tests.faults.test_concurrency import (  # noqa: E402
    OTHER,
    SMALL,
    Server,
    environment,
    expected,
    pair,
    together,
)

CASES = [
    ("embedded servers", "one spec, one home"),
    ("server", "one spec, one home"),
    ("server", "two specs, a home each"),
    ("server", "one spec, a home each"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5, help="pairs per case (default 5)")
    args = parser.parse_args()
    before = harness.header("concurrent_runs")
    root = Path(tempfile.mkdtemp(prefix="trainflow-concurrent-"))
    server = Server(root / "server-home")
    figures = []
    try:
        small, other = together(
            [
                (sets, environment(root / f"lone-{name}", server.api_url), root / f"lone-{name}")
                for name, sets in (("small", SMALL), ("other", OTHER))
            ]
        )
        lone = {"small": small, "other": other}
        for kind, case in CASES:
            passed, seconds = 0, []
            for attempt in range(args.tries):
                folder = root / f"{kind}-{case}-{attempt}".replace(" ", "_").replace(",", "")
                began = time.monotonic()
                try:
                    got = together(pair(case, folder, server.api_url if kind == "server" else None))
                    passed += got == expected(case, lone)
                except AssertionError as exc:
                    print(f"{kind}, {case}, try {attempt + 1}: {str(exc)[:2000]}", file=sys.stderr)
                seconds.append(time.monotonic() - began)
            figures.append(
                {
                    "servers": kind,
                    "case": case,
                    "tries": args.tries,
                    "both completed with a lone run's metrics": passed,
                    "median pair seconds": round(sorted(seconds)[len(seconds) // 2], 1),
                }
            )
            print(json.dumps(figures[-1]), flush=True)
    finally:
        server.stop()
    harness.finish("concurrent_runs", before, {"tries": args.tries, "cases": figures})
    return (
        0
        if all(f["both completed with a lone run's metrics"] == f["tries"] for f in figures)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
