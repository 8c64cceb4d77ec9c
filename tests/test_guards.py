"""Guards: the limits of destructive changes, and the first write to a portal confirmed on a
terminal (the identity and the plan's counts shown; --yes for scripts)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from synap_bulk import guards
from synap_bulk.guards import Destructive, confirm_first_write, is_sandbox_url, refusal
from synap_bulk.identity import Identity
from synap_bulk.runner import EXIT_INVALID, EXIT_OK, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job
from synap_bulk.spec_undo import GuardSpec

TOKEN = "p:sandbox-token"


def test_within_the_default_limits_nothing_is_refused() -> None:
    """Exactly at the default limits the run goes on."""
    found = Destructive(deletes=50, removals={"user-groups/7": 10}, sizes={"user-groups/7": 100})
    assert refusal(found, GuardSpec(), command="run job.yaml") == ""


def test_each_limit_beyond_is_named_with_the_counts() -> None:
    """Every limit exceeded is named with its count, and the way on (--yes) is given."""
    found = Destructive(
        deletes=51,
        removals={"user-groups/7": 6},
        sizes={"user-groups/7": 10},
        unassignments=51,
    )
    text = refusal(found, GuardSpec(), command="synap-bulk run job.yaml")
    assert text.startswith("guard: stopped before the first destructive write: the plan would ")
    assert "delete 51, remove 6 of 10 (60%) members of user-groups/7, unassign 51 markers" in text
    assert "51 deletes > max_deletes 50" in text
    assert "max_removals_share 0.1" in text and "51 unassignments > max_unassignments 50" in text
    assert "synap-bulk run job.yaml --yes" in text


def test_a_count_limit_on_removals_across_groups() -> None:
    """max_removals counts removals across all groups."""
    found = Destructive(removals={"g/1": 3, "g/2": 3}, sizes={"g/1": 1000, "g/2": 1000})
    assert refusal(found, GuardSpec(max_removals=5), command="x") != ""
    assert refusal(found, GuardSpec(max_removals=6), command="x") == ""


def test_what_counts_as_a_sandbox() -> None:
    """The embedded sandbox and a server on localhost are sandboxes; a real host is not."""
    assert is_sandbox_url("sandbox") and is_sandbox_url("http://127.0.0.1:8080/v3")
    assert not is_sandbox_url("https://api.synap.ac/v3")


def test_the_question_shows_the_identity_and_the_counts() -> None:
    """The first-write question shows the portal, the user and the plan's non-zero counts."""
    lines: list[str] = []
    ident = Identity(portal_id="p1", portal_name="Real U", user_id="u1", user_name="Ada")
    agreed = confirm_first_write(
        ident, {"create": 3, "update": 0}, ask=lambda _: "y", say=lines.append
    )
    assert agreed
    assert "portal Real U (id p1)" in lines[1] and lines[2] == "The plan: 3 create"
    assert not confirm_first_write(ident, {"create": 3}, ask=lambda _: "", say=lines.append)


def _job(tmp: Path, url: str) -> Path:
    (tmp / "token.txt").write_text(TOKEN)
    (tmp / "users.csv").write_text("id,email\nA1,a1@example.edu\nA2,a2@example.edu\n")
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: first
api:
  base_url: "{url}"
  token_file: token.txt
task:
  kind: user-import
  source: users.csv
  match: externalId
  fields: {{name: "{{id}}", emailAddress: "{{email}}", externalId: "{{id}}"}}
"""
    )
    return path


@pytest.fixture
def at_a_terminal(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A person at the terminal, and a server that is not a sandbox; records the prompts."""
    asked: list[str] = []
    monkeypatch.setattr(guards, "interactive", lambda: True)
    monkeypatch.setattr(guards, "is_sandbox_url", lambda url: False)
    monkeypatch.setattr(guards, "ask", lambda prompt: asked.append(prompt) or "n")
    return asked


async def test_a_first_write_not_confirmed_writes_nothing(
    tmp_path: Path, at_a_terminal: list[str]
) -> None:
    """At a terminal, a first write to a non-sandbox portal not confirmed sends nothing; --yes
    skips the question, and a job that has written there is not asked again."""
    async with Sandbox(SandboxConfig(users=0, groups=1, token=TOKEN)) as sb:
        path = _job(tmp_path, sb.url)
        console = Console(file=io.StringIO(), width=200)
        code = await run_job(load_job(path), console=console, handle_signals=False)
        assert code == EXIT_INVALID and at_a_terminal == ["Write to this portal? [y/N] "]
        assert "not confirmed: nothing was written" in console.file.getvalue()  # type: ignore[attr-defined]
        assert not [u for u in sb.store.users.values() if (u.external_id or "").startswith("A")]
        # --yes: no question; and once the job has written there, no question either.
        assert await run_job(load_job(path), console=console, handle_signals=False, yes=True) == 0
        assert await run_job(load_job(path), console=console, handle_signals=False) == EXIT_OK
        assert len(at_a_terminal) == 1
        assert sum(1 for u in sb.store.users.values() if (u.external_id or "").startswith("A")) == 2


async def test_a_request_job_removing_60_percent_of_a_group_stops_before_any_removal(
    tmp_path: Path,
) -> None:
    """Six rows of DELETE user-groups/{id}/relationships/users against a group of ten: the
    guard stops the run before the first request; --yes lets it through."""
    async with Sandbox(SandboxConfig(users=20, groups=2, seed=3, token=TOKEN)) as sb:
        group = next(g for g in sb.store.groups.values() if g.name == "Cohort 01")
        leaving = list(group.members)[:6]
        (tmp_path / "token.txt").write_text(TOKEN)
        (tmp_path / "rm.csv").write_text("user\n" + "".join(f"{u}\n" for u in leaving))
        path = tmp_path / "rm.yaml"
        path.write_text(
            f"""version: 1
name: rm
api:
  base_url: "{sb.url}"
  token_file: token.txt
task:
  kind: request
  source: rm.csv
  method: DELETE
  path: user-groups/{group.id}/relationships/users
  safety: idempotent
  key: "{{user}}"
  body:
    data: [{{type: User, id: "{{user}}"}}]
"""
        )
        console = Console(file=io.StringIO(), width=200)
        code = await run_job(load_job(path), console=console, handle_signals=False)
        text = console.file.getvalue()  # type: ignore[attr-defined]
        assert code == EXIT_INVALID, text
        assert "remove 6 of 10 (60%) members of user-groups/" in text
        assert len(group.members) == 10
        code = await run_job(load_job(path), console=console, handle_signals=False, yes=True)
        assert code == EXIT_OK and len(group.members) == 4


def _markers_job(tmp: Path, url: str, name: str, action: str) -> Path:
    path = tmp / f"{name}.yaml"
    strategy = "  strategy: balanced\n" if action == "assign" else ""
    path.write_text(
        f"""version: 1
name: {name}
api:
  base_url: "{url}"
  token_file: token.txt
task:
  kind: assign-markers
  role: provisional
  action: {action}
  exams: ["Sandbox Exam 1"]
  statuses: [submitted]
{strategy}"""
    )
    return path


async def test_unassigning_more_than_the_limit_stops_before_the_first_unassignment(
    tmp_path: Path,
) -> None:
    """An unassign run of more assignments than max_unassignments stops before its first
    write; --yes lets it through."""
    config = SandboxConfig(
        users=200, exams=2, attempts_per_exam=160, markers=6, seed=2, token=TOKEN
    )
    async with Sandbox(config) as sb:
        (tmp_path / "token.txt").write_text(TOKEN)
        give = _markers_job(tmp_path, sb.url, "give", "assign")
        assert (
            await run_job(load_job(give), console=Console(file=io.StringIO()), handle_signals=False)
            == EXIT_OK
        )

        def assigned() -> int:
            return sum(
                len(a.roles.get("provisionalMarkers", {})) for a in sb.store.attempts.values()
            )

        n = assigned()
        assert n > 50
        take = _markers_job(tmp_path, sb.url, "take", "unassign")
        console = Console(file=io.StringIO(), width=200)
        assert await run_job(load_job(take), console=console, handle_signals=False) == EXIT_INVALID
        assert f"{n} unassignments > max_unassignments 50" in console.file.getvalue()  # type: ignore[attr-defined]
        assert assigned() == n
        code = await run_job(load_job(take), console=console, handle_signals=False, yes=True)
        assert code == EXIT_OK and assigned() == 0
