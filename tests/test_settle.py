"""Settling rows in doubt: unsafe requests whose outcome is unknown, answered by a person."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from rich.console import Console

from synap_bulk.items import Item, ItemError, Outcome
from synap_bulk.ledger import Ledger
from synap_bulk.runner import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    invoked_as,
    ledger_path,
    run_job,
)
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.settle import parse_applied, settle_job
from synap_bulk.spec import JobFile, load_job

CREATE = "attempt-timer-resets.create"

JOB = """\
version: 1
name: extra-time
api:
  base_url: {base_url}
  token: ${{SYNAP_TOKEN_SETTLE:-never-used}}
  concurrency: 4
task:
  kind: request
  source: rows.csv
  method: POST
  path: attempt-timer-resets
  safety: unsafe
{key}  body:
    data:
      type: AttemptTimerReset
      attributes:
        extraTimeInMs: "{{extra_ms:int}}"
        reason: "Access arrangement {{ref}}"
      relationships:
        attempt:
          data: {{type: Attempt, id: "{{attempt_id}}"}}
"""


def write_job(
    tmp_path: Path, base_url: str, rows: list[tuple[str, str, str]], *, key: bool = True
) -> JobFile:
    """A POST of one timer reset per row (attempt id, extra ms, ref), keyed by ref if ``key``."""
    lines = ["attempt_id,extra_ms,ref", *(",".join(r) for r in rows)]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    text = JOB.format(base_url=base_url, key='  key: "{ref}"\n' if key else "")
    (tmp_path / "job.yaml").write_text(text)
    return load_job(tmp_path / "job.yaml")


def faulty_sandbox() -> Sandbox:
    """A sandbox whose every write is carried out and then answered with a 500."""
    config = SandboxConfig(
        seed=3,
        users=4,
        groups=1,
        exams=1,
        attempts_per_exam=6,
        markers=1,
        fault_rate=1.0,
        faults={"commit-then-500": 1.0},
    )
    return Sandbox(config)


def attempts(sb: Sandbox, n: int) -> list[str]:
    return list(sb.store.attempts)[:n]


def resets_by_ref(sb: Sandbox) -> dict[str, int]:
    """How many timer resets the sandbox holds for each row's ref (taken from the reason)."""
    out: dict[str, int] = {}
    for reset in sb.store.timer_resets.values():
        ref = reset.reason.removeprefix("Access arrangement ")
        out[ref] = out.get(ref, 0) + 1
    return out


def creates(sb: Sandbox) -> int:
    return sb.statistics().by_route.get(CREATE, 0)


class Output:
    """A console writing into a buffer, and that buffer's text."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.console = Console(file=self.buffer, width=200, force_terminal=False)

    @property
    def text(self) -> str:
        return self.buffer.getvalue()


def quiet() -> Console:
    return Output().console


async def run(job: JobFile) -> int:
    return await run_job(job, console=quiet(), handle_signals=False)


async def settle(
    job: JobFile,
    *,
    applied: list[str] | None = None,
    not_applied: list[str] | None = None,
    csv_path: Path | None = None,
) -> tuple[int, str]:
    out = Output()
    code = await settle_job(
        job,
        applied=applied or [],
        not_applied=not_applied or [],
        csv_path=csv_path,
        console=out.console,
    )
    return code, out.text


async def statuses(job: JobFile) -> dict[str, str]:
    async with await Ledger.open_readonly(ledger_path(job)) as reader:
        return {k: s.status for k, s in (await reader.load_states()).items()}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)


async def test_settled_rows_are_not_resent_and_not_applied_ones_are_sent_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After writes that committed and then failed, settling two as applied and one as not
    applied makes the next run send exactly that one, once, and nothing of the others."""
    async with faulty_sandbox() as sb:
        monkeypatch.setenv("SYNAP_TOKEN_SETTLE", sb.token)
        a = attempts(sb, 4)
        rows = [(a[i], "600000", f"R{i + 1}") for i in range(4)]
        job = write_job(tmp_path, sb.url, rows)
        assert await run(job) == EXIT_FAILED
        assert creates(sb) == 4
        assert sb.statistics().committed_then_failed == 4
        assert await statuses(job) == dict.fromkeys(["R1", "R2", "R3", "R4"], "in_doubt")
        # The person checks the server: R1 and R2 took effect; for R3 they decide it did not.
        code, text = await settle(job, applied=["R1", "R2"], not_applied=["R3"])
        assert code == EXIT_OK
        assert "2 settled as applied, 1 as not applied\n" in text
        assert "1 still in doubt." in text
        assert creates(sb) == 4  # settling never contacts the server
        sb.configure(fault_rate=0.0)
        assert await run(job) == EXIT_FAILED  # R4 is still in doubt
        assert creates(sb) == 5
        assert resets_by_ref(sb) == {"R1": 1, "R2": 1, "R3": 2, "R4": 1}
        assert await statuses(job) == {
            "R1": "done",
            "R2": "done",
            "R3": "done",
            "R4": "in_doubt",
        }
        code, text = await settle(job, applied=["R4"])
        assert (code, text.splitlines()[0]) == (EXIT_OK, "1 settled as applied, 0 as not applied")
        assert await run(job) == EXIT_OK
        assert creates(sb) == 5
        assert resets_by_ref(sb) == {"R1": 1, "R2": 1, "R3": 2, "R4": 1}
    async with await Ledger.open_readonly(ledger_path(job)) as reader:
        actions = {k: s.action for k, s in (await reader.load_states()).items()}
    assert actions == {"R1": "settled", "R2": "settled", "R3": "created", "R4": "settled"}


async def test_the_failures_file_fed_back_with_an_applied_column_settles_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's own failures file with `applied` filled in settles the in-doubt rows it names
    (matched by _line and values, default keys), leaving blank rows such as invalid ones alone."""
    async with faulty_sandbox() as sb:
        monkeypatch.setenv("SYNAP_TOKEN_SETTLE", sb.token)
        a = attempts(sb, 3)
        rows = [
            (a[0], "600000", "R1"),
            (a[1], "ten", "R2"),
            (a[2], "900000", "R3"),
            (a[1], "1", "R4"),
        ]
        job = write_job(tmp_path, sb.url, rows, key=False)
        assert await run(job) == EXIT_FAILED
        failures = tmp_path / "out" / "extra-time" / "failures.csv"
        columns, found = read_csv(failures)
        assert [(r["_line"], r["_error_status"]) for r in found] == [
            ("2", "in-doubt"),
            ("3", "invalid"),
            ("4", "in-doubt"),
            ("5", "in-doubt"),
        ]
        answers = {"2": "Yes", "3": "", "4": " n ", "5": ""}
        for r in found:
            r["applied"] = answers[r["_line"]]
        write_csv(tmp_path / "checked.csv", [*columns, "applied"], found)
        sb.configure(fault_rate=0.0)
        code, text = await settle(job, csv_path=tmp_path / "checked.csv")
        assert code == EXIT_OK
        assert "1 settled as applied, 1 as not applied; 2 rows without an answer" in text
        assert "1 still in doubt." in text
        assert await run(job) == EXIT_FAILED  # R4 in doubt, R2 invalid
        assert creates(sb) == 4  # three in run 1, R3 once more
        assert resets_by_ref(sb) == {"R1": 1, "R3": 2, "R4": 1}
        # The same file again: the settled rows are gone from the ledger's failures.
        code, text = await settle(job, csv_path=tmp_path / "checked.csv")
    assert code == EXIT_FAILED
    assert (
        f"not settled: {tmp_path / 'checked.csv'}:2: the ledger has no failed or in-doubt item "
        "at line 2 (settled already?)"
    ) in text
    assert "0 settled as applied, 0 as not applied; 2 rows matching no item" in text


async def in_doubt_ledger(tmp_path: Path) -> JobFile:
    """A job (its server never listening) whose ledger holds R1..R3 in doubt and R9 done."""
    job = write_job(tmp_path, "http://127.0.0.1:9/v3", [("a1", "1", "R1")])
    ledger = await Ledger.open(
        ledger_path(job), job_name="extra-time", task_hash=job.task_hash(), input_hash="i"
    )
    async with ledger:
        for n in (1, 2, 3):
            row = {"attempt_id": f"a{n}", "extra_ms": "1", "ref": f"R{n}"}
            it = Item(key=f"R{n}", line=n + 1, row=row)
            ledger.record(it, "in_doubt", 1, ItemError(status="in-doubt", code="ambiguous"))
        ledger.record(Item(key="R9", line=10), Outcome(status="done", action="created"), 1)
    return job


async def test_a_bad_applied_value_is_refused_naming_its_line(tmp_path: Path) -> None:
    """An `applied` value other than yes/no (true/false, 1/0, y/n) or blank is an error naming
    the line of the CSV itself (not its _line), and nothing is settled, not even the good rows."""
    job = await in_doubt_ledger(tmp_path)
    answers = tmp_path / "answers.csv"
    answers.write_text("ref,_line,applied\nR1,2,yes\nR3,4,maybe\nR2,3,FALSE\n")
    code, text = await settle(job, csv_path=answers)
    assert code == EXIT_INVALID
    assert text.splitlines() == [
        f"error: {answers}:3: applied: expected yes or no (or true/false, 1/0, y/n), got 'maybe'",
        "Nothing was settled.",
    ]
    assert await statuses(job) == {
        "R1": "in_doubt",
        "R2": "in_doubt",
        "R3": "in_doubt",
        "R9": "done",
    }


async def test_a_row_whose_values_differ_from_the_ledger_is_not_settled(tmp_path: Path) -> None:
    """A CSV row whose _line names an in-doubt item but whose values differ from the row the
    ledger kept (another file, an edited row) is not settled; the message names the key."""
    job = await in_doubt_ledger(tmp_path)
    answers = tmp_path / "answers.csv"
    answers.write_text("attempt_id;ref;_line;applied\na1;R1;2;y\na2;R7;3;y\n")  # by hand, with ;
    code, text = await settle(job, csv_path=answers)
    assert code == EXIT_FAILED
    assert (
        f"not settled: {answers}:3: line 3 is item 'R2' in the ledger, but its ref there is "
        "'R2', here 'R7'; if it is the same row, settle it by key"
    ) in text
    assert "1 settled as applied, 0 as not applied; 1 row matching no item" in text
    assert (await statuses(job))["R2"] == "in_doubt"


async def test_unknown_and_not_in_doubt_keys_are_reported(tmp_path: Path) -> None:
    """Keys the ledger lacks or whose item is not in doubt get one line each and exit code 1;
    the others are settled."""
    job = await in_doubt_ledger(tmp_path)
    code, text = await settle(job, applied=["R1", "R9"], not_applied=["R2", "nope"])
    assert code == EXIT_FAILED
    assert text.splitlines() == [
        "not settled: R9: not in doubt (it is done)",
        "not settled: nope: unknown: the ledger has no item with this key",
        "1 settled as applied, 1 as not applied; 1 not in doubt; 1 unknown key",
        f"Run the job again to send the 1 not applied: {invoked_as()} run {job.path}",
        "1 still in doubt.",
    ]
    assert await statuses(job) == {"R1": "done", "R3": "in_doubt", "R9": "done"}


async def test_one_key_both_applied_and_not_is_refused(tmp_path: Path) -> None:
    """A key given as applied and as not applied is bad input: exit 2, nothing settled."""
    job = await in_doubt_ledger(tmp_path)
    code, text = await settle(job, applied=["R1", "R2"], not_applied=["R2"])
    assert code == EXIT_INVALID
    assert "'R2' is given both as applied (command line) and as not applied" in text
    assert (await statuses(job))["R1"] == "in_doubt"


async def test_no_ledger_is_refused_and_none_is_created(tmp_path: Path) -> None:
    """A job that never ran has no ledger: settling says so in one line, exits 2 and leaves no
    ledger behind."""
    job = write_job(tmp_path, "http://127.0.0.1:9/v3", [("a1", "1", "R1")])
    code, text = await settle(job, applied=["R1"])
    assert code == EXIT_INVALID
    assert text.splitlines() == [
        f"error: {job.path}: no ledger at {ledger_path(job)}: the job has not run, "
        "nothing is in doubt"
    ]
    assert not ledger_path(job).exists()


async def test_a_changed_task_section_is_refused(tmp_path: Path) -> None:
    """When the job's task section changed since its ledger was started, settling is refused
    (the ledger's own check) and nothing changes."""
    job = await in_doubt_ledger(tmp_path)
    text = (tmp_path / "job.yaml").read_text().replace("Access arrangement", "Arrangement")
    (tmp_path / "job.yaml").write_text(text)
    changed = load_job(tmp_path / "job.yaml")
    code, out = await settle(changed, applied=["R1"])
    assert code == EXIT_INVALID
    assert out.startswith("error: cannot settle: ")
    assert "the job's task section changed" in out
    assert (await statuses(job))["R1"] == "in_doubt"


async def test_a_run_in_progress_is_not_settled_under(tmp_path: Path) -> None:
    """While a run holds the job's ledger, settling is refused (exit 2) and changes nothing."""
    job = await in_doubt_ledger(tmp_path)
    running = await Ledger.open(
        ledger_path(job), job_name="extra-time", task_hash=job.task_hash(), input_hash="i"
    )
    async with running:
        code, text = await settle(job, applied=["R1"])
    assert code == EXIT_INVALID
    assert text.startswith("error: cannot settle: ")
    assert "another run of this job is using the ledger" in text
    assert (await statuses(job))["R1"] == "in_doubt"


async def test_the_embedded_sandbox_has_nothing_to_settle(tmp_path: Path) -> None:
    """A job on `base_url: sandbox` starts afresh every run, so settling is refused."""
    job = write_job(tmp_path, "sandbox", [("a1", "1", "R1")])
    code, text = await settle(job, applied=["R1"])
    assert code == EXIT_INVALID
    assert "embedded sandbox" in text


def test_applied_values() -> None:
    """yes/no, true/false, 1/0 and y/n in any case and spacing are answers; blank is none."""
    for value in ("yes", "Y", " TRUE ", "1"):
        assert parse_applied(value) is True
    for value in ("no", "N", "false", "0 "):
        assert parse_applied(value) is False
    assert parse_applied("  ") is None
    with pytest.raises(ValueError, match="got 'ja'"):
        parse_applied("ja")
