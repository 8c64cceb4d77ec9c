"""An export job run again and again against one long-lived server: files kept, baselines right,
exams by name, job-file errors at their line.

A standalone in-process sandbox plays the server that outlives the runs (``base_url: sandbox``
would start a new one, and a fresh ledger, every run).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from synap_bulk.client import SynapClient
from synap_bulk.errors import SpecError
from synap_bulk.items import RunContext, StreamProgress, StreamResult
from synap_bulk.jsonapi import AnyResource, NewResource, Relationship, ResourceIdentifier
from synap_bulk.ledger import Ledger
from synap_bulk.planning import plan_job
from synap_bulk.runner import EXIT_INVALID, EXIT_OK, ledger_path, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import JobFile, load_job
from synap_bulk.tasks import build_task
from synap_bulk.tasks.export_attempts import ExportAttemptsTask

#: Three exams of 60 attempts; the third is a draft (its attempts cannot be touched).
CONFIG = SandboxConfig(seed=5, users=40, exams=3, attempts_per_exam=60)


@pytest.fixture
async def sb(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sandbox]:
    async with Sandbox(CONFIG) as sandbox:
        monkeypatch.setenv("SYNAP_TOKEN", sandbox.token)
        yield sandbox


def _job(tmp: Path, url: str, task: str) -> Path:
    """A job file exporting from ``url``; ``task`` holds the task's keys besides ``kind``."""
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: lifecycle
api:
  base_url: {url}
  token: ${{SYNAP_TOKEN}}
  concurrency: 4
task:
  kind: export-attempts
  format: csv
  page_size: 25
  parallel: 2
{task}"""
    )
    return path


def _line(path: Path, text: str) -> int:
    """The line number of the first line of the job file that contains ``text``."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


async def _run(path: Path) -> tuple[int, str]:
    console = Console(file=io.StringIO(), width=300)
    code = await run_job(load_job(path), console=console, handle_signals=False)
    return code, console.file.getvalue()  # type: ignore[attr-defined]


async def _plan(path: Path) -> tuple[int, str]:
    console = Console(file=io.StringIO(), width=300)
    code = await plan_job(load_job(path), console=console)
    return code, console.file.getvalue()  # type: ignore[attr-defined]


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _ids(path: Path) -> list[str]:
    return [r["id"] for r in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))]


def _summary(tmp: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp / "out" / "lifecycle" / "summary.json").read_text())
    return data


def _published_attempts(sb: Sandbox) -> list[str]:
    drafts = {e.id for e in sb.store.exams.values() if e.status == "draft"}
    return sorted(a.id for a in sb.store.attempts.values() if a.exam_id not in drafts)


async def _touch(sb: Sandbox, ids: list[str]) -> None:
    """Give attempts extra time through the API: the server moves their ``updatedAt``."""
    async with SynapClient(sb.url, token=sb.token) as client:
        for attempt in ids:
            body = NewResource(
                type="AttemptTimerReset",
                attributes={"extraTimeInMs": 60_000, "reason": "lifecycle test"},
                relationships={
                    "attempt": Relationship(data=ResourceIdentifier(type="Attempt", id=attempt))
                },
            )
            await client.create(client.profile.timer_resets_path, body, AnyResource)


async def _task_run(
    job: JobFile, sb: Sandbox, started_at: datetime, *, stop_after_pages: int | None = None
) -> StreamResult:
    """One run of the job's stream task as the runner makes it (a run of its ledger, started
    at ``started_at``), asked to stop once ``stop_after_pages`` pages are in when given."""
    task = build_task(job, job.profile)
    assert isinstance(task, ExportAttemptsTask)
    stop = anyio.Event()
    pages = 0

    def progress(p: StreamProgress) -> None:
        nonlocal pages
        if p.done and stop_after_pages is not None:
            pages += 1
            if pages >= stop_after_pages:
                stop.set()

    async with (
        SynapClient(sb.url, token=sb.token) as client,
        await Ledger.open(
            ledger_path(job), job_name=job.spec.name, task_hash=job.task_hash(), input_hash=""
        ) as ledger,
    ):
        run_id = await ledger.begin_run()
        result = await task.run(
            client,
            ledger,
            stop=stop,
            progress=progress,
            run=RunContext(run_id=run_id, started_at=started_at),
        )
        await ledger.end_run(run_id, result.status, {})
    return result


# --- files: never replaced, named by the run -----------------------------------------------


async def test_since_last_run_keeps_the_first_file_and_writes_the_next_beside_it(
    tmp_path: Path, sb: Sandbox
) -> None:
    """A full export, then `since: last-run` with the same `output`: the first file stays
    byte-identical and the changed attempts go to attempts.2.csv, which every report names."""
    path = _job(tmp_path, sb.url, "  output: out/attempts.csv\n  since: last-run\n")
    first = tmp_path / "out" / "attempts.csv"
    code, _ = await _run(path)
    assert code == EXIT_OK
    assert sorted(_ids(first)) == sorted(sb.store.attempts)
    kept = first.read_bytes()
    changed = _published_attempts(sb)[:3]
    await _touch(sb, changed)

    code, text = await _run(path)
    assert code == EXIT_OK
    second = tmp_path / "out" / "attempts.2.csv"
    assert first.read_bytes() == kept
    assert sorted(_ids(second)) == sorted(changed)
    assert f"Export completed: 3 attempts, {second.stat().st_size} bytes -> {second} " in text
    task = _summary(tmp_path)["task"]
    assert task["output"] == str(second) and task["generation"] == 2 and task["since"]


async def test_an_existing_file_is_never_overwritten_by_a_first_export(
    tmp_path: Path, sb: Sandbox
) -> None:
    """With a fresh ledger (first generation) an existing file of that name is left alone: the
    ledger cannot tell whose it is, so the export takes the next free name."""
    path = _job(tmp_path, sb.url, "  output: out/attempts.csv\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "attempts.csv").write_text("precious\n")
    code, text = await _run(path)
    assert code == EXIT_OK
    assert (tmp_path / "out" / "attempts.csv").read_text() == "precious\n"
    second = tmp_path / "out" / "attempts.2.csv"
    assert sorted(_ids(second)) == sorted(sb.store.attempts)
    assert f"-> {second} " in text


async def test_run_and_date_placeholders_name_each_runs_file(tmp_path: Path, sb: Sandbox) -> None:
    """`{date}` is the run's UTC start date and `{run}` the ledger's run number: two runs, two
    files, each a complete export."""
    path = _job(tmp_path, sb.url, "  output: out/attempts-{date}-{run}.csv\n")
    before = datetime.now(UTC).strftime("%Y-%m-%d")
    assert (await _run(path))[0] == EXIT_OK
    assert (await _run(path))[0] == EXIT_OK
    after = datetime.now(UTC).strftime("%Y-%m-%d")
    files = sorted((tmp_path / "out").glob("attempts-*.csv"))
    names = [f.name for f in files]
    assert len(files) == 2
    assert names[0].endswith("-1.csv") and names[1].endswith("-2.csv")
    assert {n[len("attempts-") : len("attempts-") + 10] for n in names} <= {before, after}
    for f in files:
        assert sorted(_ids(f)) == sorted(sb.store.attempts)
    assert _summary(tmp_path)["task"]["output"] == str(files[1])


def test_an_unknown_placeholder_is_an_error_at_the_output_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`{day}` is not a placeholder: building the task (as `validate` does) fails at the
    `task.output` line, naming the placeholders there are."""
    monkeypatch.setenv("SYNAP_TOKEN", "p:x")
    path = _job(tmp_path, "https://synap.example/v3", "  output: out/attempts-{day}.csv\n")
    job = load_job(path)
    with pytest.raises(SpecError) as caught:
        build_task(job, job.profile)
    assert caught.value.line == _line(path, "output:") and caught.value.path == "task.output"
    assert "unknown placeholder {day}" in str(caught.value) and "{run}" in str(caught.value)


# --- resumes ------------------------------------------------------------------------------


async def test_a_stopped_export_resumes_into_its_own_file(tmp_path: Path, sb: Sandbox) -> None:
    """A stopped export's file exists when the job runs again; the run resumes into it (it is
    this generation's), ending with every attempt once and no second file."""
    path = _job(tmp_path, sb.url, "  output: out/attempts.csv\n")
    stopped = await _task_run(load_job(path), sb, datetime.now(UTC), stop_after_pages=2)
    out = tmp_path / "out" / "attempts.csv"
    assert stopped.status == "stopped" and 0 < len(_ids(out)) < 180
    code, text = await _run(path)
    assert code == EXIT_OK
    assert f"-> {out} (csv, mode pages, resumed)" in text
    ids = _ids(out)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(sb.store.attempts)
    assert sorted(p.name for p in out.parent.iterdir()) == ["attempts.csv", "lifecycle"]


async def test_a_resume_after_midnight_keeps_the_name_its_generation_chose(
    tmp_path: Path, sb: Sandbox
) -> None:
    """`{date}` is the date of the run that began the export: resumed the next day, it
    continues attempts-<first day>-<first run>.csv."""
    path = _job(tmp_path, sb.url, "  output: out/attempts-{date}-{run}.csv\n")
    job = load_job(path)
    evening = datetime(2026, 5, 1, 23, 59, tzinfo=UTC)
    stopped = await _task_run(job, sb, evening, stop_after_pages=1)
    done = await _task_run(job, sb, datetime(2026, 5, 2, 0, 1, tzinfo=UTC))
    out = tmp_path / "out" / "attempts-2026-05-01-1.csv"
    assert stopped.status == "stopped" and done.status == "completed"
    assert done.details["output"] == str(out) and done.details["resumed"] is True
    assert str(out) in done.message
    assert sorted(_ids(out)) == sorted(sb.store.attempts)
    assert [p.name for p in (tmp_path / "out").glob("attempts-*")] == [out.name]


async def test_since_last_run_is_based_on_the_generations_start_not_its_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export stopped, its attempts changed on the server, then resumed to completion: the
    next `since: last-run` exports exactly what changed after the first generation *began*
    (the resume's start would miss the changes made while it was stopped)."""
    wall = [0.0]
    async with Sandbox(CONFIG, wall=lambda: wall[0]) as sb:
        monkeypatch.setenv("SYNAP_TOKEN", sb.token)
        base = max(a.updated_at for a in sb.store.attempts.values()) + 3600.0

        def at(offset: float) -> datetime:
            return datetime.fromtimestamp(base + offset, tz=UTC)

        path = _job(tmp_path, sb.url, "  output: out/attempts.csv\n  since: last-run\n")
        job = load_job(path)
        stopped = await _task_run(job, sb, at(100), stop_after_pages=2)
        assert stopped.status == "stopped"
        published = _published_attempts(sb)
        wall[0] = base + 200
        while_stopped = published[:3]
        await _touch(sb, while_stopped)
        resumed = await _task_run(job, sb, at(300))
        assert resumed.status == "completed" and resumed.details["resumed"] is True
        wall[0] = base + 400
        after = published[10:12]
        await _touch(sb, after)

        again = await _task_run(job, sb, at(500))
    second = tmp_path / "out" / "attempts.2.csv"
    assert again.status == "completed" and again.details["output"] == str(second)
    assert again.details["since"] == at(100).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert sorted(_ids(second)) == sorted(while_stopped + after)


# --- exams by name, and job-file errors -----------------------------------------------------


async def test_an_exam_named_by_its_title_exports_that_exams_attempts(
    tmp_path: Path, sb: Sandbox
) -> None:
    """`exams: [Sandbox Exam 2]` exports that exam's attempts, each once even when its id is
    listed too; the summary records the exam's id."""
    exam = next(e for e in sb.store.exams.values() if e.name == "Sandbox Exam 2")
    path = _job(
        tmp_path,
        sb.url,
        f"  output: out/attempts.csv\n  exams:\n    - Sandbox Exam 2\n    - {exam.id}\n",
    )
    code, text = await _run(path)
    assert code == EXIT_OK, text
    want = sorted(a.id for a in sb.store.attempts.values() if a.exam_id == exam.id)
    ids = _ids(tmp_path / "out" / "attempts.csv")
    assert len(want) == 60 and sorted(ids) == want and len(ids) == len(set(ids))
    assert _summary(tmp_path)["task"]["exams"] == [exam.id]
    code, text = await _plan(path)
    assert code == EXIT_OK and f"exam 'Sandbox Exam 2' ({exam.id}): 60 attempts" in text


async def test_an_unknown_exam_name_is_one_error_line_at_its_line_and_no_file(
    tmp_path: Path, sb: Sandbox
) -> None:
    """An exam name the server does not know: exit 2, one `error:` line naming the job-file
    line of `task.exams[1]`, no output file; `plan` says the same."""
    path = _job(
        tmp_path,
        sb.url,
        "  output: out/attempts.csv\n  exams:\n    - Sandbox Exam 1\n    - Sandbox Exam 9\n",
    )
    want = (
        f"error: {path}:{_line(path, 'Sandbox Exam 9')}: task.exams[1]: "
        "no exam with id or name 'Sandbox Exam 9'"
    )
    code, text = await _run(path)
    assert code == EXIT_INVALID and _errors(text) == [want]
    assert not (tmp_path / "out" / "attempts.csv").exists()
    assert _summary(tmp_path)["status"] == "aborted"
    code, text = await _plan(path)
    assert code == EXIT_INVALID and _errors(text) == [want]


@pytest.mark.parametrize("mode", ["pages", "server"])
async def test_a_filter_value_the_server_refuses_is_one_error_line_at_its_line(
    tmp_path: Path, sb: Sandbox, mode: str
) -> None:
    """A status the server refuses (400): exit 2, one `error:` line at `task.statuses`, no
    output file and no export job created; `plan` says the same."""
    path = _job(
        tmp_path,
        sb.url,
        f"  output: out/attempts.csv\n  mode: {mode}\n  statuses: [submitted, finished]\n",
    )
    head = f"error: {path}:{_line(path, 'statuses:')}: task.statuses: the server refused this "
    code, text = await _run(path)
    errors = _errors(text)
    assert code == EXIT_INVALID and len(errors) == 1, text
    assert errors[0].startswith(head + "filter: unknown examStatus 'finished'")
    assert not (tmp_path / "out" / "attempts.csv").exists()
    assert sb.statistics().file_downloads == 0
    code, text = await _plan(path)
    assert code == EXIT_INVALID and len(_errors(text)) == 1
    assert _errors(text)[0].startswith(head)
