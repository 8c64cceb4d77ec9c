"""kind: group-sync against a server that remembers: the group ends exactly the CSV's users,
in batched relationship calls; the plan shows both lists; a sync that would remove 60% of the
group stops before any removal without --yes; undo restores the membership before."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from synap_bulk.planning import plan_job
from synap_bulk.runner import EXIT_FAILED, EXIT_INVALID, EXIT_OK, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job
from synap_bulk.undo import undo_job

TOKEN = "p:sandbox-token"
DEMO = Path(__file__).resolve().parent.parent / "jobs" / "demo"


def sync_job(tmp: Path, url: str, ids: list[str], *, batch: int = 100, extra: str = "") -> Path:
    (tmp / "token.txt").write_text(TOKEN)
    (tmp / "members.csv").write_text("candidate_no\n" + "".join(f"{i}\n" for i in ids))
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: sync
api:
  base_url: "{url}"
  token_file: token.txt
{extra}task:
  kind: group-sync
  group: Cohort 01
  source: members.csv
  match: externalId
  column: candidate_no
  batch_size: {batch}
"""
    )
    return path


def sandbox() -> Sandbox:
    return Sandbox(SandboxConfig(users=20, groups=2, seed=3, token=TOKEN))


def members(sb: Sandbox) -> list[str]:
    """Cohort 01's members, as external ids, sorted."""
    g = next(g for g in sb.store.groups.values() if g.name == "Cohort 01")
    return sorted(sb.store.users[u].external_id or u for u in g.members)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def said(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined]


def routes(sb: Sandbox, suffix: str) -> int:
    return sum(n for r, n in sb.statistics().by_route.items() if r.endswith(suffix))


# Cohort 01 of this sandbox: S000001, S000003, ..., S000019 (10 members).
ODD = [f"S{i:06d}" for i in range(1, 20, 2)]


async def test_the_group_becomes_exactly_the_list_in_batched_calls(tmp_path: Path) -> None:
    """One removed (10%: within the default guard) and three added; with batch_size 2 that is
    two add calls and one remove call."""
    wanted = [*ODD[:-1], "S000002", "S000004", "S000006"]
    async with sandbox() as sb:
        path = sync_job(tmp_path, sb.url, wanted, batch=2)
        console = quiet()
        assert await plan_job(load_job(path), console=console) == EXIT_OK
        text = said(console)
        assert "add (3)" in text and "remove (1)" in text
        assert "Plan for 13 users: 3 add, 1 remove, 9 keep, 0 invalid" in text
        assert members(sb) == sorted(ODD)  # the plan wrote nothing
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        assert members(sb) == sorted(wanted)
        assert routes(sb, "members.add") == 2 and routes(sb, "members.remove") == 1


async def test_a_sync_removing_60_percent_stops_before_any_removal(tmp_path: Path) -> None:
    """6 of the group's 10 members are not on the list: without --yes the run stops before
    its first write, with the counts; with --yes it goes on."""
    wanted = ODD[:4]
    async with sandbox() as sb:
        path = sync_job(tmp_path, sb.url, wanted)
        console = quiet()
        assert await plan_job(load_job(path), console=console) == EXIT_OK
        assert "note: guard: stopped before the first destructive write" in said(console)
        console = quiet()
        code = await run_job(load_job(path), console=console, handle_signals=False)
        assert code == EXIT_INVALID
        assert "remove 6 of 10 (60%) members of user-groups/" in said(console)
        assert "max_removals_share 0.1" in said(console) and "--yes" in said(console)
        assert routes(sb, "members.remove") == 0 and routes(sb, "members.add") == 0
        assert members(sb) == sorted(ODD)
        code = await run_job(load_job(path), console=quiet(), handle_signals=False, yes=True)
        assert code == EXIT_OK
        assert members(sb) == sorted(wanted)


async def test_a_declared_guard_replaces_the_default(tmp_path: Path) -> None:
    """guard: {max_removals_share: 0.7} lets the 60% sync through without --yes."""
    async with sandbox() as sb:
        extra = "guard: {max_removals_share: 0.7}\n"
        path = sync_job(tmp_path, sb.url, ODD[:4], extra=extra)
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_OK
        assert members(sb) == sorted(ODD[:4])


async def test_a_sync_undone_restores_the_membership_before(tmp_path: Path) -> None:
    """Adds and removes undone: the group has exactly its members from before the sync."""
    wanted = [*ODD[2:], "S000002", "S000008"]
    async with sandbox() as sb:
        path = sync_job(tmp_path, sb.url, wanted)
        assert await run_job(load_job(path), console=quiet(), handle_signals=False, yes=True) == 0
        assert members(sb) == sorted(wanted)
        console = quiet()
        assert (
            await undo_job(load_job(path), yes=True, console=console, handle_signals=False)
            == EXIT_OK
        ), said(console)
        assert "2 remove, 2 re-add" in said(console)
        assert members(sb) == sorted(ODD)
        # Undoing the undo is a plain re-run: the sync again.
        assert await run_job(load_job(path), console=quiet(), handle_signals=False, yes=True) == 0
        assert members(sb) == sorted(wanted)


async def test_unknown_and_duplicate_users_are_invalid_rows(tmp_path: Path) -> None:
    """A row naming nobody, or a user twice, is invalid with its line; the others still go."""
    wanted: list[Any] = [*ODD, "S999999", "S000001"]
    async with sandbox() as sb:
        path = sync_job(tmp_path, sb.url, wanted)
        assert await run_job(load_job(path), console=quiet(), handle_signals=False) == EXIT_FAILED
        failures = (tmp_path / "out" / "sync" / "failures.csv").read_text()
        assert "no user with externalId 'S999999'" in failures
        assert "duplicate externalId 'S000001': already on line 2" in failures
        assert members(sb) == sorted(ODD)


async def test_the_demo_job_runs_as_shipped(tmp_path: Path) -> None:
    """jobs/demo/group-sync.yaml: 2 added, 1 removed (10%: within the guard), 9 kept; its undo
    puts Cohort 01 back as it was."""
    for name in ("group-sync.yaml", "cohort-01-final.csv"):
        shutil.copy(DEMO / name, tmp_path / name)
    job = tmp_path / "group-sync.yaml"
    state = tmp_path / "out" / "demo-group-sync" / "sandbox-state.json"
    assert await run_job(load_job(job), console=quiet(), handle_signals=False) == EXIT_OK
    s = json.loads((tmp_path / "out" / "demo-group-sync" / "summary.json").read_text())
    assert s["this_run"]["added"] == 2 and s["this_run"]["removed"] == 1
    async with Sandbox(SandboxConfig(state=str(state))) as sb:
        assert members(sb) == sorted([*ODD[:-1], "S000002", "S000004"])
    assert await undo_job(load_job(job), yes=True, console=quiet(), handle_signals=False) == EXIT_OK
    async with Sandbox(SandboxConfig(state=str(state))) as sb:
        assert members(sb) == sorted(ODD)
