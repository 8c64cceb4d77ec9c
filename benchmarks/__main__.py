"""``python -m benchmarks``: every scenario, our client beside the peers, on standalone servers.

    python -m benchmarks                       # every scenario, 3 interleaved repeats
    python -m benchmarks --quick               # a small version of each (< 2 min), 1 repeat
    python -m benchmarks --only known-limit --only faults --repeats 5
    python -m benchmarks --scale 0.5           # every full size halved

Writes ``<out>/<date>.json`` (every run's figures) and ``<out>/<date>.md`` (the tables: median
with min–max); ``--out`` defaults to benchmarks/results. Needs the ``bench`` extra for the peers
(``pip install -e ".[bench]"``); a peer whose package is missing is skipped, and said so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

from benchmarks.render import markdown
from benchmarks.run import run_scenario, say
from benchmarks.scenarios import BY_NAME, SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (smoke run)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BY_NAME),
        help="run only this scenario (repeatable)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats (3; quick 1)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the full sizes")
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)  # tests
    parser.add_argument("--timeout", type=float, default=900, help="per child process, seconds")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder"
    )
    ns = parser.parse_args(argv)
    repeats = ns.repeats or (1 if ns.quick else 3)
    chosen = [BY_NAME[n] for n in ns.only] if ns.only else list(SCENARIOS)
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "command": " ".join(
            ["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]
        ),
        "quick": ns.quick,
        "repeats": repeats,
        "scale": ns.scale,
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_start": list(os.getloadavg()),
        },
        "scenarios": [],
    }
    for scn in chosen:
        n = ns.size or (scn.quick if ns.quick else max(1, int(scn.size * ns.scale)))
        say(f"{scn.name}: {scn.title} ({n:,})")
        doc["scenarios"].append(run_scenario(scn, n, repeats, ns.timeout))
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    ns.out.mkdir(parents=True, exist_ok=True)
    stem = now.strftime("%Y-%m-%d")
    (ns.out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    (ns.out / f"{stem}.md").write_text(markdown(doc))
    say(f"wrote {ns.out / (stem + '.json')} and {ns.out / (stem + '.md')} in {doc['elapsed_s']} s")
    errors = sum(len(v["errors"]) for s in doc["scenarios"] for v in s["variants"])
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
