"""The run report: the timeline the run records, report.html, `report JOB`, and a real browser.

The browser tests render the report in Debian's chromium (headless) and read back what the
report's own script measured of each chart (``data-drawn``). Without chromium they fail, naming
the package to install; ``SKIP_BROWSER_TESTS=1`` is the only way to skip them.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from synap_bulk.clock import FakeClock
from synap_bulk.progress import Snapshot
from synap_bulk.report_html import read_failures, render_report, report_run, write_report
from synap_bulk.runner import run_job
from synap_bulk.spec import load_job
from synap_bulk.timeline import COLUMNS, Timeline, TimelineFile, read_timeline

DEMO = Path(__file__).resolve().parent.parent / "jobs" / "demo"
TOKEN = "sk_live_Zq8vT3mPx9Lw2Rb7Kd4N"

#: Anything in the page that would make the browser fetch: a URL with a scheme or a
#: protocol-relative one in an attribute, a CSS url() or @import.
_FETCHES = re.compile(
    r"""(?:\b(?:src|href|xlink:href|action|poster|data)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:|//))"""
    r"""|url\s*\(|@import""",
    re.IGNORECASE,
)


# --- the timeline --------------------------------------------------------------------------


class _Counters:
    def __init__(self) -> None:
        self.snap = Snapshot()

    def __call__(self) -> Snapshot:
        return self.snap


async def test_the_timeline_samples_often_at_first_then_once_a_second() -> None:
    clock = FakeClock(auto_advance=False)
    counters = _Counters()
    timeline = Timeline(counters, clock=clock, first_interval=0.5, first_seconds=1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(timeline.run)
        for step in range(8):
            while clock.sleepers == 0:
                await anyio.lowlevel.checkpoint()
            counters.snap = Snapshot(done=10 * (step + 1), requests=12 * (step + 1), throttled=step)
            clock.advance(0.5)
        tg.cancel_scope.cancel()
    data = timeline.data([(1.0, 2.0, 3)])
    times = data.series("t")
    assert times[:3] == [0.0, 0.5, 1.0]  # every first_interval while under first_seconds
    assert times[3:5] == [2.0, 3.0]  # then every interval
    assert data.series("done")[:3] == [0.0, 10.0, 20.0]
    assert data.series("throttled")[-1] == 7.0
    assert data.columns == list(COLUMNS)
    assert data.latency_ms == [(1.0, 2.0, 3)]


def test_a_long_run_keeps_bounded_samples_and_its_last_one() -> None:
    clock = FakeClock()
    counters = _Counters()
    timeline = Timeline(counters, clock=clock, max_samples=10)
    for i in range(25):
        counters.snap = Snapshot(done=i)
        timeline.sample()
        clock.advance(1.0)
    assert len(timeline.samples) <= 10
    assert timeline.samples[-1][1] == 24  # the latest counts are never thinned away
    assert timeline.interval > 1.0  # and it samples less often from then on


def test_the_timeline_file_round_trips_and_a_missing_one_is_none(tmp_path: Path) -> None:
    timeline = Timeline(_Counters(), clock=FakeClock())
    path = timeline.save(tmp_path, [(0.5, 0.6, 2)])
    assert path is not None
    back = read_timeline(path)
    assert back is not None and back.latency_ms == [(0.5, 0.6, 2)]
    assert read_timeline(tmp_path / "nothing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_timeline(tmp_path / "bad.json") is None


def test_the_timeline_cannot_be_written_is_a_warning(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    assert Timeline(_Counters()).save(tmp_path / "missing-folder", [], console) is None
    assert "warning: cannot write" in console.export_text()


# --- the page, from a run folder -----------------------------------------------------------


def _run_folder(tmp: Path) -> Path:
    """A run folder as a run leaves it: summary, timeline and failures file."""
    run = tmp / "out" / "runs" / "3"
    run.mkdir(parents=True)
    summary = {
        "job_name": "spring <intake>",
        "kind": "assign-markers",
        "status": "completed",
        "elapsed_s": 12.5,
        "requests": 240,
        "achieved_rate": 19.2,
        "throttled": 7,
        "latency_ms_p50": 20.0,
        "latency_ms_p95": 80.0,
        "latency_ms_p99": 120.0,
        "run_id": 3,
        "acting_as": "Ada <ada@school.example> on portal P1",
        "token_from": "job token",
        "this_run": {"done": 40, "failed": 3, "assigned": 40},
        "job_total": {"done": 90, "failed": 3, "assigned": 90},
        "task": {
            "role": "provisional",
            "markers": [
                {"marker": "m1@x.example", "id": "M1", "before": 2, "after": 9, "applied": 7},
                {"marker": "m2@x.example", "id": "M2", "before": 5, "after": 8, "applied": 3},
            ],
        },
    }
    (run / "summary.json").write_text(json.dumps(summary))
    rows = []
    for t in range(13):
        rows.append([t, 7 * t, t // 5, 0, 20 * t, t // 2, 20.0, t // 3, 4])
    timeline = TimelineFile(samples=rows, latency_ms=[(10.0, 11.0, 30), (19.0, 20.0, 150)])
    (run / "timeline.json").write_bytes(json.dumps(timeline_builtins(timeline)).encode())
    (run / "failures.csv").write_text(
        "attempt;marker;_line;_error_status;_error_code;_error_field;_error_detail\r\n"
        f"A1;m1;2;409;conflict;marker;already assigned <b>A1</b> token {TOKEN}\r\n"
        "A2;m1;3;409;conflict;marker;already assigned A2\r\n"
        "A3;m3;4;invalid;unknown;marker;no marker m3\r\n",
        encoding="utf-8",
    )
    return run


def timeline_builtins(t: TimelineFile) -> dict[str, object]:
    return {
        "version": t.version,
        "interval_s": t.interval_s,
        "columns": t.columns,
        "samples": t.samples,
        "latency_ms": [list(b) for b in t.latency_ms],
    }


def test_the_report_holds_the_summary_failures_and_marker_loads(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    page = write_report(run, secrets=[TOKEN]).read_text(encoding="utf-8")
    assert "Ada &lt;ada@school.example&gt; on portal P1" in page
    assert "spring &lt;intake&gt;" in page and "<intake>" not in page
    assert "<th>this run</th><th>job total</th>" in page
    assert "<th>done</th><td>40</td><td>90</td>" in page
    # Reasons by status, code and field, most rows first, with the first row's detail.
    failures = read_failures(run / "failures.csv")
    assert failures is not None and failures.total == 3
    assert [(r, n) for r, n, _, _ in failures.reasons] == [
        ("409 conflict (marker)", 2),
        ("invalid unknown (marker)", 1),
    ]
    assert "409 conflict (marker)" in page and "no marker m3" in page
    # Server texts are escaped and the token is cut out, even when a file held it.
    assert TOKEN not in page and "<b>A1</b>" not in page
    assert "&lt;b&gt;A1&lt;/b&gt;" in page
    assert "m1@x.example" in page and "Marker loads before and after" in page
    assert page.count('class="chart"') == 8  # 5 over time, latency, reasons, marker loads
    assert not _FETCHES.findall(page)


def test_a_run_without_timeline_or_failures_still_reports(tmp_path: Path) -> None:
    page = render_report(
        {"job_name": "j", "kind": "user-import", "status": "aborted", "reason": "401 no"},
        None,
        None,
    )
    assert "No timeline" in page and "No row to fix." in page and "401 no" in page


def test_report_run_defaults_to_the_last_run_and_names_a_missing_one(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    out = run.parent.parent
    (out / "runs" / "1").mkdir()
    path = report_run(out)
    assert path == run / "report.html" and (out / "report.html").is_file()
    with pytest.raises(Exception, match=r"there is no run 7 in .*runs \(runs: 1, 3\)"):
        report_run(out, 7)
    with pytest.raises(Exception, match=r"no summary.json"):
        report_run(out, 1)
    with pytest.raises(Exception, match="no run to report on"):
        report_run(tmp_path / "elsewhere")


# --- real runs -----------------------------------------------------------------------------


def _user_import(tmp: Path) -> Path:
    (tmp / "people.csv").write_text(
        "first_name,last_name,email,candidate_no\n"
        + "".join(f"P{i},Q{i},p{i}@x.example,C{i:03d}\n" for i in range(30))
        + ",,n@x.example,C900\n"
        + "Bad,Mail,not-an-email,C901\n"
    )
    job = tmp / "import.yaml"
    job.write_text(
        "version: 1\n"
        "name: report-import\n"
        "api: {base_url: sandbox, concurrency: 4}\n"
        "sandbox: {seed: 2, users: 10, groups: 1, latency_ms: 2}\n"
        "task:\n"
        "  kind: user-import\n"
        "  source: people.csv\n"
        "  match: externalId\n"
        "  mode: upsert\n"
        "  fields:\n"
        '    name: "{first_name} {last_name}"\n'
        '    emailAddress: "{email}"\n'
        '    externalId: "{candidate_no}"\n'
    )
    return job


def _demo(tmp: Path, name: str) -> Path:
    for p in DEMO.iterdir():
        if p.suffix in (".yaml", ".csv"):  # the job and its inputs, never a ledger or out/
            shutil.copy(p, tmp / p.name)
    return tmp / f"{name}.yaml"


def _run(job: Path, said: io.StringIO | None = None) -> Path:
    """Run the job in-process; its out_dir."""
    loaded = load_job(job)
    console = Console(file=said or io.StringIO(), width=200)
    code = anyio.run(lambda: run_job(loaded, console=console))
    assert code in (0, 1)
    return job.parent / "out" / loaded.spec.name


def test_every_run_writes_its_timeline_and_report(tmp_path: Path) -> None:
    said = io.StringIO()
    out = _run(_user_import(tmp_path), said)
    assert f"Report: {out / 'report.html'} (open it in a browser)" in said.getvalue()
    run = out / "runs" / "1"
    timeline = read_timeline(run / "timeline.json")
    assert timeline is not None and len(timeline.samples) >= 2
    assert timeline.series("done")[-1] == 30 and timeline.series("failed")[-1] == 2
    assert timeline.series("requests")[-1] > 0 and timeline.latency_ms
    page = (run / "report.html").read_text(encoding="utf-8")
    assert (out / "report.html").read_text(encoding="utf-8") == page
    assert "2 rows to fix" in page and "C900" in page
    assert not _FETCHES.findall(page)


def test_an_export_reports_rows_and_pages_over_time(tmp_path: Path) -> None:
    out = _run(_demo(tmp_path, "export-attempts"))
    timeline = read_timeline(out / "runs" / "1" / "timeline.json")
    assert timeline is not None and timeline.shape == "stream"
    assert timeline.series("done")[-1] == 6000  # rows, not items
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Rows exported" in page and "Pages (requests) so far" in page
    assert "Items finished per second" not in page
    assert "<tr><th></th><th>this run</th></tr>" in page  # an export counts its own rows


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAP_")}
    return subprocess.run(
        [sys.executable, "-m", "synap_bulk", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_report_command_regenerates_offline_and_refuses_a_missing_run(tmp_path: Path) -> None:
    job = _user_import(tmp_path)
    out = _run(job)
    # Pointed at a real portal with no token anywhere: `report` needs neither.
    text = job.read_text().replace("base_url: sandbox", "base_url: https://x.example")
    job.write_text(re.sub(r"(?m)^sandbox:.*\n", "", text))
    (out / "runs" / "1" / "report.html").unlink()
    (out / "report.html").unlink()
    done = _cli("report", str(job), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "runs" / "1" / "report.html")
    assert (out / "report.html").is_file()
    missing = _cli("report", str(job), "--run", "5", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"error: {job}: there is no run 5 in {out / 'runs'} (runs: 1)"
    )


# --- in a real browser ---------------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("SKIP_BROWSER_TESTS") == "1":
        pytest.skip("SKIP_BROWSER_TESTS=1: the report is not rendered in a browser")
    pytest.fail(
        "chromium is not installed: the report's charts are checked in a real browser "
        "(apt-get install -y chromium; .ci/run installs it), or set SKIP_BROWSER_TESTS=1"
    )


def _rendered(chromium: str, page: Path, tmp: Path) -> str:
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize(
    ("job", "charts"),
    [
        ("import", 7),  # 5 over time, latency, failure reasons
        ("assign-markers", 7),  # 5 over time, latency, marker loads
        ("export-attempts", 6),  # rows, pages, requests/429s, 429s so far, in flight, latency
        ("extra-time", 7),
    ],
)
def test_the_charts_draw_in_a_browser(tmp_path: Path, job: str, charts: int) -> None:
    chromium = _chromium()
    path = _user_import(tmp_path) if job == "import" else _demo(tmp_path, job)
    page = _run(path) / "report.html"
    html = page.read_text(encoding="utf-8")
    assert not _FETCHES.findall(html)
    dom = _rendered(chromium, page, tmp_path)
    assert f'data-charts="{charts}/{charts}"' in dom, re.findall(r"<svg[^>]*>", dom)
    drawn = re.findall(r'data-bbox="(\d+)x(\d+)" data-drawn="yes"', dom)
    assert len(drawn) == charts and all(int(w) > 0 for w, _ in drawn)


def test_rates_never_come_from_a_few_milliseconds() -> None:
    from synap_bulk.report_html import _rates

    # One a second, then the run's end 10 ms after the last sample with nothing new.
    xs, ys = _rates([0.0, 1.0, 2.0, 2.01], [0.0, 50.0, 100.0, 100.0])
    assert xs == [1.0, 2.01] and ys[0] == 50.0 and 49.0 < ys[1] < 50.0
    # A run shorter than a window still has its one rate.
    assert _rates([0.0, 0.013], [0.0, 8.0]) == ([0.013], [8.0 / 0.013])


def test_a_long_runs_charts_stay_small(tmp_path: Path) -> None:
    """Ten hours at one sample a second (thinned by the run to 7,200) draw at most 600 points
    a line, and the rates still come out right."""
    rows = [[float(t), 5 * t, 0, 0, 6 * t, 0, 0.0, 0, 3] for t in range(0, 36_000, 5)]
    page = render_report(
        {"job_name": "long", "kind": "user-import", "status": "completed"},
        TimelineFile(samples=rows),
        None,
    )
    lines = re.findall(r'<polyline[^>]* points="([^"]*)"', page)
    assert lines and all(len(p.split()) <= 600 for p in lines)
    assert len(page) < 200_000
    from synap_bulk.report_html import _rates, _thinned

    thin = _thinned(TimelineFile(samples=rows))
    _, rates = _rates(thin.series("t"), thin.series("done"))
    assert len(thin.samples) == 600 and thin.samples[-1] == rows[-1]
    assert all(abs(r - 5.0) < 1e-9 for r in rates)
