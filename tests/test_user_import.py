"""The user-import task end to end: plan, run, reconciliation, kill and resume."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from anyio.abc import Process
from rich.console import Console

from synap_bulk.clock import FakeClock
from synap_bulk.errors import ConnectError, SpecError
from synap_bulk.planning import plan_job
from synap_bulk.profile import DEFAULT_PROFILE
from synap_bulk.runner import EXIT_FAILED, EXIT_OK, run_job
from synap_bulk.sampledata import CandidateFile, write_candidates
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job
from synap_bulk.tasks.user_import import GroupBatcher

from .requests_seen import RequestsSeen

DEMO_DIR = Path(__file__).resolve().parent.parent / "jobs" / "demo"

COHORTS = ["Cohort 01", "Cohort 02", "Cohort 03"]


def _job(
    tmp: Path,
    base_url: str,
    *,
    extra_task: str = "",
    sandbox: str = "",
    api: str = "",
    name: str = "import",
) -> Path:
    text = f"""version: 1
name: {name}
api:
  base_url: {base_url}
  concurrency: 16
{api}{sandbox}task:
  kind: user-import
  source: candidates.csv
  match: externalId
  mode: upsert
  fields:
    name: "{{first_name}} {{last_name}}"
    emailAddress: "{{email}}"
    externalId: "{{candidate_no}}"
  groups: ["{{cohort}}", "Students"]
{extra_task}"""
    path = tmp / "job.yaml"
    path.write_text(text)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def _quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


async def test_plan_then_run_does_exactly_what_the_plan_said(tmp_path: Path) -> None:
    """`run` applies, line for line, the actions `plan` announced (create/update/invalid)."""
    write_candidates(
        tmp_path / "candidates.csv", 120, cohorts=COHORTS, seed=2, bad_every=25, id_prefix="S"
    )
    sandbox = "sandbox: {seed: 4, users: 30, groups: 3}\n"
    job = load_job(_job(tmp_path, "sandbox", sandbox=sandbox, extra_task="  lookup: per-row\n"))
    assert await plan_job(job, console=_quiet()) == EXIT_OK
    assert await run_job(job, console=_quiet(), handle_signals=False) == EXIT_FAILED
    out = tmp_path / "out" / "import"
    plan = {r["_line"]: r["action"] for r in _read_csv(out / "plan.csv")}
    done = {r["_line"]: r["_action"] for r in _read_csv(out / "success.csv")}
    failed = {r["_line"] for r in _read_csv(out / "failures.csv")}
    assert {line for line, action in plan.items() if action == "invalid"} == failed
    expected = {line: {"create": "created"}.get(a, a + "d") for line, a in plan.items()}
    assert done == {line: a for line, a in expected.items() if line not in failed}
    assert set(plan.values()) == {"create", "update", "invalid"}


async def test_commit_then_fail_never_creates_twice(tmp_path: Path) -> None:
    """Writes that commit and then fail are reconciled by lookup: each user exists once."""
    cands = write_candidates(tmp_path / "candidates.csv", 300, cohorts=COHORTS, seed=5)
    faults = {"commit-then-500": 1.0, "commit-then-drop": 1.0, "drop": 1.0, "503": 1.0}
    config = SandboxConfig(seed=5, users=0, groups=3, fault_rate=0.2, faults=faults)
    async with Sandbox(config) as sb:
        os.environ["SYNAP_TOKEN_TEST"] = sb.token
        api = "  token: ${SYNAP_TOKEN_TEST}\n"
        job = load_job(_job(tmp_path, sb.url, api=api))
        code = await run_job(job, console=_quiet(), handle_signals=False)
        stats = sb.statistics()
        ids = {k for k in sb.store.by_external_id if k.startswith("C")}
    assert code == EXIT_OK
    assert stats.committed_then_failed > 0, "the sandbox must really have committed and failed"
    assert stats.duplicate_creates == 0
    assert max(stats.creates_by_key.values()) == 1
    assert ids == set(cands.valid_ids)
    # The summary owns up to the engine's work: items tried again, and writes a lookup found.
    summary = json.loads((tmp_path / "out" / "import" / "summary.json").read_text())
    assert summary["reconciled"] >= 1
    extra_posts = stats.by_route["user-registrations.create"] - len(cands.valid_ids)
    assert 0 < extra_posts <= summary["item_retries"] - summary["reconciled"]


async def test_listing_replaces_per_row_lookups(tmp_path: Path) -> None:
    """Above the threshold one paginated listing of the directory replaces a lookup per row."""
    write_candidates(tmp_path / "candidates.csv", 250, cohorts=COHORTS, seed=6)
    async with Sandbox(SandboxConfig(seed=6, users=500, groups=3)) as sb:
        os.environ["SYNAP_TOKEN_TEST"] = sb.token
        api = "  token: ${SYNAP_TOKEN_TEST}\n"
        job = load_job(_job(tmp_path, sb.url, api=api, extra_task="  listing_threshold: 100\n"))
        assert await run_job(job, console=_quiet(), handle_signals=False) == EXIT_OK
        listing = sb.statistics().by_route.get("users.list", 0)
        job2 = load_job(
            _job(tmp_path, sb.url, api=api, name="again", extra_task="  lookup: per-row\n")
        )
        before = sb.statistics().by_route.get("users.list", 0)
        code = await run_job(job2, restart=True, console=_quiet(), handle_signals=False)
        assert code == EXIT_OK
        per_row = sb.statistics().by_route.get("users.list", 0) - before
    # 600+ users at 500 per page: two pages, against one lookup for each of the 250 rows
    # (each run adds the preflight's one GET proving the match filter is honoured).
    assert listing <= 4
    assert per_row == 250 + 1


def _task_error(path: Path) -> str:
    """The SpecError a user-import task of job file ``path`` is refused with, as printed."""
    from synap_bulk.tasks.user_import import UserImportTask

    job = load_job(path)
    with pytest.raises(SpecError) as info:
        UserImportTask(job.spec.task, job, DEFAULT_PROFILE)  # type: ignore[arg-type]
    return str(info.value)


def test_unknown_placeholder_names_the_job_line(tmp_path: Path) -> None:
    """A field template naming a column the CSV lacks is refused with the job file's line."""
    write_candidates(tmp_path / "candidates.csv", 3, cohorts=COHORTS)
    path = _job(tmp_path, "sandbox", extra_task="  password: '{pin}'\n")
    assert _task_error(path) == (
        f"{path}:16: task.password: unknown column {{pin}} in template '{{pin}}'; "
        "candidates.csv has: candidate_no, first_name, last_name, email, cohort"
    )


def test_every_missing_column_is_named_at_once(tmp_path: Path) -> None:
    """A header lacking several columns names them all, each with the line that uses it."""
    (tmp_path / "candidates.csv").write_text("candidate_no,first_name,cohort\nS1,Ann,Cohort 01\n")
    path = _job(tmp_path, "sandbox")
    assert _task_error(path) == (
        f"{path}:12: task.fields.name: unknown columns {{last_name}}, "
        "{email} (task.fields.emailAddress, line 13); "
        "candidates.csv has: candidate_no, first_name, cohort"
    )


async def _kill_when(seen: RequestsSeen, proc: Process, requests: int) -> bool:
    """SIGKILL the run once the sandbox has seen ``requests`` requests; False if it ended first."""
    ended = False

    async def on_exit(scope: anyio.CancelScope) -> None:
        nonlocal ended
        await proc.wait()
        ended = True
        scope.cancel()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(on_exit, tg.cancel_scope)
            await seen.reached(requests)
            tg.cancel_scope.cancel()
    if ended:
        return False
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    return True


async def test_killed_five_times_and_resumed_leaves_exactly_the_valid_users(
    tmp_path: Path,
) -> None:
    """SIGKILL at five seeded points, then resume: every valid row once, invalid rows listed."""
    cands: CandidateFile = write_candidates(
        tmp_path / "candidates.csv", 2000, cohorts=COHORTS, seed=11, bad_every=50
    )
    config = SandboxConfig(seed=11, users=0, groups=3, fault_rate=0.05, latency_ms=0.5)
    rng = random.Random(2027)
    seen = RequestsSeen()
    async with Sandbox(config, sleep=seen.sleep) as sb:
        env = {**os.environ, "SYNAP_TOKEN": sb.token}
        api = "  token: ${SYNAP_TOKEN}\n"
        path = _job(tmp_path, sb.url, api=api, name="kill")
        cmd = [sys.executable, "-m", "synap_bulk", "run", str(path)]
        kills = 0
        ended_early: list[str] = []
        for i in range(5):
            start = seen.count
            log = tmp_path / f"run-{i}.log"
            with log.open("wb") as err:
                proc = await anyio.open_process(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
                if await _kill_when(seen, proc, start + rng.randint(30, 500)):
                    kills += 1
                else:
                    ended_early.append(log.read_text()[-2000:])
        final = await anyio.run_process(cmd, env=env, check=False)
        stats = sb.statistics()
        ids = {k for k in sb.store.by_external_id if k.startswith("C")}
    assert kills == 5, f"each run must have been killed mid-way; ended first: {ended_early}"
    assert final.returncode == EXIT_FAILED  # the deliberately invalid rows
    assert stats.duplicate_creates == 0
    assert max(stats.creates_by_key.values()) == 1
    assert ids == set(cands.valid_ids)
    failures = _read_csv(tmp_path / "out" / "kill" / "failures.csv")
    assert {int(r["_line"]) for r in failures} == set(cands.invalid_lines)


class _MembersClient:
    """Records add_members calls (the only client method GroupBatcher uses)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def add_members(self, path: str, id: str, rel: str, members: list[Any]) -> None:
        self.calls.append((id, [m.id for m in members]))


async def test_group_batcher_sends_many_users_per_call() -> None:
    """250 joins to one group go out as 100 + 100 at size and the last 50 after the linger."""
    client = _MembersClient()
    clock = FakeClock(auto_advance=False)
    batcher = GroupBatcher(client, DEFAULT_PROFILE, size=100, linger=0.05, clock=clock)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        for i in range(250):
            tg.start_soon(batcher.add, "g1", f"u{i}")
        await wait_all_tasks_blocked()
        assert len(client.calls) == 2
        clock.advance(0.05)
    assert [len(users) for _, users in client.calls] == [100, 100, 50]
    assert sorted(u for _, users in client.calls for u in users) == sorted(
        f"u{i}" for i in range(250)
    )


async def test_group_batcher_cancelled_owner_releases_the_others() -> None:
    """If the caller that opened a batch is cancelled, the others fail retryably, not hang."""
    client = _MembersClient()
    clock = FakeClock(auto_advance=False)
    batcher = GroupBatcher(client, DEFAULT_PROFILE, clock=clock)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    async def other() -> None:
        try:
            await batcher.add("g1", "u2")
        except ConnectError as exc:
            errors.append(exc)

    owner_scope = anyio.CancelScope()

    async def owner() -> None:
        with owner_scope:
            await batcher.add("g1", "u1")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(owner)
            await wait_all_tasks_blocked()
            tg.start_soon(other)
            await wait_all_tasks_blocked()
            owner_scope.cancel()
    assert client.calls == []
    assert len(errors) == 1 and errors[0].never_sent


def test_a_semicolon_csv_gets_a_delimiter_hint(tmp_path: Path) -> None:
    """A CSV saved with semicolons (as European spreadsheets do) is refused with a hint to set
    the delimiter, not only "unknown column"."""
    (tmp_path / "candidates.csv").write_text(
        "candidate_no;first_name;last_name;email;cohort\nS1;Ann;Lee;a@x.org;Cohort 01\n"
    )
    path = _job(tmp_path, "sandbox")
    assert _task_error(path).endswith("; the header looks ';'-separated: set task.delimiter: ';'")


async def test_plan_shows_old_and_new_values_and_group_names(tmp_path: Path) -> None:
    """The demo import's plan names each user (name <email>), gives every changed attribute as
    old -> new, and the groups by name beside their ids, in plan.csv and in the printed plan."""
    import re
    import shutil

    demo = DEMO_DIR
    for name in ("user-import.yaml", "candidates.csv"):
        shutil.copy(demo / name, tmp_path / name)
    console = Console(file=io.StringIO(), width=400)
    assert await plan_job(load_job(tmp_path / "user-import.yaml"), console=console) == EXIT_OK
    with (tmp_path / "out" / "demo-user-import" / "plan.csv").open(encoding="utf-8") as fh:
        plan = {int(r["_line"]): r for r in csv.DictReader(fh)}
    with (tmp_path / "candidates.csv").open(encoding="utf-8-sig") as fh:
        source = {i + 2: r for i, r in enumerate(csv.DictReader(fh))}
    update, create = plan[2], plan[52]
    row = source[2]
    assert update["action"] == "update" and update["remote_id"]
    assert update["name"] == f"{row['first_name']} {row['last_name']} <{row['email']}>"
    want_name = f"{row['first_name']} {row['last_name']}"
    assert re.search(rf'name: "[^"]+" -> "{want_name}"', update["detail"]), update["detail"]
    assert re.search(r'\+group "Cohort 0\d" \(\w+\)', update["detail"]), update["detail"]
    assert create["action"] == "create"
    assert f'externalId "{source[52]["candidate_no"]}"' in create["detail"]
    assert '+group "Students" (' in create["detail"]
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Plan for 400 rows: 341 create, 49 update, 0 unchanged, 10 invalid, 0 conflict" in text
    assert f"  update   line 2  {update['name']} (id {update['remote_id']}): " in text
    assert "  invalid  line 38  first_name: name is required" in text
    assert "... and 338 more create" in text
