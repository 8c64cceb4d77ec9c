"""The assign-markers task against the real sandbox: plan == run, idempotence, constraints."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from synap_bulk.client import SynapClient
from synap_bulk.clock import FakeClock
from synap_bulk.engine import Engine, EngineConfig
from synap_bulk.errors import SourceError, SpecError, SynapBulkError
from synap_bulk.items import InvalidRow, Item, Safety
from synap_bulk.jsonapi import ResourceIdentifier
from synap_bulk.ledger import Ledger
from synap_bulk.planning import plan_job
from synap_bulk.profile import DEFAULT_PROFILE
from synap_bulk.resources import MARKER_ROLES, Attempt, Exam, User
from synap_bulk.retry import RetryPolicy
from synap_bulk.runner import run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.sandbox.store import AttemptRec
from synap_bulk.spec import AssignMarkersSpec, JobFile, load_job
from synap_bulk.tasks import assign_markers
from synap_bulk.tasks.assign_markers import (
    AssignMarkersTask,
    MarkerLoad,
    render_allocation_table,
)
from synap_bulk.tasks.assign_scope import ExamScope

ROLE = "provisional"
ROLE_PATH = DEFAULT_PROFILE.marker_role_paths[ROLE]
#: The engine's item retries, with room for the fault-injection test's commit-then-fail faults.
_TEN_TRIES = RetryPolicy(max_attempts=10, base=0.5, cap=30.0)


def _spec(**settings: Any) -> AssignMarkersSpec:
    """A task section with this file's defaults: balanced double marking, seed 7."""
    base: dict[str, Any] = {
        "role": ROLE,
        "strategy": "balanced",
        "seed": 7,
        "per_attempt": 2,
    }
    base.update(settings)
    return AssignMarkersSpec(**base)


class Memory:
    """A cursor store in memory, as the ledger is to a task's prepare."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def get_cursor(self, name: str) -> str | None:
        return self.values.get(name)

    async def set_cursor(self, name: str, value: str) -> None:
        self.values[name] = value


class Job:
    """The little of a loaded job file the task uses."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "job.yaml"
        self.lines = {"task.exams": 5, "task.exams[0]": 6, "task.strategy": 9}

    def resolve(self, path: str) -> Path:
        return self.path.parent / path

    def line_of(self, path: str) -> int | None:
        return self.lines.get(path)

    error = JobFile.error  # the real message format, over this stand-in's lines
    input_file = JobFile.input_file


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(seed=1, users=120, exams=2, attempts_per_exam=24, markers=6)
    async with Sandbox(config) as sb:
        yield sb


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[SynapClient]:
    async with SynapClient(sandbox.url, token=sandbox.token) as c:
        yield c


async def _exams(client: SynapClient) -> list[Exam]:
    return [e async for e in client.paginate(DEFAULT_PROFILE.exams_path, None, Exam)]


async def _published(client: SynapClient) -> Exam:
    for exam in await _exams(client):
        if exam.attributes.status != "draft" and exam.rel_id(MARKER_ROLES[ROLE].pool):
            return exam
    raise AssertionError("the seeded sandbox has no published exam with a pool")


async def _task(tmp_path: Path, client: SynapClient, **settings: Any) -> AssignMarkersTask:
    task = AssignMarkersTask(_spec(**settings), Job(tmp_path), DEFAULT_PROFILE)
    await task.prepare(client, Memory())
    return task


async def _collect(task: AssignMarkersTask) -> tuple[list[Item], list[InvalidRow]]:
    items: list[Item] = []
    invalid: list[InvalidRow] = []
    async for entry in task.items():
        (items if isinstance(entry, Item) else invalid).append(entry)
    return items, invalid


async def _members(client: SynapClient, attempt_id: str) -> set[str]:
    ids = await client.get_members(DEFAULT_PROFILE.attempts_path, attempt_id, ROLE_PATH)
    return {r.id for r in ids}


async def _attempts(client: SynapClient, exam_id: str) -> list[Attempt]:
    p = DEFAULT_PROFILE
    params = {p.filter_exam: exam_id, p.filter_status: "submitted"}
    return [a async for a in client.paginate(p.attempts_path, params, Attempt)]


async def _email(client: SynapClient, user_id: str) -> str:
    user = await client.get(DEFAULT_PROFILE.users_path, user_id, User)
    assert user.attributes.emailAddress
    return user.attributes.emailAddress


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _relationship_writes(sandbox: Sandbox) -> int:
    """Marker relationship writes the sandbox has seen (POST, DELETE, PATCH)."""
    routes = sandbox.statistics().by_route
    return sum(routes.get(f"attempts.markers.{op}", 0) for op in ("add", "remove", "replace"))


async def test_plan_is_what_run_does(tmp_path: Path, client: SynapClient, sandbox: Sandbox) -> None:
    """Every planned marker ends up on its attempt, in one write per changed attempt."""
    exam = await _published(client)
    task = await _task(tmp_path, client, exams=[exam.id])
    assert task.kind == "assign-markers" and task.safety is Safety.IDEMPOTENT
    items, invalid = await _collect(task)
    assert items and not invalid
    planned = {}
    for item in items:
        row = await task.plan(item, client)
        planned[item.payload["attempt"]] = set(item.payload["markers"])
        assert row.action in ("assign", "unchanged")
    before = {a: await _members(client, a) for a in planned}
    for item in items:
        outcome = await task.execute(item, client)
        assert outcome.status == "done"
    assert _relationship_writes(sandbox) == sum(1 for v in planned.values() if v)
    for attempt_id, new in planned.items():
        after = await _members(client, attempt_id)
        assert after == before[attempt_id] | new
        assert len(after) >= 2
    loads = {m.marker_id: m for m in task.loads}
    assert max(m.after for m in loads.values()) - min(m.after for m in loads.values()) <= 1
    summary = task.summary()
    assert sum(m["applied"] for m in summary["markers"]) == sum(len(v) for v in planned.values())


async def test_run_again_changes_nothing(
    tmp_path: Path, client: SynapClient, sandbox: Sandbox
) -> None:
    """A second run over the same attempts plans nothing and sends no write at all."""
    exam = await _published(client)
    first = await _task(tmp_path, client, exams=[exam.id])
    for item in (await _collect(first))[0]:
        await first.execute(item, client)
    writes = _relationship_writes(sandbox)
    assert writes > 0
    second = await _task(tmp_path, client, exams=[exam.id])
    items, invalid = await _collect(second)
    assert not invalid
    assert {(await second.plan(i, client)).action for i in items} == {"unchanged"}
    for item in items:
        assert (await second.execute(item, client)).action == "unchanged"
    assert _relationship_writes(sandbox) == writes
    assert second.allocation is not None and second.allocation.assignments == []


async def test_same_seed_same_plan(tmp_path: Path, client: SynapClient) -> None:
    """Plan twice with one seed and the server unchanged: the same allocation."""
    exam = await _published(client)
    a = await _task(tmp_path, client, exams=[exam.id], strategy="random", seed=3)
    b = await _task(tmp_path, client, exams=[exam.id], strategy="random", seed=3)
    assert a.allocation == b.allocation


async def test_exclusions_are_honoured_on_the_server(tmp_path: Path, client: SynapClient) -> None:
    """A marker excluded for a candidate never marks that candidate's attempt."""
    exam = await _published(client)
    attempts = await _attempts(client, exam.id)
    pool = MARKER_ROLES[ROLE].pool
    gid = exam.rel_id(pool)
    assert gid is not None
    p = DEFAULT_PROFILE
    markers = [u async for u in client.paginate(p.users_path, {p.filter_user_group: gid}, User)]
    # Exclude every marker but two from the first three candidates: they must get exactly those.
    allowed = sorted(m.id for m in markers)[:2]
    banned = [m for m in markers if m.id not in allowed]
    targets = [a.rel_id("user") or "" for a in attempts[:3]]
    rows = [
        [m.attributes.emailAddress or m.id, await _email(client, cand)]
        for cand in targets
        for m in banned
    ]
    _write_csv(tmp_path / "exclusions.csv", ["marker", "candidate"], rows)
    task = await _task(tmp_path, client, exams=[exam.id], exclusions="exclusions.csv")
    items, invalid = await _collect(task)
    assert not invalid
    for item in items:
        await task.execute(item, client)
    for attempt in attempts[:3]:
        got = await _members(client, attempt.id)
        assert got <= set(allowed) | set(attempt.rel_ids(MARKER_ROLES[ROLE].relationship))
        assert not got & {m.id for m in banned} - set(
            attempt.rel_ids(MARKER_ROLES[ROLE].relationship)
        )


async def test_unsatisfiable_attempts_are_reported(tmp_path: Path, client: SynapClient) -> None:
    """When the limit leaves too few markers, the attempts left short are invalid, saying why."""
    exam = await _published(client)
    task = await _task(tmp_path, client, exams=[exam.id], max_per_marker=1)
    _, invalid = await _collect(task)
    assert invalid
    assert all(r.error.code == "unsatisfied" for r in invalid)
    assert all("max_per_marker" in r.error.detail for r in invalid)
    text = render_allocation_table(task.loads, task.unsatisfied, role=ROLE)
    assert "Cannot be satisfied" in text
    assert "max_per_marker" in text


async def test_draft_exam_is_a_clear_failure(tmp_path: Path, client: SynapClient) -> None:
    """Assigning on a draft exam stops before any write, naming the exam and the job-file line."""
    drafts = [e for e in await _exams(client) if e.attributes.status == "draft"]
    if not drafts:
        pytest.skip("the seeded sandbox has no draft exam")
    with pytest.raises(SpecError) as info:
        await _task(tmp_path, client, exams=[drafts[0].id])
    assert "is a draft" in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'job.yaml'}:6: task.exams[0]: exam ")


async def test_mapping_rows_are_checked_before_any_request(
    tmp_path: Path, client: SynapClient
) -> None:
    """Mapping rows with an unknown attempt or a marker outside the pool fail with their line."""
    exam = await _published(client)
    attempts = await _attempts(client, exam.id)
    p = DEFAULT_PROFILE
    gid = exam.rel_id(MARKER_ROLES[ROLE].pool)
    assert gid is not None
    pool = [u async for u in client.paginate(p.users_path, {p.filter_user_group: gid}, User)]
    pool_ids = {u.id for u in pool}
    outsiders = [
        u
        async for u in client.paginate(p.users_path, None, User)
        if u.id not in pool_ids and u.attributes.emailAddress
    ]
    outsider = outsiders[0]
    good = pool[0].attributes.emailAddress or pool[0].id
    target = next(a for a in attempts if a.rel_id("user") != pool[0].id)
    _write_csv(
        tmp_path / "map.csv",
        ["attempt", "marker"],
        [
            [target.id, good],
            ["no-such-attempt", good],
            [target.id, outsider.attributes.emailAddress or ""],
            [target.id, good.upper()],
        ],
    )
    task = await _task(tmp_path, client, exams=[], mapping="map.csv", strategy=None)
    items, invalid = await _collect(task)
    assert [i.line for i in items] == [2]
    assert {r.line: r.error.code for r in invalid} == {
        3: "not-found",
        4: "not-in-pool",
        5: "duplicate",
    }
    bad = next(r for r in invalid if r.line == 4)
    assert gid in bad.error.detail and bad.error.field == "marker"
    assert task.input_columns == [
        "attempt",
        "marker",
        "exam_name",
        "candidate_email",
        "marker_email",
    ]
    named = items[0].row
    assert named["exam_name"] == exam.attributes.name and named["marker_email"] == good
    assert named["candidate_email"] and "@" in named["candidate_email"]
    assert next(r for r in invalid if r.line == 3).row["exam_name"] == ""
    await task.execute(items[0], client)
    assert pool[0].id in await _members(client, target.id)
    assert task.column_for_pointer("/data/0") == "marker"
    again = await _task(tmp_path, client, exams=[], mapping="map.csv", strategy=None)
    planned = await again.plan((await _collect(again))[0][0], client)
    assert planned.action == "unchanged"
    assert planned.detail == f"{good} ({pool[0].id}): already assigned"


async def test_mapping_by_candidate_and_exam_name(tmp_path: Path, client: SynapClient) -> None:
    """Rows naming a candidate and an exam find the attempt; bad rows fail on their own line."""
    exams = await _exams(client)
    published = await _published(client)
    draft = next(e for e in exams if e.attributes.status == "draft")
    p = DEFAULT_PROFILE
    target = (await _attempts(client, published.id))[0]
    in_draft = [
        a async for a in client.paginate(p.attempts_path, {p.filter_exam: draft.id}, Attempt)
    ]
    marker = "marker0002@sandbox.example"
    _write_csv(
        tmp_path / "map.csv",
        ["candidate", "exam", "marker"],
        [
            [
                await _email(client, target.rel_id("user") or ""),
                published.attributes.name or "",
                marker,
            ],
            ["nobody@example.edu", published.id, marker],
            ["a", "b", "c", "d"],
            [await _email(client, in_draft[0].rel_id("user") or ""), draft.id, marker],
            [await _email(client, target.rel_id("user") or ""), "No Such Exam", marker],
        ],
    )
    task = await _task(tmp_path, client, mapping="map.csv", strategy=None)
    items, invalid = await _collect(task)
    assert [(i.line, i.payload["attempt"]) for i in items] == [(2, target.id)]
    assert {r.line: r.error.code for r in invalid} == {
        3: "not-found",
        4: "row",
        5: "exam",
        6: "not-found",
    }
    assert "is a draft" in next(r for r in invalid if r.line == 5).error.detail
    assert [u[0] for u in task.unsatisfied] == ["line 3", "line 4", "line 5", "line 6"]
    assert "No Such Exam" in next(r for r in invalid if r.line == 6).error.detail
    [item] = items
    assert await task.reconcile(item, client) is None
    assert (await task.execute(item, client)).action == "assigned"
    reconciled = await task.reconcile(item, client)
    assert reconciled is not None and reconciled.status == "done"


async def test_a_value_is_an_email_by_the_one_project_rule(
    client: SynapClient, sandbox: Sandbox
) -> None:
    """Users are looked up by email only for an address the server would accept
    (sources.is_email, trimmed, any case); a value merely containing "@" is an externalId."""
    p = DEFAULT_PROFILE
    padded = " Marker0002@Sandbox.EXAMPLE "
    params = {p.filter_email: "marker0002@sandbox.example"}
    [marker] = [u async for u in client.paginate(p.users_path, params, User)]
    student = sandbox.store.add_user("J Doe", "jdoe@sandbox.example", "jdoe@campus", None)
    scope = ExamScope(p, MARKER_ROLES[ROLE], ROLE_PATH)
    await scope.resolve_values(client, [padded, "jdoe@campus"], external=True)
    assert scope.user_id(padded) == marker.id
    assert scope.user_id("jdoe@campus", external=True) == student.id
    assert scope.user_id("nobody@example.edu") is None  # an address, unknown: no user


async def test_unassign_removes_what_was_assigned(tmp_path: Path, client: SynapClient) -> None:
    """Unassign without a mapping clears the role's markers from the attempts in scope."""
    exam = await _published(client)
    first = await _task(tmp_path, client, exams=[exam.id], per_attempt=1)
    for item in (await _collect(first))[0]:
        await first.execute(item, client)
    undo = await _task(tmp_path, client, exams=[exam.id], action="unassign", strategy=None)
    items, _ = await _collect(undo)
    for item in items:
        await undo.execute(item, client)
    for item in items:
        assert await _members(client, item.payload["attempt"]) == set()


def test_settings_are_checked_with_their_line(tmp_path: Path) -> None:
    """Contradictory settings fail at load time, naming the job file's line and field."""
    _write_csv(tmp_path / "m.csv", ["attempt", "marker"], [])
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "version: 1\n"
        "name: t\n"
        "api: {base_url: sandbox}\n"
        "task:\n"
        "  kind: assign-markers\n"
        "  role: moderating\n"
        "  exams: ['1']\n"
        "  mapping: m.csv\n"
        "  strategy: random\n",
        encoding="utf-8",
    )
    job = load_job(job_file)
    with pytest.raises(SpecError) as info:
        AssignMarkersTask(job.spec.task, job, DEFAULT_PROFILE)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"{job_file}:9: task.strategy: give either a mapping CSV or a strategy, not both"
    )
    _write_csv(tmp_path / "bad.csv", ["attempt", "who"], [])
    with pytest.raises(SourceError, match="missing column"):
        AssignMarkersTask(
            _spec(exams=["1"], mapping="bad.csv", strategy=None), Job(tmp_path), DEFAULT_PROFILE
        )


def test_allocation_table_lists_loads_and_reasons() -> None:
    """The plan table shows each marker's load before and after and each unsatisfied attempt."""
    text = render_allocation_table(
        [
            MarkerLoad(marker_id="1", label="ada@example.edu", before=2, after=5),
            MarkerLoad(marker_id="2", label="bob@example.edu", before=4, after=4, in_pool=False),
        ],
        [("17", 2, "needs 2 more markers, no eligible marker (3 excluded)")],
        role="provisional",
    )
    assert "ada@example.edu" in text and "+3" in text
    assert "bob@example.edu (not in pool)" in text
    assert "needs 2 more markers, no eligible marker (3 excluded)" in text
    many = [(str(i), 1, "why") for i in range(60)]
    text = render_allocation_table([], many, max_rows=50)
    assert "... and 10 more (see plan.csv)" in text and "(no markers)" in text


async def test_demo_job_plans_and_runs(tmp_path: Path) -> None:
    """jobs/demo/assign-markers.yaml plans and runs: every submitted attempt double-marked;
    plan.csv and success.csv name the exam, the candidate and the markers beside their ids."""
    demo = Path(__file__).parent.parent / "jobs" / "demo"
    shutil.copy(demo / "assign-markers.yaml", tmp_path / "assign-markers.yaml")
    shutil.copy(demo / "markers-exclusions.csv", tmp_path / "markers-exclusions.csv")
    job = load_job(tmp_path / "assign-markers.yaml")
    console = Console(file=io.StringIO(), width=120)
    assert await plan_job(job, console=console) == 0
    out = tmp_path / "out" / job.spec.name
    with (out / "plan.csv").open(encoding="utf-8", newline="") as fh:
        plan = list(csv.DictReader(fh))
    assert plan and {r["action"] for r in plan} == {"assign"}
    assert await run_job(job, console=console, handle_signals=False) == 0
    with (out / "success.csv").open(encoding="utf-8", newline="") as fh:
        success = list(csv.DictReader(fh))
    done = {
        r["attempt"]: ", ".join(
            f"{email} ({mid})"
            for email, mid in zip(r["markers"].split(";"), r["marker_ids"].split(";"), strict=True)
        )
        for r in success
    }
    assert done == {r["remote_id"]: r["detail"] for r in plan}
    for r in success:
        assert r["exam_name"] == "Sandbox Exam 1" and r["exam"]
        assert r["candidate_email"].endswith("@students.example") and r["candidate"]
        assert "@sandbox.example" in r["markers"] and r["marker_ids"]
    first = plan[0]
    assert first["name"].startswith(f'attempt {first["remote_id"]}, exam "Sandbox Exam 1" (')
    assert "@students.example (" in first["name"]
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert f"Plan for {len(plan)} attempts: {len(plan)} assign" in text
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["task"]["applied"] == 2 * len(plan)
    assert summary["task"]["unsatisfied"] == 0
    assert summary["task"]["notes"] == []
    after = [m["after"] for m in summary["task"]["markers"]]
    assert max(after) - min(after) <= 1


async def test_faults_and_resume_leave_exactly_the_allocation(tmp_path: Path) -> None:
    """Under 5xx and commit-then-fail faults, a stopped and resumed run ends with 2 markers each."""
    config = SandboxConfig(
        seed=3,
        users=120,
        exams=2,
        attempts_per_exam=40,
        markers=6,
        fault_rate=0.15,
        faults={"500": 1.0, "503": 1.0, "commit-then-500": 2.0, "commit-then-drop": 1.0},
    )
    clock = FakeClock()
    async with (
        Sandbox(config) as sb,
        SynapClient(sb.url, token=sb.token, clock=clock) as c,
    ):
        exam_id = next(e.id for e in sb.store.exams.values() if e.status == "published")
        # First run: only part of the work goes through before it "stops".
        first = AssignMarkersTask(_spec(exams=[exam_id]), Job(tmp_path), DEFAULT_PROFILE)
        await first.prepare(c, Memory())
        items, _ = await _collect(first)
        assert len(items) > 4
        for item in items[: len(items) // 2]:
            for _ in range(10):  # the engine would retry these; faults are random
                try:
                    await first.execute(item, c)
                    break
                except SynapBulkError:
                    continue
        # Resume: a fresh task sees what is on the server and finishes the rest.
        second = AssignMarkersTask(_spec(exams=[exam_id]), Job(tmp_path), DEFAULT_PROFILE)
        engine = Engine(
            second,
            c,
            None,
            config=EngineConfig(concurrency=4, item_retry=_TEN_TRIES),
            clock=clock,
        )
        result = await engine.run()
        assert result.status == "completed" and result.stats.failed == 0
        assert second.allocation is not None
        # Only the attempts the first run did not reach were allocated again.
        assert len(second.allocation.assignments) <= 2 * (len(items) - len(items) // 2)
        sb.configure(fault_rate=0.0)
        for item in items:
            assert len(await _members(c, item.payload["attempt"])) == 2
        assert sb.statistics().faults  # faults really happened


async def test_balanced_counts_the_load_already_on_the_server(
    tmp_path: Path, client: SynapClient
) -> None:
    """Markers already on attempts count: the busy marker gets the fewest new attempts."""
    exam = await _published(client)
    attempts = await _attempts(client, exam.id)
    busy = "marker0001@sandbox.example"
    p = DEFAULT_PROFILE
    [busy_user] = [u async for u in client.paginate(p.users_path, {p.filter_email: busy}, User)]
    for attempt in attempts[:4]:
        body = [ResourceIdentifier(type="User", id=busy_user.id)]
        await client.add_members(p.attempts_path, attempt.id, ROLE_PATH, body)
    task = await _task(tmp_path, client, exams=[exam.id], per_attempt=1)
    loads = {m.label: m for m in task.loads}
    assert loads[busy].before == 4
    assert all(m.before == 0 for label, m in loads.items() if label != busy)
    new = {label: m.after - m.before for label, m in loads.items()}
    # The others catch up with the busy marker first: it gets nothing until they reach 4.
    assert len(attempts) - 4 <= 4 * (len(loads) - 1)
    assert new[busy] == 0
    assert max(new.values()) - min(v for k, v in new.items() if k != busy) <= 1
    items, _ = await _collect(task)
    assert sum(1 for i in items if not i.payload["markers"]) == 4  # already marked


#: A sandbox small enough to run many times, big enough for balanced to have choices.
_RESUME_SANDBOX = SandboxConfig(seed=1, users=120, exams=3, attempts_per_exam=60, markers=6)


class _KilledRun(AssignMarkersTask):
    """A first run that dies after ``k`` items, working from the last attempt backwards as
    concurrent workers may finish out of order (so what is done is not a prefix)."""

    def __init__(self, k: int, *args: Any) -> None:
        super().__init__(*args)
        self.k = k
        self.executed = 0
        self.engine: Engine | None = None

    async def items(self) -> AsyncIterator[Item | InvalidRow]:
        for entry in reversed(self._prepared):
            yield entry

    async def execute(self, item: Item, client: SynapClient) -> Any:
        outcome = await super().execute(item, client)
        self.executed += 1
        if self.executed >= self.k and self.engine is not None:
            self.engine.stop(graceful=False)
        return outcome


def _engine(task: AssignMarkersTask, client: SynapClient, ledger: Ledger | None) -> Engine:
    return Engine(task, client, ledger, config=EngineConfig(concurrency=1), clock=FakeClock())


async def _server_assignment(sb: Sandbox) -> dict[str, frozenset[str]]:
    """Every attempt's provisional markers, straight from the sandbox's store."""
    rel = MARKER_ROLES[ROLE].relationship
    out: dict[str, frozenset[str]] = {}
    async with SynapClient(sb.url, token=sb.token) as c:
        for exam in sb.store.exams.values():
            if exam.status == "draft":
                continue
            for a in await _attempts(c, exam.id):
                out[a.id] = frozenset(a.rel_ids(rel))
    return out


async def _clean_run(tmp_path: Path, exam_ids: list[str]) -> dict[str, frozenset[str]]:
    async with Sandbox(_RESUME_SANDBOX) as sb, SynapClient(sb.url, token=sb.token) as c:
        task = AssignMarkersTask(_spec(exams=exam_ids), Job(tmp_path), DEFAULT_PROFILE)
        async with await Ledger.open(
            tmp_path / "clean.sqlite", job_name="j", task_hash="t", input_hash="i"
        ) as ledger:
            assert (await _engine(task, c, ledger).run()).status == "completed"
        return await _server_assignment(sb)


def _published_ids(sb: Sandbox) -> list[str]:
    return sorted(e.id for e in sb.store.exams.values() if e.status == "published")


@pytest.mark.parametrize("k", [1, 6, 23])
async def test_a_resume_finishes_the_allocation_the_run_started_with(
    tmp_path: Path, k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after k items and resumed, a balanced run leaves exactly a clean run's markers,
    from the stored allocation (allocate is not called again)."""
    calls: list[int] = []
    real_allocate = assign_markers.allocate

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_allocate(*args, **kwargs)

    monkeypatch.setattr(assign_markers, "allocate", counted)
    path = tmp_path / "job.sqlite"
    async with Sandbox(_RESUME_SANDBOX) as sb, SynapClient(sb.url, token=sb.token) as c:
        exam_ids = _published_ids(sb)
        spec = _spec(exams=exam_ids)
        killed = _KilledRun(k, spec, Job(tmp_path), DEFAULT_PROFILE)
        async with await Ledger.open(path, job_name="j", task_hash="t", input_hash="i") as ledger:
            killed.engine = _engine(killed, c, ledger)
            first = await killed.engine.run()
        assert first.status == "stopped" and first.stats.done == k
        assert calls == [1]
        # Without the stored allocation a resume would choose otherwise: the bug this guards.
        recomputed = AssignMarkersTask(spec, Job(tmp_path), DEFAULT_PROFILE)
        await recomputed.prepare(c, Memory())
        assert recomputed.allocation is not None and killed.allocation is not None
        assert recomputed.allocation.by_attempt() != {
            a: m for a, m in killed.allocation.by_attempt().items() if len(m) == 2
        }
        calls.clear()
        resumed = AssignMarkersTask(spec, Job(tmp_path), DEFAULT_PROFILE)
        async with await Ledger.open(path, job_name="j", task_hash="t", input_hash="i") as ledger:
            second = await _engine(resumed, c, ledger).run()
        assert second.status == "completed" and second.stats.skipped_done == k
        assert calls == []  # read back, not recomputed
        assert resumed.allocation == killed.allocation
        assert resumed.summary()["allocation"] == "stored"
        assert resumed.loads == killed.loads
        after_resume = await _server_assignment(sb)
    clean = await _clean_run(tmp_path, exam_ids)
    assert after_resume == clean
    assert all(len(m) == 2 for m in clean.values())


async def test_plan_shows_the_stored_allocation_and_stores_nothing(tmp_path: Path) -> None:
    """plan with the job's ledger as memory shows the stored allocation; without, none is kept."""
    path = tmp_path / "job.sqlite"
    async with Sandbox(_RESUME_SANDBOX) as sb, SynapClient(sb.url, token=sb.token) as c:
        spec = _spec(exams=_published_ids(sb))
        killed = _KilledRun(3, spec, Job(tmp_path), DEFAULT_PROFILE)
        async with await Ledger.open(path, job_name="j", task_hash="t", input_hash="i") as ledger:
            killed.engine = _engine(killed, c, ledger)
            await killed.engine.run()
            planned = AssignMarkersTask(spec, Job(tmp_path), DEFAULT_PROFILE)
            eng = Engine(planned, c, None, config=EngineConfig(concurrency=2), memory=ledger)
            rows = await eng.plan()
        assert planned.allocation == killed.allocation
        by_attempt = killed.allocation.by_attempt() if killed.allocation else {}
        assert {r.remote_id for r in rows if r.action == "assign"} == set(by_attempt)
        fresh = Memory()
        eng = Engine(AssignMarkersTask(spec, Job(tmp_path), DEFAULT_PROFILE), c, None, memory=fresh)
        await eng.plan()
        assert fresh.values == {}


async def test_attempts_added_before_a_resume_are_allocated_alone(tmp_path: Path) -> None:
    """An attempt added on the server between runs gets markers; the stored ones are kept."""
    memory = Memory()
    async with Sandbox(_RESUME_SANDBOX) as sb, SynapClient(sb.url, token=sb.token) as c:
        exam_id = _published_ids(sb)[0]
        spec = _spec(exams=[exam_id])
        first = AssignMarkersTask(spec, Job(tmp_path), DEFAULT_PROFILE)
        await first.prepare(c, memory)
        assert first.allocation is not None
        exam = sb.store.exams[exam_id]
        some = next(iter(sb.store.attempts.values()))
        added = AttemptRec(sb.store.new_id(), exam_id, some.user_id, exam.name, some.created_at)
        added.exam_status = "submitted"
        sb.store._insert_attempt(added)
        resumed = AssignMarkersTask(spec, Job(tmp_path), DEFAULT_PROFILE)
        await resumed.prepare(c, memory)
        assert resumed.allocation is not None
        new = resumed.allocation.by_attempt()
        assert {a: m for a, m in new.items() if a != added.id} == first.allocation.by_attempt()
        assert len(new[added.id]) == 2
        assert resumed.summary()["allocation"] == "stored+recomputed"
        assert any("1 attempt(s) added" in n for n in resumed.notes)
        again = AssignMarkersTask(spec, Job(tmp_path), DEFAULT_PROFILE)
        await again.prepare(c, memory)
        assert again.allocation == resumed.allocation and again.notes == []


async def test_mapping_rows_are_checked_offline_for_validate(tmp_path: Path) -> None:
    """check_rows (what validate reports) reads the mapping with no server: a row naming no
    attempt, a candidate without an exam, no marker, or repeating an earlier row is invalid at
    its line; a task by strategy has no rows to check offline."""
    _write_csv(
        tmp_path / "map.csv",
        ["attempt", "candidate", "exam", "marker"],
        [
            ["a1", "", "", "m@x.org"],
            ["", "", "", "m@x.org"],
            ["", "c@x.org", "", "m@x.org"],
            ["a2", "", "", ""],
            ["a1", "", "", "M@x.org"],
            ["", "c@x.org", "E1", "m@x.org"],
        ],
    )
    spec = _spec(exams=[], mapping="map.csv", strategy=None)
    task = AssignMarkersTask(spec, Job(tmp_path), DEFAULT_PROFILE)
    entries = [e async for e in task.check_rows()]
    assert [(e.line, e.error.code) for e in entries if isinstance(e, InvalidRow)] == [
        (3, "required"),
        (4, "required"),
        (5, "required"),
        (6, "duplicate"),
    ]
    assert [e.line for e in entries if isinstance(e, Item)] == [2, 7]
    by_strategy = AssignMarkersTask(_spec(exams=["E1"]), Job(tmp_path), DEFAULT_PROFILE)
    assert [e async for e in by_strategy.check_rows()] == []


def test_a_fed_back_mapping_keeps_one_set_of_naming_columns() -> None:
    """A failures file fed back already has the naming columns: they are filled afresh, never
    added a second time."""
    from synap_bulk.tasks.assign_mapping import mapping_result_columns

    fed_back = ["attempt", "marker", "exam_name", "candidate_email", "marker_email", "_line"]
    assert mapping_result_columns(fed_back) == fed_back
    assert mapping_result_columns(["marker", "attempt"]) == [
        "marker",
        "attempt",
        "exam_name",
        "candidate_email",
        "marker_email",
    ]
