"""``report.html``: one run, to look at and to forward, as a single self-contained file.

Built only from the run folder's own files (``summary.json``, ``timeline.json``,
``failures.csv``), so ``report JOB`` regenerates it offline, with no token. It holds the
summary (this run beside the job's total, who the token acted as, elapsed time), throughput and
429s over time, requests in flight, the latency distribution, the failure reasons by count with
the first rows, for assign-markers each marker's load before and after, and for exports rows and
pages over time.

Self-contained means it opens offline and asks nothing of the network: the styles and a few
lines of script are inline, the charts are inline SVG drawn here in Python (no charting
library: a dozen paths per chart, a few kilobytes, nothing to load), and a Content Security
Policy forbids the page any request. The inline script only measures each chart's drawn
geometry and records it in ``data-drawn`` attributes (what the headless-browser test reads).

Every text from elsewhere (server error details, input rows, the reason a run ended) is
HTML-escaped and passed through :func:`~synap_bulk.redact.redact` with the job's token when it
is known: these files never hold the token, and the report would not even if one did.
"""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Console

from .errors import SynapBulkError
from .identity import _read_token
from .redact import redact
from .report import FAILURE_COLUMNS, format_duration
from .svgcharts import MEASURE_SCRIPT, Series, bar_chart, histogram, line_chart
from .timeline import TIMELINE_FILE, TimelineFile, read_timeline

if TYPE_CHECKING:
    from .spec import JobFile

__all__ = [
    "REPORT_FILE",
    "Failures",
    "job_secrets",
    "publish_report",
    "read_failures",
    "render_report",
    "report_run",
    "run_folders",
    "write_report",
]

REPORT_FILE = "report.html"
#: Failure rows shown in the report (the failures file has them all).
FIRST_ROWS = 10
#: Distinct failure reasons shown as bars; the rest are counted as "other reasons".
MAX_REASONS = 12
#: Points drawn per line at most (a long run's timeline is thinned evenly for the charts).
MAX_POINTS = 600
#: Markers drawn in the load chart; a larger pool is listed in full in the table below it.
MAX_MARKERS = 60

_COLORS = {
    "done": "#2b7a3d",
    "failed": "#c0392b",
    "skipped": "#8fa3b0",
    "requests": "#2c6fbb",
    "throttled": "#e67e22",
    "rate": "#666666",
    "in_flight": "#7d3c98",
    "retries": "#138d90",
    "before": "#9aa5b1",
    "after": "#2c6fbb",
}


@dataclass
class Failures:
    """What the failures file says: how many rows, the reasons by count, the first rows."""

    total: int = 0
    #: (reason, rows, the first row's detail, its line), most rows first.
    reasons: list[tuple[str, int, str, str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)


def read_failures(path: Path, *, first: int = FIRST_ROWS) -> Failures | None:
    """The failures file's reasons by count and its first rows; None when there is none."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError:
        return None
    header = text.split("\n", 1)[0]
    delimiter = next((d for d in (",", ";", "\t", "|") if "_line" in header.split(d)), ",")
    # The failures file keeps an input's too-long value whole (csv's field limit is 128 KiB):
    # read it with room for any of its fields, and show long values cut short.
    limit = csv.field_size_limit(max(len(text) + 1, csv.field_size_limit()))
    try:
        records = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
        columns = list(records[0]) if records else []
    except csv.Error:
        return None
    finally:
        csv.field_size_limit(limit)
    out = Failures(columns=[c for c in columns if c not in FAILURE_COLUMNS])
    reasons: Counter[str] = Counter()
    example: dict[str, tuple[str, str]] = {}
    for row in records:
        out.total += 1
        reason = _reason(row)
        reasons[reason] += 1
        example.setdefault(reason, (_cut(row.get("_error_detail") or ""), row.get("_line") or ""))
        if len(out.rows) < first:
            out.rows.append({k: _cut(v or "") for k, v in row.items() if k is not None})
    out.reasons = [(r, n, *example[r]) for r, n in reasons.most_common()]
    return out


def _cut(value: str, most: int = 300) -> str:
    """A value as the report shows it: at most ``most`` characters."""
    return value if len(value) <= most else f"{value[:most]}… ({len(value):,} characters)"


def _reason(row: Mapping[str, str | None]) -> str:
    """A failure's reason as the failures file classes it: status, code and field (the
    detail names the row's own values, so it is shown as an example, not counted by)."""
    status = (row.get("_error_status") or "").strip()
    code = (row.get("_error_code") or "").strip()
    where = (row.get("_error_field") or "").strip()
    head = " ".join(p for p in (status, code) if p)
    if where:
        head = f"{head} ({where})" if head else where
    return head or (row.get("_error_detail") or "").strip() or "no reason given"


def write_report(run_dir: Path, *, secrets: Sequence[str] = ()) -> Path:
    """Write ``report.html`` into ``run_dir`` from the files there (atomically); returns it.

    Raises OSError when the folder or its summary cannot be read, ValueError when the summary
    is not JSON.
    """
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if not isinstance(summary, dict):
        raise ValueError(f"{summary_path}: not a run summary")
    ended = datetime.fromtimestamp(summary_path.stat().st_mtime, UTC)
    page = render_report(
        summary,
        read_timeline(run_dir / TIMELINE_FILE),
        read_failures(run_dir / "failures.csv"),
        secrets=secrets,
        ended_at=ended,
    )
    path = run_dir / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def publish_report(run_dir: Path, console: Console, *, secrets: Sequence[str] = ()) -> Path | None:
    """The run's own report, written as it ends: a failure is a warning, never the run's end."""
    try:
        return write_report(run_dir, secrets=secrets)
    except (OSError, ValueError, csv.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        console.print(f"warning: cannot write {run_dir / REPORT_FILE}: {why}", markup=False)
        return None


def job_secrets(job: JobFile) -> list[str]:
    """The job's token when it can be read here (to redact with); none when it cannot."""
    api = job.spec.api
    try:
        token, _ = _read_token(api.token, job.resolve(api.token_file) if api.token_file else None)
    except SynapBulkError:
        return []
    return [token]


def run_folders(out: Path) -> dict[int, Path]:
    """The job's run folders under its out_dir (``runs/<n>``), by run number."""
    runs = out / "runs"
    found: dict[int, Path] = {}
    with contextlib.suppress(OSError):
        for p in runs.iterdir():
            if p.is_dir() and p.name.isdigit():
                found[int(p.name)] = p
    return dict(sorted(found.items()))


def report_run(
    out: Path, run: int | None = None, *, secrets: Sequence[str] = (), job: str = "the job"
) -> Path:
    """Write run ``run``'s report again from its folder (default: the last run); the last
    run's report is copied to the out_dir too, as the run itself does. Offline."""
    runs = run_folders(out)
    if not runs:
        raise SynapBulkError(f"{job}: no run to report on (no run folder in {out / 'runs'})")
    last = max(runs)
    chosen = last if run is None else run
    if chosen not in runs:
        have = ", ".join(str(n) for n in runs)
        raise SynapBulkError(f"{job}: there is no run {chosen} in {out / 'runs'} (runs: {have})")
    folder = runs[chosen]
    if not (folder / "summary.json").is_file():
        raise SynapBulkError(f"{folder}: no summary.json (the run never ended?); nothing to report")
    try:
        path = write_report(folder, secrets=secrets)
    except ValueError as exc:
        raise SynapBulkError(f"{folder / 'summary.json'}: cannot be read: {exc}") from None
    if chosen == last:
        shutil.copyfile(path, out / REPORT_FILE)
    return path


# --- the page -----------------------------------------------------------------------------


class _Text:
    """Escapes and redacts every text that came from elsewhere."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, value: object) -> str:
        text = str(value)
        for secret in self.secrets:
            text = redact(text, secret)
        return html.escape(text, quote=True)


def render_report(
    summary: Mapping[str, Any],
    timeline: TimelineFile | None,
    failures: Failures | None,
    *,
    secrets: Sequence[str] = (),
    ended_at: datetime | None = None,
) -> str:
    """The whole page as one string."""
    t = _Text(secrets)
    kind = str(summary.get("kind", ""))
    name = str(summary.get("job_name", ""))
    run_id = summary.get("run_id", 0)
    status = str(summary.get("status", ""))
    sections = [
        _summary_section(
            summary, t, ended_at, stream=timeline is not None and timeline.shape == "stream"
        ),
        _timeline_section(timeline),
        _latency_section(timeline, summary),
        _failures_section(failures, t),
    ]
    markers = (summary.get("task") or {}).get("markers")
    if isinstance(markers, list) and markers:
        sections.append(_markers_section(markers, t))
    title = f"{name} — run {run_id} ({status})"
    fill = {
        "title": t(title),
        "heading": t(name),
        "kind": t(kind),
        "run": t(run_id),
        "status": t(status),
        "status_class": "ok" if status == "completed" else "bad",
        "body": "\n".join(s for s in sections if s),
        "css": _CSS,
        "script": MEASURE_SCRIPT,
    }
    # One pass over the template only (not str.format: the CSS and script are full of braces,
    # and a filled-in text is never scanned again).
    return re.sub(r"\{(\w+)\}", lambda m: fill.get(m.group(1), m.group(0)), _PAGE)


def _summary_section(
    s: Mapping[str, Any], t: _Text, ended_at: datetime | None, *, stream: bool = False
) -> str:
    facts: list[tuple[str, str]] = []
    if s.get("reason"):
        facts.append(("Reason", t(s["reason"])))
    if s.get("acting_as"):
        who = t(s["acting_as"])
        if s.get("token_from"):
            who += f" <span class=dim>(token from {t(s['token_from'])})</span>"
        facts.append(("Acting as", who))
    facts.append(("Elapsed", t(format_duration(float(s.get("elapsed_s", 0.0))))))
    if ended_at is not None:
        facts.append(("Ended", t(ended_at.strftime("%Y-%m-%d %H:%M:%S UTC"))))
    facts.append(
        (
            "Requests",
            t(f"{int(s.get('requests', 0)):,} ({float(s.get('achieved_rate', 0.0)):.1f} req/s)"),
        )
    )
    facts.append(("Throttled (429)", t(f"{int(s.get('throttled', 0)):,}")))
    retries = int(s.get("retries", 0))
    item_retries = int(s.get("item_retries", 0))
    facts.append(("Retries", t(f"{retries:,} requests, {item_retries:,} items")))
    facts.append(
        (
            "Latency",
            t(
                f"p50 {float(s.get('latency_ms_p50', 0)):.0f} ms · "
                f"p95 {float(s.get('latency_ms_p95', 0)):.0f} ms · "
                f"p99 {float(s.get('latency_ms_p99', 0)):.0f} ms"
            ),
        )
    )
    for key, value in (s.get("task") or {}).items():
        if isinstance(value, str | int | float | bool) and value != "":
            facts.append((t(key.replace("_", " ").capitalize()), t(value)))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    this_run: Mapping[str, int] = s.get("this_run") or {}
    job_total: Mapping[str, int] = s.get("job_total") or s.get("counts") or {}
    keys = list(dict.fromkeys([*this_run, *job_total]))
    counts = "".join(
        f"<tr><th>{t(k.replace('_', ' '))}</th>"
        + (f"<td>{int(this_run.get(k, 0)):,}</td>" if this_run else "")
        + f"<td>{int(job_total.get(k, 0)):,}</td></tr>"
        for k in keys
        if this_run.get(k, 0) or job_total.get(k, 0) or k in ("done", "failed")
    )
    # A stream run (an export) counts what this run wrote; an item run, the job's items.
    only = "this run" if stream and not this_run else "job total"
    head = "<tr><th></th>" + ("<th>this run</th>" if this_run else "") + f"<th>{only}</th></tr>"
    return (
        "<section><h2>Summary</h2><div class=cols>"
        f"<table class=facts>{rows}</table>"
        f"<table class=counts>{head}{counts}</table></div></section>"
    )


def _rates(
    ts: Sequence[float], values: Sequence[float], min_dt: float = 0.1
) -> tuple[list[float], list[float]]:
    """Per-second rates of a running total over windows of at least ``min_dt`` seconds, each
    at its window's end: a sample taken just after another (the run's last, at its end) joins
    the window before it instead of making a rate out of a few milliseconds."""
    xs: list[float] = []
    ys: list[float] = []
    start = prev = 0
    for i in range(1, len(ts)):
        last = i == len(ts) - 1
        if ts[i] - ts[start] < min_dt and not last:
            continue
        if last and ts[i] - ts[start] < min_dt and xs:
            xs.pop()
            ys.pop()
            start = prev
        dt = ts[i] - ts[start]
        if dt > 0:
            xs.append(ts[i])
            ys.append(max(0.0, values[i] - values[start]) / dt)
        prev, start = start, i
    return xs, ys


def _thinned(tl: TimelineFile, most: int = MAX_POINTS) -> TimelineFile:
    """At most ``most`` evenly spread samples (the first and the last kept): a chart is 600
    pixels wide, and running totals thinned still give true rates over longer windows."""
    n = len(tl.samples)
    if n <= most:
        return tl
    keep = sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})
    return msgspec.structs.replace(tl, samples=[tl.samples[i] for i in keep])


def _timeline_section(tl: TimelineFile | None) -> str:
    if tl is None or len(tl.samples) < 2:
        return (
            "<section><h2>Over time</h2><p class=dim>No timeline: the run ended before a "
            "second sample (or its timeline.json is missing).</p></section>"
        )
    tl = _thinned(tl)
    ts = tl.series("t")
    done, failed = tl.series("done"), tl.series("failed")
    requests, throttled = tl.series("requests"), tl.series("throttled")
    charts: list[str] = []
    if tl.shape == "stream":
        charts.append(
            line_chart(
                "Rows exported",
                [Series("rows", ts, done, _COLORS["done"])],
                y_label="rows",
            )
        )
        charts.append(
            line_chart(
                "Pages (requests) so far",
                [Series("requests", ts, requests, _COLORS["requests"])],
                y_label="requests",
            )
        )
    else:
        finished = [d + f for d, f in zip(done, failed, strict=True)]
        ix, iy = _rates(ts, finished)
        charts.append(
            line_chart(
                "Items finished per second",
                [Series("items/s (done or to fix)", ix, iy, _COLORS["done"])],
                y_label="items/s",
            )
        )
        charts.append(
            line_chart(
                "Items so far",
                [
                    Series("done", ts, done, _COLORS["done"]),
                    Series("to fix", ts, failed, _COLORS["failed"]),
                ],
                y_label="items",
            )
        )
    rx, ry = _rates(ts, requests)
    tx, ty = _rates(ts, throttled)
    series = [
        Series("429s/s", tx, ty, _COLORS["throttled"], kind="bar"),
        Series("requests/s", rx, ry, _COLORS["requests"]),
    ]
    rate = tl.series("rate")
    if any(rate):
        series.append(Series("rate limit", ts, rate, _COLORS["rate"], kind="dash"))
    charts.append(line_chart("Requests and 429s per second", series, y_label="per second"))
    # A few 429s vanish beside hundreds of requests a second: their running total, on its own.
    charts.append(
        line_chart(
            "429s and retries so far",
            [
                Series("429s (throttled)", ts, throttled, _COLORS["throttled"]),
                Series("retries", ts, tl.series("retries"), _COLORS["retries"], kind="dash"),
            ],
            y_label="requests",
        )
    )
    charts.append(
        line_chart(
            "Requests in flight",
            [Series("in flight", ts, tl.series("in_flight"), _COLORS["in_flight"])],
            y_label="requests",
        )
    )
    return "<section><h2>Over time</h2><div class=grid>" + "".join(charts) + "</div></section>"


def _latency_section(tl: TimelineFile | None, s: Mapping[str, Any]) -> str:
    buckets = [(lo, hi, n) for lo, hi, n in (tl.latency_ms if tl else []) if n > 0]
    if not buckets:
        return ""
    marks = [(q, float(s.get(f"latency_ms_{q}", 0.0))) for q in ("p50", "p95", "p99")]
    return (
        "<section><h2>Latency</h2>"
        + histogram(
            "Request latency (ms, log scale)",
            buckets,
            [m for m in marks if m[1] > 0],
            color=_COLORS["requests"],
        )
        + "</section>"
    )


def _failures_section(f: Failures | None, t: _Text) -> str:
    if f is None or not f.total:
        return "<section><h2>Failures</h2><p>No row to fix.</p></section>"
    shown = f.reasons[:MAX_REASONS]
    rest = sum(r[1] for r in f.reasons[MAX_REASONS:])
    red = _COLORS["failed"]
    bars = [
        (t(_clip(r, 42)), t(f"{r}: {n:,} rows, e.g. line {line}: {d}"), [(float(n), red)])
        for r, n, d, line in shown
    ]
    if rest:
        more = f"{len(f.reasons) - MAX_REASONS} other reasons"
        bars.append((t(more), t(more), [(float(rest), red)]))
    chart = bar_chart(f"Reasons ({f.total:,} rows to fix)", bars, legend=[])
    reasons = "".join(
        f"<tr><td>{t(r)}</td><td class=num>{n:,}</td><td>{t(line)}</td>"
        f"<td>{t(_clip(d, 160))}</td></tr>"
        for r, n, d, line in f.reasons
    )
    chart += (
        "<div class=scroll><table class=rows><tr><th>reason</th><th>rows</th>"
        f"<th>first line</th><th>its detail</th></tr>{reasons}</table></div>"
    )
    cols = ["_line", *f.columns[:4], "_error_status", "_error_code", "_error_detail"]
    head = "".join(f"<th>{t(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{t(_clip(r.get(c, ''), 120))}</td>" for c in cols) + "</tr>"
        for r in f.rows
    )
    note = (
        f"<p class=dim>The first {len(f.rows)} of {f.total:,} rows; the failures file has them "
        "all, ready to fix and feed back.</p>"
    )
    return (
        f"<section><h2>Failures</h2>{chart}<h3>First rows</h3>"
        f"<div class=scroll><table class=rows><tr>{head}</tr>{body}</table></div>{note}</section>"
    )


def _markers_section(markers: list[Any], t: _Text) -> str:
    rows = [m for m in markers if isinstance(m, dict)]
    bars = []
    for m in rows[:MAX_MARKERS]:
        label = str(m.get("marker") or m.get("id") or "")
        if m.get("in_pool") is False:
            label += " (not in pool)"
        before, after = float(m.get("before", 0)), float(m.get("after", 0))
        tip = f"{label}: {before:.0f} before, {after:.0f} after"
        bars.append(
            (t(_clip(label, 40)), t(tip), [(before, _COLORS["before"]), (after, _COLORS["after"])])
        )
    legend = [("before", _COLORS["before"]), ("after", _COLORS["after"])]
    chart = bar_chart(f"Marker loads ({len(rows)} markers)", bars, legend=legend)
    table = "".join(
        f"<tr><td>{t(m.get('marker', ''))}</td><td>{t(m.get('id', ''))}</td>"
        f"<td>{int(m.get('before', 0))}</td><td>{int(m.get('after', 0))}</td>"
        f"<td>{int(m.get('applied', 0))}</td></tr>"
        for m in rows
    )
    return (
        f"<section><h2>Marker loads before and after</h2>{chart}<div class=scroll>"
        "<table class=rows><tr><th>marker</th><th>id</th><th>before</th><th>after</th>"
        f"<th>changed this run</th></tr>{table}</table></div></section>"
    )


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


_CSS = """
:root{color-scheme:light;--fg:#1d2329;--dim:#5f6b76;--line:#d8dee4}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
margin:0 auto;max-width:1280px;padding:20px 28px 40px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 10px;
border-bottom:1px solid var(--line);padding-bottom:4px}h3{font-size:14px;margin:16px 0 6px}
.sub{color:var(--dim)}.dim{color:var(--dim)}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:13px}
.badge.ok{background:#d8f0de;color:#1e5c2c}.badge.bad{background:#fbe3d6;color:#8a3a12}
.cols{display:flex;gap:32px;flex-wrap:wrap;align-items:flex-start}
table{border-collapse:collapse}th,td{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
table.facts th{color:var(--dim);font-weight:500;white-space:nowrap}
table.counts td{text-align:right;font-variant-numeric:tabular-nums}
table.counts th{font-weight:500}
table.rows{font-size:12.5px}table.rows th{border-bottom:1px solid var(--line)}
table.rows td{border-bottom:1px solid #eef1f4;max-width:420px;overflow-wrap:anywhere}
table.rows td.num{text-align:right}
.scroll{overflow-x:auto}
.grid{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0;flex:0 1 600px}figcaption{font-weight:600;margin-bottom:2px}
svg.chart{max-width:100%;height:auto;display:block}
svg text{font-size:11px;fill:var(--dim)}svg text.val{fill:var(--fg)}
svg .grid{stroke:#edf0f3}svg .axis{stroke:#9aa5b1}
svg .pct{stroke:#333;stroke-dasharray:3 3}svg text.pct{fill:#333;stroke:none}
.legend{display:flex;gap:14px;font-size:12px;color:var(--dim);margin:2px 0 4px}
.key i{display:inline-block;width:14px;height:4px;margin-right:5px;vertical-align:middle}
.key i.dashed{height:2px}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; \
style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><header><h1>{heading}</h1>
<div class=sub>{kind} · run {run} · <span class="badge {status_class}">{status}</span></div>
</header>
{body}
<footer class=dim><p>Written by synap_bulk from the run's folder (summary.json, timeline.json,
failures.csv); regenerate with <code>report JOB --run {run}</code>.</p></footer>
<script>{script}</script></body></html>
"""
