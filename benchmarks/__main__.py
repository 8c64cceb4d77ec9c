"""``python -m benchmarks``: every scenario, our client beside the peers, on standalone servers.

    python -m benchmarks                       # every scenario, 3 interleaved repeats
    python -m benchmarks --quick               # a small version of each (< 2 min), 1 repeat
    python -m benchmarks --only known-limit --only faults --repeats 5
    python -m benchmarks --scale 0.5           # every full size halved

Writes ``<out>/<date>.json`` (every run's figures) and ``<out>/<date>.md`` (the tables: median
with min–max); ``--out`` defaults to benchmarks/results. A later run the same day replaces the
scenarios it ran and keeps the others (each scenario records its command). Needs the ``bench``
extra for the peers (``pip install -e ".[bench]"``); a peer whose package is missing is skipped,
and said so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.render import markdown
from benchmarks.run import run_scenario, say
from benchmarks.scenarios import BY_NAME, SCENARIOS


def merge(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """The day's file with this run's scenarios in place of the same-named earlier ones.

    A day's results are the latest run of each scenario (every scenario records the command
    that produced it), so a long run may be split (``--only``) and still give one table.
    """
    if not path.exists():
        doc["invocations"] = [doc["command"]]
        return doc
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        doc["invocations"] = [doc["command"]]
        return doc
    fresh = {s["name"] for s in doc["scenarios"]}
    kept = [s for s in old.get("scenarios", []) if s["name"] not in fresh]
    order = {name: i for i, name in enumerate(BY_NAME)}
    scenarios = sorted(kept + doc["scenarios"], key=lambda s: order.get(s["name"], 99))
    used = {s.get("command") for s in scenarios}
    invocations = [c for c in old.get("invocations", []) if c in used]
    return {**doc, "scenarios": scenarios, "invocations": [*invocations, doc["command"]]}


def _commit() -> str:
    """The checkout's commit (with ``+changes`` when its tracked files differ from it)."""
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return ""
    return rev + ("+changes" if rev and dirty else "")


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
    doc: dict[str, Any] = {
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
        load0 = os.getloadavg()[0]
        result = run_scenario(scn, n, repeats, ns.timeout)
        result.update(
            command=doc["command"],
            commit=_commit(),
            load_average=[load0, os.getloadavg()[0]],
        )
        doc["scenarios"].append(result)
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    ns.out.mkdir(parents=True, exist_ok=True)
    stem = now.strftime("%Y-%m-%d")
    merged = merge(ns.out / f"{stem}.json", doc)
    (ns.out / f"{stem}.json").write_text(json.dumps(merged, indent=1))
    (ns.out / f"{stem}.md").write_text(markdown(merged))
    say(f"wrote {ns.out / (stem + '.json')} and {ns.out / (stem + '.md')} in {doc['elapsed_s']} s")
    errors = sum(len(v["errors"]) for s in doc["scenarios"] for v in s["variants"])
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
