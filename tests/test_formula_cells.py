"""Formula cells in failures.csv and success.csv: escaped so a spreadsheet never runs them, and
unescaped when the file is fed back, so the next run sends exactly the original values."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from rich.console import Console

from synap_bulk.items import Item, ItemError
from synap_bulk.ledger import Ledger
from synap_bulk.report import FailuresWriter, SuccessWriter, escape_formula
from synap_bulk.runner import EXIT_FAILED, EXIT_OK, ledger_path, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.sinks import FORMULA_START
from synap_bulk.sources import CsvSource, unescape_formula
from synap_bulk.spec import load_job

from .test_settle import settle, statuses, write_job

#: Every formula start, already-escaped values (one and two apostrophes), and plain ones.
VALUES = [
    "=1+1",
    "+44 20 7946 0958",
    "-5",
    "@SUM(A1:A9)",
    "\tTabbed",
    "\rCarriage",
    "'=already quoted",
    "''+twice",
    "'''-thrice",
    "'plain apostrophe",
    "'",
    "''",
    "plain",
    "",
    "a=b",
]


def _cells(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def test_escape_is_reversed_exactly() -> None:
    for value in VALUES:
        escaped = escape_formula(value)
        assert not escaped or escaped[0] not in FORMULA_START, value
        assert unescape_formula(escaped) == value


def test_failures_and_success_files_hold_no_formula_and_read_back_exactly(tmp_path: Path) -> None:
    rows = [{"name": v, "email": f"u{i}@x.io"} for i, v in enumerate(VALUES)]
    failures, success = tmp_path / "failures.csv", tmp_path / "success.csv"
    with FailuresWriter(failures, ["name", "email"]) as fw:
        for i, row in enumerate(rows, start=2):
            fw.write(i, row, ItemError(status="400", code="bad", detail="-boom"))
    with SuccessWriter(success, ["name", "email"]) as sw:
        for i, row in enumerate(rows, start=2):
            sw.write(i, row, "created", f"u-{i}")
    for path in (failures, success):
        for record in _cells(path):
            assert all(not c or c[0] not in FORMULA_START for c in record), record
        back = [{c: r.values[c] for c in ("name", "email")} for r in CsvSource(path)]
        assert back == rows


def test_a_plain_csv_is_never_unescaped(tmp_path: Path) -> None:
    """Only our result files are unescaped: a user's own CSV with `'=x` keeps its apostrophe."""
    path = tmp_path / "in.csv"
    path.write_text("_line,name\n2,'=x\n")  # _line alone: not one of our result files
    (row,) = list(CsvSource(path))
    assert row.values["name"] == "'=x"


CANDIDATES = [
    ("C1", "=1+1"),
    ("C2", "+44"),
    ("C3", "-Dash"),
    ("C4", "@SUM(A1)"),
    ("C5", "'=quoted"),
    ("C6", "''+two"),
    ("C7", "'plain"),
]


async def test_a_failures_file_fed_back_sends_the_original_values(tmp_path: Path) -> None:
    """Rows with formula-looking names fail (no email), are fixed in the failures file as text
    (a person filling the email column), fed back with --source: the server gets the names
    exactly as in the original CSV."""
    source = tmp_path / "candidates.csv"
    with source.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["candidate_no", "first_name", "email"])
        w.writerows((no, first, "") for no, first in CANDIDATES)
    async with Sandbox(SandboxConfig(users=0, groups=1, seed=1)) as sb:
        (tmp_path / "token.txt").write_text(sb.token)
        job = tmp_path / "job.yaml"
        job.write_text(
            f"""version: 1
name: formula
api:
  base_url: {sb.url}
  token_file: token.txt
task:
  kind: user-import
  source: candidates.csv
  match: externalId
  fields:
    name: "{{first_name}}"
    emailAddress: "{{email}}"
    externalId: "{{candidate_no}}"
"""
        )
        console = Console(file=io.StringIO(), width=120)
        assert await run_job(load_job(job), console=console) == EXIT_FAILED
        failures = tmp_path / "out" / "formula" / "failures.csv"
        cells = _cells(failures)
        for record in cells:
            assert all(not c or c[0] not in FORMULA_START for c in record), record
        # Fixed as text: the email column filled in, every other cell left as written.
        header, body = cells[0], cells[1:]
        at = header.index("email")
        fixed = tmp_path / "fixed.csv"
        with fixed.open("w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for record in body:
                record[at] = f"{record[0].lower()}@example.edu"
                w.writerow(record)
        code = await run_job(load_job(job), source=fixed, console=console)
        names = {
            u.external_id: u.name
            for u in sb.store.users.values()
            if u.external_id in dict(CANDIDATES)
        }
    assert code == EXIT_OK, console.file.getvalue()  # type: ignore[attr-defined]
    assert names == dict(CANDIDATES)


async def test_settle_matches_a_failures_row_whose_values_were_escaped(tmp_path: Path) -> None:
    """`settle --csv failures.csv` compares the row's values with the ledger's as the run had
    them: an escaped `'-1` in the file is the `-1` the ledger kept."""
    job = write_job(tmp_path, "http://127.0.0.1:9/v3", [("a1", "-1", "=R1")])
    ledger = await Ledger.open(
        ledger_path(job), job_name="extra-time", task_hash=job.task_hash(), input_hash="i"
    )
    async with ledger:
        row = {"attempt_id": "a1", "extra_ms": "-1", "ref": "=R1"}
        item = Item(key="R1", line=2, row=row)
        ledger.record(item, "in_doubt", 1, ItemError(status="in-doubt", code="ambiguous"))
    failures = tmp_path / "failures.csv"
    with FailuresWriter(failures, list(row)) as fw:
        fw.write(2, row, ItemError(status="in-doubt", code="ambiguous"))
    header, *body = _cells(failures)
    assert body[0][:3] == ["a1", "'-1", "'=R1"]
    with (tmp_path / "checked.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*header, "applied"])
        w.writerows([*r, "yes"] for r in body)
    code, text = await settle(job, csv_path=tmp_path / "checked.csv")
    assert code == EXIT_OK, text
    assert await statuses(job) == {"R1": "done"}
