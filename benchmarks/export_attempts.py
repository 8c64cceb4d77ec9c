"""Benchmark: export attempts from a standalone sandbox to NDJSON and CSV at flat memory.

Starts ``python -m synap_bulk sandbox`` in its own process (seeded, no rate limit, loopback
only), then runs each export variant in a fresh child process and reads the child's own
``resource.getrusage``: wall time, CPU time (user + system) and peak RSS. Every variant exports
the same attempts; each is repeated and the median reported.

    python benchmarks/export_attempts.py                 # 200,000 attempts; then 1,000,000
    python benchmarks/export_attempts.py --quick         # 200,000 only, one repeat
    python benchmarks/export_attempts.py --attempts 20000 --repeats 1 --formats csv

The 1,000,000-attempt run checks the flat-memory promise: peak RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TOKEN = "p:bench-export"
RSS_TARGET_MB = 150.0


def start_sandbox(exams: int, per_exam: int, users: int) -> tuple[subprocess.Popen[str], str]:
    """A standalone sandbox with ``exams * per_exam`` attempts; returns (process, base URL)."""
    return common.start_sandbox(
        "--seed", "1", "--users", str(users), "--exams", str(exams),
        "--attempts-per-exam", str(per_exam), "--markers", "10", "--rate", "0",
        token=TOKEN,
    )  # fmt: skip


def child(args: argparse.Namespace) -> None:
    """One export in this process; prints its figures as JSON."""
    import resource

    import anyio

    from synap_bulk.client import SynapClient
    from synap_bulk.ledger import Ledger
    from synap_bulk.resources import Exam
    from synap_bulk.tasks.export_attempts import ExportSettings, run_export

    out = Path(args.out)

    async def go() -> dict[str, Any]:
        async with (
            SynapClient(args.url, token=TOKEN, concurrency=args.parallel) as client,
            await Ledger.open(
                out.with_suffix(".ledger.sqlite"),
                job_name="bench-export",
                task_hash="bench",
                input_hash="",
                restart=True,
            ) as ledger,
        ):
            # Exam by exam, as a real export would: the sandbox then sorts one exam's attempts
            # per page instead of all of them.
            exams = [e.id async for e in client.paginate("exam-v-2s", None, Exam)]
            settings = ExportSettings(
                exams=tuple(exams),
                statuses=(),
                format=args.format,
                output=out,
                columns=None,
                since=None,
                mode="pages",
                page_size=args.page_size,
                parallel=args.parallel,
            )
            result = await run_export(settings, None, client, ledger)
            requests = client.statistics().requests
        return {"rows": result.rows, "bytes": result.bytes, "requests": requests}

    t0 = time.perf_counter()
    figures = anyio.run(go)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    figures.update(
        wall_s=wall,
        cpu_s=ru.ru_utime + ru.ru_stime,
        peak_rss_mb=ru.ru_maxrss / 1024,
    )
    print(json.dumps(figures))


def run_variant(url: str, fmt: str, attempts: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"attempts.{fmt}"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--url",
            url,
            "--format",
            fmt,
            "--out",
            str(out),
            "--page-size",
            str(args.page_size),
            "--parallel",
            str(args.parallel),
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        if done.returncode != 0:
            raise SystemExit(f"export child failed:\n{done.stderr[-3000:]}")
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["rows"] != attempts:
        raise SystemExit(f"{fmt}: exported {figures['rows']} rows, expected {attempts}")
    return figures


def bench(attempts: int, exams: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    per_exam = attempts // exams
    print(f"starting a sandbox with {exams} exams x {per_exam} attempts ...", flush=True)
    t0 = time.perf_counter()
    proc, url = start_sandbox(exams, per_exam, users=min(per_exam, 50_000))
    print(f"  ready in {time.perf_counter() - t0:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        for fmt in args.formats.split(","):
            runs = [run_variant(url, fmt, exams * per_exam, args) for _ in range(args.repeats)]
            med = {
                k: statistics.median(r[k] for r in runs)
                for k in ("wall_s", "cpu_s", "peak_rss_mb", "bytes", "requests")
            }
            med.update(format=fmt, attempts=exams * per_exam)
            rows.append(med)
            print(
                f"  {fmt}: {med['wall_s']:.1f} s wall, {med['cpu_s']:.1f} s CPU, "
                f"{med['peak_rss_mb']:.0f} MB peak RSS",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| attempts | format | wall s | attempts/s | CPU s | CPU µs/attempt | peak RSS MB "
        "| file MB | requests |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        n = r["attempts"]
        lines.append(
            f"| {n:,} | {r['format']} | {r['wall_s']:.1f} | {n / r['wall_s']:,.0f} "
            f"| {r['cpu_s']:.1f} | {r['cpu_s'] / n * 1e6:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {r['bytes'] / 1e6:.0f} | {r['requests']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 attempts only, 1 repeat")
    parser.add_argument("--attempts", type=int, default=200_000, help="the main run's size")
    parser.add_argument("--big", type=int, default=1_000_000, help="the flat-memory run's size")
    parser.add_argument(
        "--per-exam", type=int, default=20_000, help="attempts per exam (exams = attempts / this)"
    )
    parser.add_argument("--formats", default="ndjson,csv")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800, help="per child, seconds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.repeats = 1
    rows = bench(args.attempts, max(1, args.attempts // args.per_exam), args)
    if not args.quick and args.big:
        big_args = argparse.Namespace(**{**vars(args), "repeats": 1})
        big = bench(args.big, max(1, args.big // args.per_exam), big_args)
        rows += big
        worst = max(r["peak_rss_mb"] for r in big)
        verdict = "OK" if worst <= RSS_TARGET_MB else "OVER TARGET"
        print(f"\n1M peak RSS {worst:.0f} MB (target <= {RSS_TARGET_MB:.0f} MB): {verdict}")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
