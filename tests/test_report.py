"""Reports: failures file round-trip, success and plan files, csv_safe, the summary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from synap_bulk.items import ItemError, PlanRow
from synap_bulk.report import (
    COUNT_KEYS,
    FAILURE_COLUMNS,
    FailuresWriter,
    PlanWriter,
    SuccessWriter,
    Summary,
    csv_safe,
    format_duration,
)
from synap_bulk.sources import CsvSource

AWKWARD = {
    "email": '=HYPERLINK("http://x")@x.io',
    "name": 'Ann "Nan" O\'Neil, Jr',
    "phone": "+44 20 7946 0958",
    "note": "two\r\nlines; and a \u00e9",
}


class _Stats(msgspec.Struct):
    requests: int = 1200
    retries: int = 7
    throttled: int = 3
    pauses: int = 1
    latency_ms_p50: float = 12.5
    latency_ms_p95: float = 40.0
    latency_ms_p99: float = 81.0
    # A field the summary must not copy (stands in for anything else the client keeps).
    in_flight: int = 4


def test_failures_file_round_trips_as_next_source(tmp_path: Path) -> None:
    """Read back with CsvSource, the failures file has the input's columns with values unchanged."""
    source_path = tmp_path / "in.csv"
    with source_path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(list(AWKWARD))
        w.writerow(list(AWKWARD.values()))
    source = CsvSource(source_path, delimiter=";")
    (row,) = list(source)
    out = tmp_path / "out" / "failures.csv"
    error = ItemError(status="400", code="taken", field="email", detail="=1+1 already taken")
    with FailuresWriter(out, source.header, delimiter=";") as fw:
        fw.write(row.line, row.values, error)

    back = CsvSource(out, delimiter=";", required=source.header)
    assert back.header == [*source.header, *FAILURE_COLUMNS]
    (again,) = list(back)
    assert {c: again.values[c] for c in source.header} == row.values == AWKWARD
    assert again.values["_line"] == "2"
    assert again.values["_error_status"] == "400"
    assert again.values["_error_code"] == "taken"
    assert again.values["_error_field"] == "email"
    assert again.values["_error_detail"] == "'=1+1 already taken"


def test_failures_file_of_a_failures_file_keeps_one_header(tmp_path: Path) -> None:
    """Re-running on a failures file replaces the _ columns instead of adding a second set."""
    first = tmp_path / "failures.csv"
    with FailuresWriter(first, ["email"]) as fw:
        fw.write(2, {"email": "a@x.io"}, ItemError(status="invalid", code="email"))
    source = CsvSource(first)
    (row,) = list(source)
    second = tmp_path / "failures2.csv"
    with FailuresWriter(second, source.header) as fw:
        fw.write(row.line, row.values, ItemError(status="422", detail="still bad"))
    back = CsvSource(second)
    assert back.header == ["email", *FAILURE_COLUMNS]
    assert [r.values for r in back] == [
        {
            "email": "a@x.io",
            "_line": "2",
            "_error_status": "422",
            "_error_code": "",
            "_error_field": "",
            "_error_detail": "still bad",
        }
    ]


def test_failures_writer_without_rows_removes_stale_file(tmp_path: Path) -> None:
    """No failure this run means no failures file, even if an earlier run left one."""
    path = tmp_path / "failures.csv"
    path.write_text("stale\n")
    with FailuresWriter(path, ["email"]):
        pass
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_error_leaves_previous_file(tmp_path: Path) -> None:
    """An exception while writing keeps the previous file and leaves no temporary behind."""
    path = tmp_path / "failures.csv"
    path.write_text("previous\n")
    with pytest.raises(RuntimeError), FailuresWriter(path, ["email"]) as fw:
        fw.write(2, {"email": "a"}, ItemError(status="invalid"))
        raise RuntimeError("boom")
    assert path.read_text() == "previous\n"
    assert list(tmp_path.iterdir()) == [path]


def test_success_and_plan_files(tmp_path: Path) -> None:
    """The success file adds line/action/remote id; the plan file lists each planned row."""
    success = tmp_path / "success.csv"
    with SuccessWriter(success, ["email", "_action"]) as sw:
        sw.write(3, {"email": "-a@x.io"}, "created", "u-1")
    assert sw.actions == {"created": 1}
    # An input value that starts like a formula is escaped (reversibly) in the success file too.
    assert success.read_bytes() == b"email,_line,_action,_remote_id\r\n'-a@x.io,3,created,u-1\r\n"
    empty = tmp_path / "empty-success.csv"
    with SuccessWriter(empty, ["email"]):
        pass
    assert empty.read_bytes() == b"email,_line,_action,_remote_id\r\n"

    plan = tmp_path / "plan.csv"
    with PlanWriter(plan) as pw:
        pw.write(PlanRow(key="emailAddress:a@x.io", line=2, action="create"))
        pw.write(
            PlanRow(
                key="k", line=3, action="update", detail="=name: A -> B", remote_id="7", label="B"
            )
        )
    with plan.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["_line", "key", "name", "action", "remote_id", "detail"],
        ["2", "emailAddress:a@x.io", "", "create", "", ""],
        ["3", "k", "B", "update", "7", "'=name: A -> B"],
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=SUM(A1:A2)", "'=SUM(A1:A2)"),
        ("+1", "'+1"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(1)", "'@SUM(1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("", ""),
        ("plain text", "plain text"),
        ("a=b", "a=b"),
        ("'=already", "'=already"),
    ],
)
def test_csv_safe(value: str, expected: str) -> None:
    """Formula-looking text gets a leading quote; anything else is untouched."""
    assert csv_safe(value) == expected


def test_summary_build_json_and_fields() -> None:
    """The summary has exactly the documented fields, derived rate and every count key."""
    summary = Summary.build(
        job_name="spring",
        kind="user-import",
        status="completed",
        counts={"done": 95, "created": 90, "updated": 5, "failed": 2, "pending": 0},
        skipped=10,
        elapsed_s=12.0,
        client=_Stats(),
        task={"groups_added": 40},
        failures_file="out/failures.csv",
        success_file="out/success.csv",
    )
    data = json.loads(summary.to_json())
    assert set(data) == {
        "job_name",
        "kind",
        "status",
        "reason",
        "counts",
        "elapsed_s",
        "requests",
        "achieved_rate",
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_ms_p99",
        "retries",
        "item_retries",
        "reconciled",
        "throttled",
        "pauses",
        "task",
        "failures_file",
        "success_file",
        "run_id",
        "run_dir",
        "this_run",
        "job_total",
        "acting_as",
        "portal_id",
        "token_from",
    }
    assert set(COUNT_KEYS) <= set(data["counts"])
    assert data["counts"]["skipped"] == 10
    assert data["counts"]["in_doubt"] == 0
    assert data["achieved_rate"] == 100.0
    assert data["latency_ms_p95"] == 40.0
    assert data["throttled"] == 3
    assert summary.to_builtins() == data


def test_summary_write_and_render(tmp_path: Path) -> None:
    """The summary file decodes back to the same summary, and renders as a few plain lines."""
    summary = Summary.build(
        job_name="spring",
        kind="user-import",
        status="stopped",
        reason="interrupted",
        counts={"done": 1234, "created": 1000, "unchanged": 234, "failed": 3},
        skipped=0,
        elapsed_s=372.0,
        client=_Stats(),
        item_retries=5,
        reconciled=2,
        task={"groups_added": 40, "per_marker": {"m": 1}},
        failures_file="out/failures.csv",
    )
    path = tmp_path / "summary.json"
    summary.write(path)
    assert msgspec.json.decode(path.read_bytes(), type=Summary) == summary
    assert summary.render().splitlines() == [
        "spring (user-import): stopped in 6m12s - interrupted",
        "  items     1,234 done (1,000 created, 234 unchanged)",
        "  to fix    3 failed · 0 invalid · 0 in doubt",
        "  requests  1,200 at 3.2 req/s · 3 throttled (429) · 1 pauses",
        "  retries   7 requests re-sent · 5 items tried again · 2 reconciled",
        "  latency   p50 12 ms · p95 40 ms · p99 81 ms",
        "  task      groups_added 40",
        "  failures  out/failures.csv",
    ]


def test_a_stopped_run_shows_what_the_resume_will_take_up() -> None:
    """Items in flight and not yet started are listed with the done ones, not as rows to fix."""
    summary = Summary.build(
        job_name="spring",
        kind="user-import",
        status="stopped",
        counts={"done": 217, "created": 217, "invalid": 9, "in_flight": 1, "not_started": 173},
        elapsed_s=3.4,
    )
    lines = summary.render().splitlines()
    assert lines[1:3] == [
        "  items     217 done (217 created) · 1 in flight · 173 not started",
        "  to fix    0 failed · 9 invalid · 0 in doubt",
    ]


def test_actions_of_any_task_and_long_rows_wrap_under_their_first_figure() -> None:
    """Counts that are not statuses are actions; a row too wide for 80 columns continues below."""
    summary = Summary.build(
        job_name="markers",
        kind="assign-markers",
        status="completed",
        counts={"done": 47, "assigned": 47},
        elapsed_s=0.05,
        task={
            "role": "provisional",
            "action": "assign",
            "strategy": "balanced",
            "unsatisfied": 0,
            "applied": 94,
            "load": "11-12 per marker (was 0-0)",
        },
    )
    lines = summary.render(width=80).splitlines()
    assert lines[1] == "  items     47 done (47 assigned)"
    assert lines[-2:] == [
        "  task      role provisional · action assign · strategy balanced · unsatisfied 0",
        "            applied 94 · load 11-12 per marker (was 0-0)",
    ]
    assert all(len(line) <= 80 for line in lines)


def test_format_duration() -> None:
    """Durations are short: seconds, then minutes and seconds, then hours and minutes."""
    assert format_duration(0.043) == "0.04s"
    assert format_duration(4.25) == "4.2s"
    assert format_duration(59.96) == "1m00s"
    assert format_duration(372) == "6m12s"
    assert format_duration(7500) == "2h05m"


def test_bom_mirrors_the_input(tmp_path: Path) -> None:
    """With bom=True the file starts with a BOM and still reads back with the same header."""
    path = tmp_path / "failures.csv"
    with FailuresWriter(path, ["email"], bom=True) as fw:
        fw.write(2, {"email": "é@x.io"}, ItemError(status="invalid"))
    assert path.read_bytes().startswith(b"\xef\xbb\xbfemail,_line,")
    source = CsvSource(path)
    assert source.has_bom
    assert [r.values["email"] for r in source] == ["é@x.io"]


def test_summary_prints_verbatim_through_rich() -> None:
    """Brackets in a reason are shown as text, not taken for rich markup."""
    summary = Summary.build(
        job_name="j", kind="request", status="aborted", reason="401 [traceId abc]", elapsed_s=1
    )
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(summary)
    assert out.getvalue().splitlines()[0] == "j (request): aborted in 1.0s - 401 [traceId abc]"
