"""Undo against a server that remembers (a standalone sandbox, as a real portal): the server
after an import and its undo equals a snapshot taken before, field by field; the same with a
SIGKILL in the middle of the undo; a change made by someone else is a conflict, kept."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from rich.console import Console

from synap_bulk.images import images_of
from synap_bulk.ledger import Ledger, RunInfo
from synap_bulk.runner import EXIT_FAILED, EXIT_INVALID, EXIT_OK, ledger_path, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.sandbox.store import Store
from synap_bulk.spec import load_job
from synap_bulk.undo import runs_to_undo, undo_job
from tests.requests_seen import RequestsSeen

ROOT = Path(__file__).resolve().parent.parent

#: Two existing candidates change (a new name; a new group), one is unchanged, three are new.
ROWS = """\
candidate_no,first_name,last_name,email,cohort
S000001,Nils,Haddad-Smith,nils.haddad.1@students.example,Cohort 02
S000002,Olu,Silva,olu.silva.2@students.example,Cohort 02
S000003,Sami,Garcia,sami.garcia.3@students.example,Cohort 02
N1,Ada,Lovelace,ada@example.edu,Cohort 01
N2,Alan,Turing,alan@example.edu,Cohort 01
N3,Grace,Hopper,grace@example.edu,Cohort 02
"""


def import_job(tmp: Path, url: str, rows: str = ROWS) -> Path:
    (tmp / "token.txt").write_text("p:sandbox-token")
    (tmp / "candidates.csv").write_text(rows)
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: imp
api:
  base_url: "{url}"
  token_file: token.txt
  concurrency: 4
task:
  kind: user-import
  source: candidates.csv
  match: externalId
  lookup: per-row
  fields:
    name: "{{first_name}} {{last_name}}"
    emailAddress: "{{email}}"
    externalId: "{{candidate_no}}"
  groups: ["{{cohort}}"]
"""
    )
    return path


def snapshot(store: Store) -> dict[str, Any]:
    """Users (every attribute a run can change) and every group's members."""
    users = {
        u.id: (u.name, u.email, u.external_id, u.time_zone, u.locale, u.role, sorted(u.groups))
        for u in store.users.values()
    }
    groups = {g.id: sorted(g.members) for g in store.groups.values()}
    return {"users": users, "groups": groups}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def said(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined]


def sandbox(**kw: Any) -> Sandbox:
    base: dict[str, Any] = {"users": 4, "groups": 2, "seed": 1, "token": "p:sandbox-token"}
    return Sandbox(SandboxConfig(**(base | kw)))


def writes(sb: Sandbox) -> int:
    """Requests that changed something on the server so far."""
    by_route = sb.statistics().by_route
    return sum(n for r, n in by_route.items() if r.endswith((".delete", ".remove", ".update")))


def plan_rows(tmp: Path, label: str = "1") -> list[dict[str, str]]:
    path = tmp / "out" / "imp" / "undo" / f"run-{label}" / "plan.csv"
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


async def test_an_import_undone_leaves_the_server_as_it_was(tmp_path: Path) -> None:
    """Creates, an attribute change and new memberships, undone: the server equals the snapshot
    from before the import, field by field. The plan comes first and changes nothing; the
    guard stops the undo (it would empty half of a group) until --yes."""
    async with sandbox() as sb:
        before = snapshot(sb.store)
        path = import_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        after_import = snapshot(sb.store)
        assert after_import != before
        console = quiet()
        assert (
            await undo_job(load_job(path), plan_only=True, console=console, handle_signals=False)
            == EXIT_OK
        )
        assert snapshot(sb.store) == after_import
        assert "Undo plan for 5 items: 3 delete, 1 restore, 2 remove" in said(console)
        actions = {r["key"]: r["action"] for r in plan_rows(tmp_path)}
        assert actions["undo:1:externalId:S000001"] == "remove+restore"
        assert actions["undo:1:externalId:N1"] == "delete"
        assert actions["undo:1:externalId:S000003"] == "remove"
        assert "undo:1:externalId:S000002" not in actions  # it wrote nothing
        console = quiet()
        assert await undo_job(load_job(path), console=console, handle_signals=False) == EXIT_INVALID
        assert "guard: stopped before the first destructive write" in said(console)
        assert snapshot(sb.store) == after_import
        console = quiet()
        assert (
            await undo_job(load_job(path), yes=True, console=console, handle_signals=False)
            == EXIT_OK
        ), said(console)
        assert snapshot(sb.store) == before
        # Idempotent: a second undo finds everything done and writes nothing.
        done = writes(sb)
        console = quiet()
        assert await undo_job(load_job(path), yes=True, console=console, handle_signals=False) == 0
        assert snapshot(sb.store) == before and writes(sb) == done
        assert "Undo plan for 5 items: 5 undone before" in said(console)


async def test_a_membership_there_before_the_run_is_never_removed(tmp_path: Path) -> None:
    """The import puts S000002 in Cohort 02, where it already was: its undo keeps it there,
    and a membership added by the run is removed."""
    async with sandbox() as sb:
        path = import_job(tmp_path, sb.url)
        cohort2 = next(g for g in sb.store.groups.values() if g.name == "Cohort 02")
        olu = sb.store.users[sb.store.by_external_id["S000002"]]
        assert olu.id in cohort2.members
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        assert (
            await undo_job(load_job(path), yes=True, console=quiet(), handle_signals=False)
            == EXIT_OK
        )
        assert olu.id in cohort2.members
        assert sb.store.by_external_id["S000003"] not in cohort2.members


async def test_a_value_changed_since_the_run_is_a_conflict_and_kept(tmp_path: Path) -> None:
    """Someone renames a user after the run: the undo reports both values, leaves the name as
    it is, and reverses everything else."""
    async with sandbox() as sb:
        before = snapshot(sb.store)
        path = import_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        nils = sb.store.users[sb.store.by_external_id["S000001"]]
        nils.name = "Nils H. Smith"  # someone else, after the run
        nils.raw = None
        console = quiet()
        code = await undo_job(load_job(path), yes=True, console=console, handle_signals=False)
        assert code == EXIT_FAILED
        text = said(console)
        assert "the run wrote 'Nils Haddad-Smith', the server now has 'Nils H. Smith'" in text
        assert nils.name == "Nils H. Smith"
        now = snapshot(sb.store)
        expected = dict(before["users"])
        was = expected[nils.id]
        expected[nils.id] = ("Nils H. Smith", *was[1:])
        assert now["users"] == expected and now["groups"] == before["groups"]
        failures = tmp_path / "out" / "imp" / "undo" / "run-1" / "failures.csv"
        assert "conflict" in failures.read_text()


async def _kill_when(seen: RequestsSeen, proc: Process, requests: int) -> bool:
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


async def test_an_undo_killed_mid_way_resumes_to_the_snapshot(tmp_path: Path) -> None:
    """SIGKILL in the middle of an undo of 40 creates, then the same command again: the server
    equals the snapshot from before the import."""
    lines = ["candidate_no,first_name,last_name,email,cohort"]
    lines += [f"N{i},Name{i},Last{i},n{i}@example.edu,Cohort 01" for i in range(40)]
    lines.append("S000001,Nils,Haddad-Smith,nils.haddad.1@students.example,Cohort 02")
    seen = RequestsSeen()
    config = SandboxConfig(users=4, groups=2, seed=1, token="p:sandbox-token", latency_ms=1)
    async with Sandbox(config, sleep=seen.sleep) as sb:
        before = snapshot(sb.store)
        path = import_job(tmp_path, sb.url, "\n".join(lines) + "\n")
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        cmd = [sys.executable, "-m", "synap_bulk", "undo", str(path), "--yes"]
        # identity (2) + the plan (a GET per user, the groups' members): then the undo writes.
        start = seen.count
        log = tmp_path / "undo-1.log"
        with log.open("wb") as err:
            proc = await anyio.open_process(
                cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=err
            )
            killed = await _kill_when(seen, proc, start + 2 + 2 + 41 + 30)
        assert killed, log.read_text()[-2000:]
        assert snapshot(sb.store) != before  # part undone
        final = await anyio.run_process(cmd, check=False)
        assert final.returncode == EXIT_OK, final.stderr.decode()[-2000:]
        assert snapshot(sb.store) == before


def _run(id: int, status: str) -> RunInfo:
    return RunInfo(id=id, started_at="", ended_at=None, status=status)


def test_the_default_undo_takes_the_last_run_and_the_runs_it_resumed() -> None:
    """By default the last run and the interrupted runs it resumed; --run N alone."""
    runs = [_run(1, "completed"), _run(2, "stopped"), _run(3, "aborted"), _run(4, "completed")]
    assert runs_to_undo(runs, None) == [2, 3, 4]
    assert runs_to_undo(runs[:1], None) == [1]
    assert runs_to_undo(runs, 1) == [1]


async def test_before_images_are_durable_before_the_write(tmp_path: Path) -> None:
    """The ledger holds the create's image (with the new id), the PATCH's previous values and
    the memberships with whether each existed before."""
    async with sandbox() as sb:
        path = import_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        async with await Ledger.open_readonly(ledger_path(load_job(path))) as ledger:
            images = await images_of(ledger, [1])
        ada = sb.store.by_external_id["N1"]  # the id
    by_op: dict[str, list[Any]] = {}
    for im in images:
        by_op.setdefault(im.op, []).append(im)
    assert {im.resource_id for im in by_op["create"]} >= {ada}
    (patch,) = by_op["patch"]
    assert patch.before == {"name": "Nils Haddad"} and patch.after == {"name": "Nils Haddad-Smith"}
    assert {im.existed_before for im in by_op["add-member"]} == {False}
    assert len(by_op["add-member"]) == 2  # S000001 and S000003 into Cohort 02 (not S000002)


def marker_job(tmp: Path, url: str, name: str, per_attempt: int) -> Path:
    (tmp / "token.txt").write_text("p:sandbox-token")
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"""version: 1
name: {name}
api:
  base_url: "{url}"
  token_file: token.txt
task:
  kind: assign-markers
  role: provisional
  exams: ["Sandbox Exam 1"]
  statuses: [submitted]
  strategy: balanced
  per_attempt: {per_attempt}
"""
    )
    return path


def assignments(sb: Sandbox) -> dict[str, dict[str, list[str]]]:
    return {a.id: {r: sorted(ms) for r, ms in a.roles.items()} for a in sb.store.attempts.values()}


async def test_a_marker_assignment_undone_leaves_exactly_the_assignments_before(
    tmp_path: Path,
) -> None:
    """A first job gives each attempt one provisional marker; a second gives a second one.
    Undoing the second leaves exactly the first's assignments: those that existed before the
    run are never removed."""
    config = SandboxConfig(
        users=40, exams=2, attempts_per_exam=12, markers=6, seed=2, token="p:sandbox-token"
    )
    async with Sandbox(config) as sb:
        one = marker_job(tmp_path, sb.url, "one", 1)
        assert await run_job(load_job(one), console=quiet(), handle_signals=False) == EXIT_OK
        before = assignments(sb)
        assert any(r.get("provisionalMarkers") for r in before.values())
        two = marker_job(tmp_path, sb.url, "two", 2)
        assert await run_job(load_job(two), console=quiet(), handle_signals=False) == EXIT_OK
        assert assignments(sb) != before
        console = quiet()
        assert (
            await undo_job(load_job(two), yes=True, console=console, handle_signals=False)
            == EXIT_OK
        ), said(console)
        assert "unassign" in said(console)
        assert assignments(sb) == before


def request_job(tmp: Path, url: str, *, undo: str) -> Path:
    (tmp / "token.txt").write_text("p:sandbox-token")
    (tmp / "groups.csv").write_text("name\nResit A\nResit B\nResit C\n")
    path = tmp / "groups.yaml"
    path.write_text(
        f"""version: 1
name: groups
api:
  base_url: "{url}"
  token_file: token.txt
task:
  kind: request
  source: groups.csv
  method: POST
  path: user-groups
  key: "{{name}}"
  body:
    data: {{type: UserGroup, attributes: {{name: "{{name}}"}}}}
{undo}"""
    )
    return path


async def test_a_request_job_with_an_undo_template_is_undone(tmp_path: Path) -> None:
    """POST user-groups per row, with undo: DELETE user-groups/{response.id}: after the undo the
    server has exactly its groups from before."""
    undo = "  undo: {method: DELETE, path: 'user-groups/{response.id}'}\n"
    async with sandbox() as sb:
        before = snapshot(sb.store)
        path = request_job(tmp_path, sb.url, undo=undo)
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        assert len(snapshot(sb.store)["groups"]) == len(before["groups"]) + 3
        console = quiet()
        assert await undo_job(load_job(path), console=console, handle_signals=False) == EXIT_OK, (
            said(console)
        )
        assert "Undo plan for 3 items: 3 request" in said(console)
        assert snapshot(sb.store) == before


async def test_request_rows_without_an_undo_template_are_listed_as_not_reversible(
    tmp_path: Path,
) -> None:
    """A request job without undo: has every row listed as not reversible in the plan."""
    async with sandbox() as sb:
        path = request_job(tmp_path, sb.url, undo="")
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        console = quiet()
        assert (
            await undo_job(load_job(path), plan_only=True, console=console, handle_signals=False)
            == EXIT_OK
        )
        assert "3 not reversible" in said(console)
        rows = list(
            csv.DictReader(io.StringIO((tmp_path / "out/groups/undo/run-1/plan.csv").read_text()))
        )
        assert {r["action"] for r in rows} == {"not reversible"}


async def test_readme_undo_walkthrough(tmp_path: Path) -> None:
    """README's "Undo and guards", step by step, on the demo import (its sandbox with a state
    file, faults included): the import; undo --plan; undo, stopped by the guard; undo --yes;
    the server equals the state from before the import; run again redoes the import."""
    for name in ("user-import.yaml", "candidates.csv"):
        shutil.copy(ROOT / "jobs" / "demo" / name, tmp_path / name)
    job = tmp_path / "user-import.yaml"
    state = tmp_path / "out" / "demo-user-import" / "sandbox-state.json"
    demo = load_job(job).spec.sandbox or {}
    seeded = {k: v for k, v in demo.items() if k in ("seed", "users", "groups")}
    async with Sandbox(SandboxConfig(state=str(state), **seeded)) as sb:
        before = snapshot(sb.store)
        people_before = people(sb.store)
    assert await run_job(load_job(job), console=quiet(), handle_signals=False) == EXIT_FAILED
    async with Sandbox(SandboxConfig(state=str(state))) as sb:
        imported = people(sb.store)
    console = quiet()
    assert (
        await undo_job(load_job(job), plan_only=True, console=console, handle_signals=False)
        == EXIT_OK
    )
    assert "Undo plan for 390 items: 341 delete, 98 restore, 49 remove" in said(console)
    console = quiet()
    assert await undo_job(load_job(job), console=console, handle_signals=False) == EXIT_INVALID
    assert "341 deletes > max_deletes 50" in said(console)
    console = quiet()
    assert (
        await undo_job(load_job(job), yes=True, console=console, handle_signals=False) == EXIT_OK
    ), said(console)
    async with Sandbox(SandboxConfig(state=str(state))) as sb:
        assert snapshot(sb.store) == before
    # Undoing the undo is a plain run: the job's ledger forgot what was undone.
    assert await run_job(load_job(job), console=quiet(), handle_signals=False) == EXIT_FAILED
    async with Sandbox(SandboxConfig(state=str(state))) as sb:
        assert people(sb.store) == imported != people_before


def people(store: Store) -> set[tuple[Any, ...]]:
    """The users by their attributes (not ids: a re-created user has a new one)."""
    return {(u.name, u.email, u.external_id, u.role) for u in store.users.values()}


def _locale_job(tmp: Path, url: str, profile: str = "") -> Path:
    (tmp / "token.txt").write_text("p:sandbox-token")
    (tmp / "c.csv").write_text("id,loc\nS000001,fr-FR\n")
    path = tmp / "loc.yaml"
    path.write_text(
        f"""version: 1
name: loc
api:
  base_url: "{url}"
  token_file: token.txt
{profile}task:
  kind: user-import
  source: c.csv
  match: externalId
  mode: update
  fields: {{externalId: "{{id}}", locale: "{{loc}}"}}
"""
    )
    return path


async def test_an_attribute_that_had_no_value_is_cleared_again(tmp_path: Path) -> None:
    """A locale given to a user who had none: the undo clears it (a PATCH with null, the
    profile's patch_null_clears); with patch_null_clears false it is a conflict, kept."""
    async with sandbox() as sb:
        before = snapshot(sb.store)
        path = _locale_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        user = sb.store.users[sb.store.by_external_id["S000001"]]
        assert user.locale == "fr-FR"
        assert await undo_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        assert user.locale is None and snapshot(sb.store) == before
    async with sandbox() as sb:
        other = tmp_path / "strict"
        other.mkdir()
        path = _locale_job(other, sb.url, "  profile: {patch_null_clears: false}\n")
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        console = quiet()
        code = await undo_job(load_job(path), console=console, handle_signals=False)
        assert code == EXIT_FAILED and "patch_null_clears" in said(console)
        assert sb.store.users[sb.store.by_external_id["S000001"]].locale == "fr-FR"


async def test_an_undo_refuses_while_a_run_of_the_job_holds_its_ledger(tmp_path: Path) -> None:
    """An undo never interleaves with a run of its job: refused while the job's ledger is held."""
    async with sandbox() as sb:
        before = snapshot(sb.store)
        path = import_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        job = load_job(path)
        async with await Ledger.open(
            ledger_path(job),
            job_name="imp",
            task_hash=job.task_hash(),
            input_hash="",
            check_input=False,
        ):
            console = quiet()
            code = await undo_job(job, yes=True, console=console, handle_signals=False)
            assert code == EXIT_INVALID and "another run of this job" in said(console)
        assert snapshot(sb.store) != before
        assert await undo_job(job, yes=True, console=quiet(), handle_signals=False) == EXIT_OK
        assert snapshot(sb.store) == before


async def test_nothing_to_undo_on_an_embedded_sandbox_that_forgets(tmp_path: Path) -> None:
    """The embedded sandbox without a state file forgot the run's data: a clear refusal."""
    (tmp_path / "c.csv").write_text("id,email\nA1,a1@example.edu\n")
    path = tmp_path / "j.yaml"
    path.write_text(
        """version: 1
name: forget
api: {base_url: sandbox}
task:
  kind: user-import
  source: c.csv
  match: externalId
  fields: {name: "{id}", emailAddress: "{email}", externalId: "{id}"}
"""
    )
    assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
    console = quiet()
    assert await undo_job(load_job(path), console=console, handle_signals=False) == EXIT_INVALID
    assert "forgets its data when a run ends: there is nothing to undo" in said(console)


async def test_an_import_killed_mid_way_is_undone_to_the_snapshot(tmp_path: Path) -> None:
    """SIGKILL in the middle of an import: every write that reached the server had its image
    recorded first (a create killed before its answer is found by its externalId), so the
    undo of the interrupted run leaves the server equal to the snapshot from before."""
    lines = ["candidate_no,first_name,last_name,email,cohort"]
    lines += [f"N{i},Name{i},Last{i},n{i}@example.edu,Cohort 01" for i in range(60)]
    lines.append("S000001,Nils,Haddad-Smith,nils.haddad.1@students.example,Cohort 02")
    seen = RequestsSeen()
    config = SandboxConfig(users=4, groups=2, seed=1, token="p:sandbox-token", latency_ms=1)
    async with Sandbox(config, sleep=seen.sleep) as sb:
        before = snapshot(sb.store)
        path = import_job(tmp_path, sb.url, "\n".join(lines) + "\n")
        cmd = [sys.executable, "-m", "synap_bulk", "run", str(path)]
        log = tmp_path / "run.log"
        with log.open("wb") as err:
            proc = await anyio.open_process(
                cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=err
            )
            killed = await _kill_when(seen, proc, seen.count + 40)
        assert killed, log.read_text()[-2000:]
        assert snapshot(sb.store) != before
        console = quiet()
        code = await undo_job(load_job(path), yes=True, console=console, handle_signals=False)
        assert code == EXIT_OK, said(console)
        assert snapshot(sb.store) == before
