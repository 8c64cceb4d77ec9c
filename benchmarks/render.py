"""The Markdown of a ``python -m benchmarks`` run: one table per scenario, median (min–max).

python -m benchmarks.render benchmarks/results/<date>.json   # rewrites <date>.md beside it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = (
    ("wall_s", "wall s", "{:.2f}"),
    ("x_ideal", "x ideal", "{:.2f}"),
    ("cpu_s", "client CPU s", "{:.2f}"),
    ("cpu_ms_per_op", "CPU ms/op", "{:.3f}"),
    ("cpu_x_bare", "CPU x bare", "{:.2f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
    ("ops_per_s", "ops/s", "{:.0f}"),
    ("requests", "requests", "{:.0f}"),
    ("429s", "429s", "{:.0f}"),
    ("duplicates", "dup", "{:.0f}"),
    ("missing", "missing", "{:.0f}"),
    ("misreported", "misrep.", "{:.0f}"),
    ("in_doubt", "in doubt", "{:.0f}"),
    ("server_cpu_share", "server CPU", "{:.0%}"),
)


def cell(stat: dict[str, float] | None, fmt: str) -> str:
    if not stat:
        return "-"
    med, lo, hi = (fmt.format(stat[k]) for k in ("median", "min", "max"))
    return med if lo == hi else f"{med} ({lo}–{hi})"


def table(scn: dict[str, Any]) -> list[str]:
    cols = [c for c in COLUMNS if any(c[0] in v for v in scn["variants"])]
    lines = [
        "| variant | " + " | ".join(c[1] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for v in scn["variants"]:
        cells = [cell(v.get(key), fmt) for key, _, fmt in cols]
        err = f" ({len(v['errors'])} failed runs)" if v["errors"] else ""
        lines.append(f"| {v['label']}{err} | " + " | ".join(cells) + " |")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    commands = ", ".join(f"`{c}`" for c in doc.get("invocations", [doc["command"]]))
    out = [
        f"# Benchmarks, {doc['date']}",
        "",
        f"{commands}: interleaved repeats (A B C A B C ...), each variant in its own process "
        f"against a standalone sandbox process; {m['nproc']} CPUs, Python {m['python']}, "
        f"{m['platform']}. The machine was shared (load averages below): read the ratios "
        "measured side by side, not the absolute figures.",
        "Cells: median (min–max). Client CPU: the child's rusage less its interpreter start "
        "(exports: the whole process). Requests, 429s and the counts of rows come from the "
        "server's counters; server CPU is the share of one core the server processes used "
        "during the child's run.",
    ]
    for scn in doc["scenarios"]:
        out += ["", f"## {scn['name']}: {scn['title']}", ""]
        ideal = f"; x ideal: wall / {scn['ideal']}" if scn["ideal"] else ""
        if scn["ideal_s"]:
            ideal += f" = {scn['ideal_s']:.2f} s"
        what = "attempts" if scn["kind"] == "export" else "rows"
        out.append(f"{scn['size']:,} {what}, {scn['repeats']} repeat(s){ideal}.")
        if "command" in scn:
            lo, hi = scn["load_average"]
            at = f" at commit {scn['commit']}" if scn.get("commit") else ""
            out.append(
                f"`{scn['command']}`{at}; load average {lo:.1f} at its start, {hi:.1f} at its end."
            )
        for note in [*scn["notes"], *scn["skipped"]]:
            out.append(f"{note}")
        out.append("")
        out += table(scn)
    return "\n".join(out) + "\n"


def compact(doc: dict[str, Any]) -> str:
    """One table of every scenario, the columns that compare (README's Performance section)."""
    lines = [
        "| scenario | variant | wall s | x ideal | CPU ms/op | x bare CPU | peak RSS MB | 429s "
        "| dup / missing / misrep. |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for scn in doc["scenarios"]:
        for v in scn["variants"]:
            if not v.get("runs"):
                continue
            faults = "/".join(cell(v.get(k), "{:.0f}") for k in ("duplicates", "missing"))
            faults += "/" + cell(v.get("misreported"), "{:.0f}")
            lines.append(
                f"| {scn['name']} | {v['label']} | {cell(v.get('wall_s'), '{:.2f}')} "
                f"| {cell(v.get('x_ideal'), '{:.2f}')} | {cell(v.get('cpu_ms_per_op'), '{:.3f}')} "
                f"| {cell(v.get('cpu_x_bare'), '{:.2f}')} "
                f"| {cell(v.get('peak_rss_mb'), '{:.0f}')} | {cell(v.get('429s'), '{:.0f}')} "
                f"| {faults} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    source = Path(sys.argv[1])
    doc = json.loads(source.read_text())
    if "--compact" in sys.argv[2:]:
        print(compact(doc), end="")
    else:
        source.with_suffix(".md").write_text(markdown(doc))
