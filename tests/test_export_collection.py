"""``kind: export``: any collection, exactly once after a SIGKILL and a resume; columns with
dotted paths and included joins; ``since: last-run``; a server-side export; errors at their line.

The server is a standalone in-process sandbox with a state file, which outlives the runs (and
the killed process) as a real portal would.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from synap_bulk.client import SynapClient
from synap_bulk.errors import SpecError
from synap_bulk.jsonapi import AnyResource, ResourcePatch
from synap_bulk.planning import plan_job
from synap_bulk.runner import EXIT_INVALID, EXIT_OK, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job
from synap_bulk.tasks import build_task
from synap_bulk.tasks.export_collection import (
    ExportTask,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def sb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sandbox]:
    config = SandboxConfig(
        seed=7, users=120, exams=6, attempts_per_exam=20, state=str(tmp_path / "state.json")
    )
    async with Sandbox(config) as sandbox:
        monkeypatch.setenv("SYNAP_TOKEN", sandbox.token)
        yield sandbox


def _job(tmp: Path, url: str, task: str) -> Path:
    """A job file exporting from ``url``; ``task`` holds the task's keys besides ``kind``."""
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: coll
api:
  base_url: {url}
  token: ${{SYNAP_TOKEN}}
  concurrency: 4
task:
  kind: export
{task}"""
    )
    return path


def _line(path: Path, text: str) -> int:
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


async def _run(path: Path) -> tuple[int, str]:
    console = Console(file=io.StringIO(), width=300)
    code = await run_job(load_job(path), console=console, handle_signals=False)
    return code, console.file.getvalue()  # type: ignore[attr-defined]


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def _cohort(sb: Sandbox) -> str:
    """The id of a non-default group with members (a cohort)."""
    return next(
        g.id
        for g in sb.store.groups.values()
        if g.default_type is None and not g.internal and len(g.members) >= 20
    )


# --- exactly once after a SIGKILL ------------------------------------------------------------

CHILD = r"""
import io, sys
import anyio
from pathlib import Path
from rich.console import Console
from synap_bulk import sinks
from synap_bulk.runner import run_job
from synap_bulk.spec import load_job

path, kill_at = sys.argv[1:3]
calls = 0
real_commit = sinks._FileSink.commit

def commit(self):
    # On the chosen commit: the page is in the file but not committed; wait to be killed.
    global calls
    calls += 1
    if calls == int(kill_at):
        self._out().flush()
        print("ready", flush=True)
        sys.stdin.read()
    return real_commit(self)

sinks._FileSink.commit = commit

async def main():
    await run_job(load_job(Path(path)), console=Console(file=io.StringIO()), handle_signals=False)

anyio.run(main)
"""


def _expected(sb: Sandbox, what: str) -> tuple[str, str, set[str]]:
    """(resource, filters as YAML, the server's ids) of each collection the kill test exports."""
    store = sb.store
    if what == "users":
        return "users", "{}", set(store.users)
    if what == "members":
        group = _cohort(sb)
        return "users", f"{{userGroup: {group}}}", set(store.groups[group].members)
    return "exam-v-2s", "{}", set(store.exams)


@pytest.mark.parametrize(("what", "page_size"), [("users", 10), ("members", 4), ("exams", 1)])
async def test_an_export_killed_mid_page_and_resumed_has_each_record_once(
    tmp_path: Path, sb: Sandbox, what: str, page_size: int
) -> None:
    """Users, a group's members and the exams: a run SIGKILLed with a written but uncommitted
    page, then run again, leaves exactly the server's records in the file, each once."""
    resource, filters, want = _expected(sb, what)
    path = _job(
        tmp_path,
        sb.url,
        f"""  resource: {resource}
  filters: {filters}
  format: csv
  columns: [id, type]
  output: out/{what}.csv
  page_size: {page_size}
  parallel: 3
  commit_pages: 1
  commit_interval_ms: 60000
""",
    )
    out = tmp_path / "out" / f"{what}.csv"
    env = dict(os.environ, SYNAP_TOKEN=sb.token, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", CHILD, str(path), "3"]
    async with await anyio.open_process(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    ) as proc:
        assert proc.stdout is not None
        seen = b""
        async for chunk in proc.stdout:
            seen += chunk
            if b"ready" in seen:
                break
        proc.kill()
        await proc.wait()
    # Two pages committed; the third was in the file, uncommitted, when the process died.
    assert len(_rows(out)) == 3 * page_size
    route = "users.list" if resource == "users" else "exams.list"
    before = sb.statistics().by_route.get(route, 0)
    code, text = await _run(path)
    assert code == EXIT_OK, text
    assert "resumed" in text
    # The resume starts at the third page: it fetches every page but the two committed.
    pages = -(-len(want) // page_size)
    assert sb.statistics().by_route.get(route, 0) - before == pages - 2
    ids = [r["id"] for r in _rows(out)]
    assert len(ids) == len(set(ids)) and set(ids) == want


# --- columns and joins ------------------------------------------------------------------------


async def test_csv_columns_read_dotted_paths_and_included_resources(
    tmp_path: Path, sb: Sandbox
) -> None:
    """user.attributes.emailAddress and examV2.attributes.name come from `included`, joined by
    each attempt's relationships; cells a spreadsheet would run are neutralised."""
    first = next(iter(sb.store.attempts.values()))
    user = sb.store.users[first.user_id]
    user.name = "=HYPERLINK(1)"
    user.raw = None
    path = _job(
        tmp_path,
        sb.url,
        """  resource: attempts
  format: csv
  columns: [id, attributes.examStatus, relationships.user.id, user.attributes.emailAddress,
            user.attributes.name, examV2.attributes.name]
  output: out/attempts.csv
  page_size: 25
""",
    )
    code, text = await _run(path)
    assert code == EXIT_OK, text
    rows = _rows(tmp_path / "out" / "attempts.csv")
    assert len(rows) == len(sb.store.attempts)
    for row in rows:
        attempt = sb.store.attempts[row["id"]]
        who = sb.store.users[attempt.user_id]
        assert row["relationships.user.id"] == who.id
        assert row["user.attributes.emailAddress"] == who.email
        assert row["examV2.attributes.name"] == sb.store.exams[attempt.exam_id].name
        assert row["attributes.examStatus"] == attempt.exam_status
    mine = next(r for r in rows if r["id"] == first.id)
    assert mine["user.attributes.name"] == "'=HYPERLINK(1)"


async def test_sparse_fieldsets_and_sort_reach_the_server(tmp_path: Path, sb: Sandbox) -> None:
    """fields[User] limits the attributes the server sends; ndjson keeps resources as sent."""
    path = _job(
        tmp_path,
        sb.url,
        """  resource: users
  sort: "-id"
  fields: {User: [emailAddress]}
  output: out/users.ndjson
""",
    )
    code, text = await _run(path)
    assert code == EXIT_OK, text
    lines = [json.loads(x) for x in (tmp_path / "out" / "users.ndjson").read_text().splitlines()]
    assert [r["id"] for r in lines] == sorted(sb.store.users, reverse=True)
    assert all(set(r["attributes"]) == {"emailAddress"} for r in lines)


# --- since: last-run --------------------------------------------------------------------------


async def test_since_last_run_exports_only_the_users_changed_since(
    tmp_path: Path, sb: Sandbox
) -> None:
    """The second run's file holds only the users updated after the first run started."""
    path = _job(
        tmp_path,
        sb.url,
        """  resource: users
  format: csv
  columns: [id, attributes.name]
  output: out/users.csv
  since: last-run
""",
    )
    code, text = await _run(path)
    assert code == EXIT_OK, text
    assert len(_rows(tmp_path / "out" / "users.csv")) == len(sb.store.users)
    changed = sorted(sb.store.users)[:3]
    async with SynapClient(sb.url, token=sb.token) as client:
        for uid in changed:
            patch = ResourcePatch(type="User", id=uid, attributes={"name": f"Renamed {uid}"})
            await client.update(client.profile.users_path, patch, AnyResource)
    code, text = await _run(path)
    assert code == EXIT_OK, text
    rows = _rows(tmp_path / "out" / "users.2.csv")
    assert sorted(r["id"] for r in rows) == changed
    assert {r["attributes.name"] for r in rows} == {f"Renamed {u}" for u in changed}


async def test_since_on_a_collection_without_an_updated_filter_is_an_error_at_its_line(
    tmp_path: Path, sb: Sandbox
) -> None:
    """user-groups has no updated-time filter in the profile: since is refused, nothing sent."""
    path = _job(
        tmp_path,
        sb.url,
        """  resource: user-groups
  output: out/groups.ndjson
  since: last-run
""",
    )
    before = sb.statistics().requests
    with pytest.raises(SpecError) as info:
        build_task(load_job(path), load_job(path).profile)
    assert str(info.value).startswith(f"{path}:{_line(path, 'since:')}: task.since: user-groups")
    assert "api.profile.since_filters" in str(info.value)
    code, _ = await _run(path)
    assert code == EXIT_INVALID and sb.statistics().requests == before


# --- server mode -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["user-group-exports", "exam-candidate-exports"])
async def test_a_server_export_of_users_is_polled_and_downloaded(
    tmp_path: Path, sb: Sandbox, which: str
) -> None:
    """mode server creates the export, polls its BackgroundJob and writes the file's users:
    a group's members, or an exam's candidates."""
    if which == "user-group-exports":
        target = _cohort(sb)
        rel = f"{{userGroup: {target}}}"
        want = set(sb.store.groups[target].members)
    else:
        target = next(iter(sb.store.exams))
        rel = f"{{examV2: {target}}}"
        want = {a.user_id for a in sb.store.attempts_by_exam[target]}
    path = _job(
        tmp_path,
        sb.url,
        f"""  resource: {which}
  mode: server
  relationships: {rel}
  format: csv
  columns: [id, attributes.emailAddress]
  output: out/users.csv
""",
    )
    job = load_job(path)
    task = build_task(job, job.profile)
    assert isinstance(task, ExportTask)
    code, text = await _run(path)
    assert code == EXIT_OK, text
    rows = _rows(tmp_path / "out" / "users.csv")
    assert {r["id"] for r in rows} == want and len(rows) == len(want)
    assert all(r["attributes.emailAddress"] == sb.store.users[r["id"]].email for r in rows)
    assert sb.statistics().by_route.get("background-jobs.get", 0) >= 1


# --- errors at their line --------------------------------------------------------------------


async def test_a_filter_the_server_refuses_is_an_error_at_its_line(
    tmp_path: Path, sb: Sandbox
) -> None:
    """An unknown filter is a 400 from the server; the error names the filter's line."""
    path = _job(
        tmp_path,
        sb.url,
        """  resource: users
  filters:
    emailAddress: a@b.example
    colour: blue
  output: out/users.ndjson
""",
    )
    code, text = await _run(path)
    assert code == EXIT_INVALID
    assert f"job.yaml:{_line(path, 'colour:')}: task.filters.colour: the server refused" in text
    assert not (tmp_path / "out" / "users.ndjson").exists()


async def test_an_unknown_collection_is_an_error_at_the_resource_line(
    tmp_path: Path, sb: Sandbox
) -> None:
    """A path the server does not have (404) is one error at task.resource; no file."""
    path = _job(tmp_path, sb.url, "  resource: no-such-things\n  output: out/x.ndjson\n")
    code, text = await _run(path)
    assert code == EXIT_INVALID
    assert f"job.yaml:{_line(path, 'resource:')}: task.resource: the server has no" in text
    assert not (tmp_path / "out" / "x.ndjson").exists()


@pytest.mark.parametrize(
    ("task", "at", "needle"),
    [
        (
            "  resource: ../users\n  output: o.ndjson\n",
            "task.resource",
            "expected a collection path",
        ),
        (
            "  resource: users\n  format: csv\n  output: o.csv\n",
            "task.format",
            "a csv export of users needs columns",
        ),
        (
            "  resource: users\n  mode: server\n  output: o.ndjson\n",
            "task.resource",
            "no server-side export 'users' in the API profile",
        ),
        (
            "  resource: user-group-exports\n  mode: server\n  relationships: {colour: x}\n"
            "  output: o.ndjson\n",
            "task.relationships.colour",
            "unknown relationship 'colour'",
        ),
    ],
)
def test_bad_export_specs_are_errors_at_their_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str, at: str, needle: str
) -> None:
    """A bad path, csv without columns, an unknown server export or relationship: one error
    naming the job-file line of the key at fault, before anything is sent."""
    monkeypatch.setenv("SYNAP_TOKEN", "p:test")
    path = _job(tmp_path, "https://api.example.test/v3", task)
    job = load_job(path)
    with pytest.raises(SpecError) as info:
        build_task(job, job.profile)
    key = at.rsplit(".", 1)[1] if at.count(".") == 1 else at.split(".")[1]
    line = _line(path, f"  {key}:")
    assert str(info.value).startswith(f"{path}:{line}: {at}: {needle}")


async def test_the_cohort_demo_job_runs_as_shipped(tmp_path: Path) -> None:
    """jobs/demo/export-cohort.yaml runs against its embedded sandbox and writes the cohort."""
    demo = ROOT / "jobs" / "demo" / "export-cohort.yaml"
    copy = tmp_path / "export-cohort.yaml"
    copy.write_text(demo.read_text())
    code, text = await _run(copy)
    assert code == EXIT_OK, text
    files = list((tmp_path / "out" / "demo-export-cohort").glob("cohort-*.csv"))
    assert len(files) == 1
    rows = _rows(files[0])
    assert len(rows) == 100 and len({r["id"] for r in rows}) == 100


async def test_plan_counts_the_records_and_writes_nothing(tmp_path: Path, sb: Sandbox) -> None:
    """plan reads one record for the total and names the file; no file, no ledger run."""
    group = _cohort(sb)
    path = _job(
        tmp_path,
        sb.url,
        f"  resource: users\n  filters: {{userGroup: {group}}}\n  output: out/m.ndjson\n",
    )
    console = Console(file=io.StringIO(), width=300)
    code = await plan_job(load_job(path), console=console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert code == EXIT_OK, text
    assert f"users: {len(sb.store.groups[group].members)} records" in text
    assert "a new export (new file)" in text
    assert not (tmp_path / "out" / "m.ndjson").exists()


async def test_a_parquet_export_of_exams_has_each_exam_once(tmp_path: Path, sb: Sandbox) -> None:
    """Parquet goes through the same exporter: its staging file is converted at the end."""
    pq = pytest.importorskip("pyarrow.parquet")
    path = _job(
        tmp_path,
        sb.url,
        """  resource: exam-v-2s
  format: parquet
  columns: [id, attributes.name, relationships.userGroup.id]
  output: out/exams.parquet
  page_size: 2
""",
    )
    code, text = await _run(path)
    assert code == EXIT_OK, text
    table = pq.read_table(tmp_path / "out" / "exams.parquet").to_pylist()
    assert sorted(r["id"] for r in table) == sorted(sb.store.exams)
    assert all(r["relationships.userGroup.id"] == sb.store.exams[r["id"]].group_id for r in table)


async def test_a_server_export_of_a_group_that_does_not_exist_is_an_error_at_its_line(
    tmp_path: Path, sb: Sandbox
) -> None:
    """The server's 404 for the linked group names the relationship's line; no file."""
    path = _job(
        tmp_path,
        sb.url,
        """  resource: user-group-exports
  mode: server
  relationships:
    userGroup: NoSuchGroup
  output: out/g.ndjson
""",
    )
    code, text = await _run(path)
    assert code == EXIT_INVALID
    line = _line(path, "userGroup:")
    assert f"job.yaml:{line}: task.relationships.userGroup: the server refused this" in text
    assert "UserGroup NoSuchGroup does not exist" in text


async def test_since_last_run_on_action_logs_uses_their_created_time_filter(
    tmp_path: Path, sb: Sandbox
) -> None:
    """action-logs' since filter is filter[createdSince] (profile since_filters): the second
    run holds only what a registration made happen after the first run started."""
    path = _job(
        tmp_path,
        sb.url,
        """  resource: action-logs
  format: csv
  columns: [id, attributes.action, user.attributes.emailAddress]
  output: out/log.csv
  since: last-run
""",
    )
    code, text = await _run(path)
    assert code == EXIT_OK, text
    async with SynapClient(sb.url, token=sb.token) as client:
        body = {
            "data": {
                "type": "UserRegistration",
                "attributes": {"name": "New Person", "emailAddress": "new.person@example.test"},
            }
        }
        await client.request("POST", client.profile.registrations_path, body=body)
    code, text = await _run(path)
    assert code == EXIT_OK, text
    rows = _rows(tmp_path / "out" / "log.2.csv")
    assert {r["attributes.action"] for r in rows} == {"user.registered", "user.addedToGroup"}
    assert {r["user.attributes.emailAddress"] for r in rows} == {"new.person@example.test"}


async def test_a_since_filter_named_in_the_profile_but_refused_is_an_error_at_since(
    tmp_path: Path, sb: Sandbox
) -> None:
    """api.profile.since_filters may name a filter for any collection; a server that refuses
    it (the sandbox's user-groups) gives one error at task.since, before any file."""
    path = tmp_path / "job.yaml"
    path.write_text(
        f"""version: 1
name: coll
api:
  base_url: {sb.url}
  token: ${{SYNAP_TOKEN}}
  profile: {{since_filters: {{user-groups: "filter[updatedSince]"}}}}
task:
  kind: export
  resource: user-groups
  output: out/groups.ndjson
  since: "2024-01-01T00:00:00Z"
"""
    )
    code, text = await _run(path)
    assert code == EXIT_INVALID
    assert f"job.yaml:{_line(path, 'since:')}: task.since: the server refused this" in text
    assert not (tmp_path / "out" / "groups.ndjson").exists()


async def test_since_last_run_in_server_mode_keeps_the_lines_updated_since(
    tmp_path: Path, sb: Sandbox
) -> None:
    """A server export's file is filtered by attributes.updatedAt: after one member changes,
    the next run's file holds that member only."""
    group = _cohort(sb)
    path = _job(
        tmp_path,
        sb.url,
        f"""  resource: user-group-exports
  mode: server
  relationships: {{userGroup: {group}}}
  output: out/members.ndjson
  since: last-run
""",
    )
    code, text = await _run(path)
    assert code == EXIT_OK, text
    first = (tmp_path / "out" / "members.ndjson").read_text().splitlines()
    assert len(first) == len(sb.store.groups[group].members)
    member = next(iter(sb.store.groups[group].members))
    async with SynapClient(sb.url, token=sb.token) as client:
        patch = ResourcePatch(type="User", id=member, attributes={"name": "Changed Member"})
        await client.update(client.profile.users_path, patch, AnyResource)
    code, text = await _run(path)
    assert code == EXIT_OK, text
    second = [
        json.loads(x) for x in (tmp_path / "out" / "members.2.ndjson").read_text().splitlines()
    ]
    assert [r["id"] for r in second] == [member]
