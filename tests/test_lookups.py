"""Named lookups in ``kind: request``: natural keys to ids before any write, cached, cheap."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from synap_bulk.errors import SpecError
from synap_bulk.planning import plan_job
from synap_bulk.runner import run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job

DEMO = Path(__file__).resolve().parent.parent / "jobs" / "demo"
SEED = {"seed": 1, "users": 200, "exams": 2, "attempts_per_exam": 60}

JOB = """\
version: 1
name: timer-by-email
api: {{base_url: sandbox}}
sandbox: {{seed: 1, users: 200, exams: 2, attempts_per_exam: 60, state: state.json}}
task:
  kind: request
  source: rows.csv
  lookups:
    user: {{resource: users, by: {{emailAddress: "{{email}}"}}{user_strategy}}}
    exam: {{resource: exams, by: {{name: "{{exam}}"}}}}
    attempt: {{resource: attempts, by: {{user: "{{user.id}}", exam: "{{exam.id}}"}}}}
  method: POST
  path: attempt-timer-resets
  key: "{{email}} {{exam}}"
  safety: unsafe
  body:
    data:
      type: AttemptTimerReset
      attributes: {{extraTimeInMs: "{{ms:int}}", reason: "for {{user.name}}"}}
      relationships:
        attempt: {{data: {{type: Attempt, id: "{{attempt.id}}"}}}}
"""


async def _seeded_attempts() -> dict[tuple[str, str], list[str]]:
    """(email, exam name) -> attempt ids, read from a fresh sandbox of the same seed."""
    async with Sandbox(SandboxConfig(**SEED)) as sb:
        store = sb.store
        names = {e.id: e.name for e in store.exams.values()}
        out: dict[tuple[str, str], list[str]] = {}
        for a in store.attempts.values():
            email = store.users[a.user_id].email
            out.setdefault((email, names[a.exam_id]), []).append(a.id)
        return out


def _write(tmp: Path, rows: list[tuple[str, str, int]], user_strategy: str = "") -> Path:
    lines = ["email,exam,ms"] + [f"{e},{x},{ms}" for e, x, ms in rows]
    (tmp / "rows.csv").write_text("\n".join(lines) + "\n")
    (tmp / "job.yaml").write_text(JOB.format(user_strategy=user_strategy))
    return tmp / "job.yaml"


@pytest.mark.parametrize("user_strategy", ["", ", strategy: per-row", ", strategy: listing"])
async def test_a_timer_reset_job_from_emails_and_exam_names_reaches_the_right_attempts(
    tmp_path: Path, user_strategy: str
) -> None:
    """Rows naming candidates by email (any case) and exams by name reset exactly their attempts;
    unknown and ambiguous rows are invalid with their line and reason, and nothing is sent."""
    attempts = await _seeded_attempts()
    single = [k for k, v in attempts.items() if len(v) == 1 and k[1] == "Sandbox Exam 1"][:3]
    double = next(k for k, v in attempts.items() if len(v) == 2)
    rows = [
        (single[0][0].upper(), single[0][1], 60000),
        (single[1][0], single[1][1], 120000),
        (single[2][0], single[2][1], 180000),
        ("nobody@example.org", "Sandbox Exam 1", 1000),
        (single[0][0], "No Such Exam", 1000),
        (double[0], double[1], 1000),
    ]
    job = load_job(_write(tmp_path, rows, user_strategy))
    console = Console(file=io.StringIO(), width=120)
    assert await run_job(job, console=console, handle_signals=False) == 1
    async with Sandbox(SandboxConfig(state=str(tmp_path / "state.json"))) as sb:
        store = sb.store
        extra = {a.id: a.extra_time_ms for a in store.attempts.values() if a.extra_time_ms}
        assert len(store.timer_resets) == 3
    expected = {attempts[single[i]][0]: (i + 1) * 60000 for i in range(3)}
    assert extra == expected
    out = tmp_path / "out" / "timer-by-email"
    failures = (out / "failures.csv").read_text().splitlines()
    assert len(failures) == 4
    assert (
        ",5,invalid,lookup,email,user: no user with emailAddress 'nobody@example.org'"
        in (failures[1])
    )
    assert ",6,invalid,lookup,exam,exam: no exam with name 'No Such Exam'" in failures[2]
    assert ',7,invalid,lookup,email,"attempt: 2 attempts with user' in failures[3]
    summary = json.loads((out / "summary.json").read_text())["task"]["lookups"]
    assert summary["exam"] == {"strategy": "listing", "requests": 1, "keys": 2, "found": 1}
    assert (summary["user"]["keys"], summary["user"]["found"]) == (6, 5)


async def test_each_distinct_key_is_looked_up_once(tmp_path: Path) -> None:
    """Six rows of two candidates cost two per-row user lookups, not six (the cache)."""
    attempts = await _seeded_attempts()
    keys = [k for k, v in attempts.items() if len(v) == 1][:2]
    rows = [(keys[i % 2][0], keys[i % 2][1], 1000 * (i + 1)) for i in range(6)]
    rows = [(e, x, ms) for (e, x, ms) in rows]
    job = load_job(_write(tmp_path, rows, ", strategy: per-row"))
    console = Console(file=io.StringIO(), width=120)
    await run_job(job, console=console, handle_signals=False)
    out = tmp_path / "out" / "timer-by-email"
    summary = json.loads((out / "summary.json").read_text())["task"]["lookups"]
    assert summary["user"] == {"strategy": "per-row", "requests": 2, "keys": 2, "found": 2}


def test_a_placeholder_of_an_unknown_lookup_is_a_job_error(tmp_path: Path) -> None:
    """{attempt.id} without an attempt lookup names the line and the columns."""
    from synap_bulk.tasks import build_task

    path = _write(tmp_path, [("a@b.c", "X", 1)])
    text = path.read_text().replace(
        '    attempt: {resource: attempts, by: {user: "{user.id}", exam: "{exam.id}"}}\n', ""
    )
    path.write_text(text)
    job = load_job(path)
    with pytest.raises(SpecError, match=r"unknown column \{attempt.id\}"):
        build_task(job, job.profile)


def test_a_lookup_may_use_only_the_lookups_declared_before_it(tmp_path: Path) -> None:
    """A lookup that names a later lookup's field is refused at its line."""
    from synap_bulk.tasks import build_task

    path = _write(tmp_path, [("a@b.c", "X", 1)])
    text = path.read_text().replace('{name: "{exam}"}', '{name: "{attempt.id}"}')
    path.write_text(text)
    job = load_job(path)
    with pytest.raises(SpecError, match=r"task.lookups.exam.by.name.*unknown column"):
        build_task(job, job.profile)


def test_delete_with_a_body_needs_its_safety_declared(tmp_path: Path) -> None:
    """A relationship removal (DELETE with a body) is allowed once the job says how it repeats."""
    from synap_bulk.tasks import build_task

    path = _write(tmp_path, [("a@b.c", "X", 1)])
    text = path.read_text().replace("method: POST", "method: DELETE")
    path.write_text(text.replace("  safety: unsafe\n", ""))
    job = load_job(path)
    with pytest.raises(SpecError, match="needs its safety declared"):
        build_task(job, job.profile)
    path.write_text(text.replace("safety: unsafe", "safety: idempotent"))
    job = load_job(path)
    assert build_task(job, job.profile).safety.value == "idempotent"


async def test_demo_extra_time_sheet_runs_as_shipped(tmp_path: Path) -> None:
    """jobs/demo/extra-time-sheet.yaml: 3 resets sent, 3 rows invalid before any write."""
    for name in ("extra-time-sheet.yaml", "extra-time-sheet.csv"):
        shutil.copy(DEMO / name, tmp_path / name)
    job = load_job(tmp_path / "extra-time-sheet.yaml")
    console = Console(file=io.StringIO(), width=120)
    assert await plan_job(job, console=console) == 0
    out = tmp_path / "out" / job.spec.name
    plan = (out / "plan.csv").read_text()
    assert (
        "POST attempt-timer-resets (user EDwZATraUO, exam dkjNdPJJlc, attempt j8rAwYyVVv)" in plan
    )
    assert await run_job(job, console=console, handle_signals=False) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"]["created"] == 3
    failures = (out / "failures.csv").read_text().splitlines()[1:]
    assert [f.split(",")[4] for f in failures] == ["5", "6", "7"]


async def test_demo_lock_attempts_locks_exactly_the_named_attempts(tmp_path: Path) -> None:
    """jobs/demo/lock-attempts.yaml locks the three named attempts, once each; plan then says
    they are done."""
    for name in ("lock-attempts.yaml", "lock-attempts.csv"):
        shutil.copy(DEMO / name, tmp_path / name)
    attempts = await _seeded_attempts()
    job = load_job(tmp_path / "lock-attempts.yaml")
    console = Console(file=io.StringIO(), width=120)
    assert await run_job(job, console=console, handle_signals=False) == 1
    rows = (tmp_path / "lock-attempts.csv").read_text().splitlines()[1:4]
    wanted = sorted(attempts[(r.split(",")[0].lower(), r.split(",")[1])][0] for r in rows)
    state = tmp_path / "out" / job.spec.name / "sandbox-state.json"
    async with Sandbox(SandboxConfig(state=str(state))) as sb:
        locks = [d for d in sb.store.docs.values() if d.type == "AttemptLock"]
    assert sorted(d.link("attempt") for d in locks) == wanted


GET_JOB = """\
version: 1
name: who
api: {base_url: sandbox}
sandbox: {seed: 1, users: 20}
task:
  kind: request
  source: rows.csv
  method: GET
  path: users/me
  key: "{email}"
  subject_user: "{email}"
  output: out/who.ndjson
"""


async def test_subject_user_per_row_and_get_output_as_ndjson(tmp_path: Path) -> None:
    """Each row acts as the user its email names (looked up); the responses land as NDJSON."""
    async with Sandbox(SandboxConfig(seed=1, users=20)) as sb:
        students = [u for u in sb.store.users.values() if u.role == "student"][:3]
    (tmp_path / "rows.csv").write_text(
        "email\n" + "".join(f"{u.email.upper()}\n" for u in students) + "ghost@example.org\n"
    )
    (tmp_path / "job.yaml").write_text(GET_JOB)
    job = load_job(tmp_path / "job.yaml")
    console = Console(file=io.StringIO(), width=120)
    assert await run_job(job, console=console, handle_signals=False) == 1
    lines = [json.loads(x) for x in (tmp_path / "out" / "who.ndjson").read_text().splitlines()]
    got = {x["key"]: x["response"]["data"]["id"] for x in lines}
    assert got == {u.email.upper(): u.id for u in students}
    failures = (tmp_path / "out" / "who" / "failures.csv").read_text()
    assert "subject_user: no user with emailAddress 'ghost@example.org'" in failures


def test_output_is_for_get_jobs_only(tmp_path: Path) -> None:
    """A POST job with output: is refused at the output line."""
    from synap_bulk.tasks import build_task

    (tmp_path / "rows.csv").write_text("email\na@b.c\n")
    (tmp_path / "job.yaml").write_text(GET_JOB.replace("method: GET", "method: POST"))
    job = load_job(tmp_path / "job.yaml")
    with pytest.raises(SpecError, match=r"job\.yaml:12: task\.output: output keeps the responses"):
        build_task(job, job.profile)


async def test_auto_lists_when_a_listing_is_cheaper_than_a_get_per_key(tmp_path: Path) -> None:
    """150 distinct emails in a 200-user portal: one probe and one page of 500, not 150 GETs."""
    async with Sandbox(SandboxConfig(**SEED)) as sb:
        users = [u for u in sb.store.users.values() if u.role == "student"][:150]
    rows = [(u.email, "Sandbox Exam 1", 1000) for u in users]
    job = load_job(_write(tmp_path, rows))
    console = Console(file=io.StringIO(), width=120)
    await run_job(job, console=console, handle_signals=False)
    out = tmp_path / "out" / "timer-by-email"
    summary = json.loads((out / "summary.json").read_text())["task"]["lookups"]
    assert summary["user"] == {"strategy": "listing", "requests": 2, "keys": 150, "found": 150}


async def test_a_server_ignoring_the_lookup_filter_still_gives_the_right_attempts(
    tmp_path: Path,
) -> None:
    """Per-row lookups against a sandbox that ignores filter[emailAddress] and filter[user]:
    every answer is matched again on the client, so the same attempts are reset (more slowly)."""
    attempts = await _seeded_attempts()
    single = [k for k, v in attempts.items() if len(v) == 1 and k[1] == "Sandbox Exam 1"][:3]
    rows = [(e, x, 1000 * (i + 1)) for i, (e, x) in enumerate(single)]
    path = _write(tmp_path, rows, ", strategy: per-row")
    text = path.read_text().replace(
        "state: state.json}",
        "state: state.json, ignore_filters: ['filter[emailAddress]', 'filter[user]']}",
    )
    text = text.replace('exam: "{exam.id}"}}', 'exam: "{exam.id}"}, strategy: per-row}')
    path.write_text(text)
    job = load_job(path)
    console = Console(file=io.StringIO(), width=120)
    assert await run_job(job, console=console, handle_signals=False) == 0
    async with Sandbox(SandboxConfig(state=str(tmp_path / "state.json"))) as sb:
        extra = {a.id: a.extra_time_ms for a in sb.store.attempts.values() if a.extra_time_ms}
    assert extra == {attempts[k][0]: 1000 * (i + 1) for i, k in enumerate(single)}


MEMBERS_JOB = """\
version: 1
name: members-{method}
api: {{base_url: sandbox}}
sandbox: {{seed: 1, users: 30, state: state.json}}
guard: {{max_removals_share: 0.5}}  # the DELETE removes 2 of the group's 8 members
task:
  kind: request
  source: rows.csv
  lookups:
    user: {{resource: users, by: {{emailAddress: "{{email}}"}}}}
    group: {{resource: user-groups, by: {{name: "{{group}}"}}}}
  method: {method}
  safety: idempotent
  path: user-groups/{{group.id}}/relationships/users
  body: {{data: [{{type: User, id: "{{user.id}}"}}]}}
"""


async def test_groups_by_name_and_a_delete_with_a_body_removes_members(tmp_path: Path) -> None:
    """Users by email join a group named in the sheet (POST), then leave it (DELETE + body)."""
    async with Sandbox(SandboxConfig(seed=1, users=30)) as sb:
        group = next(g for g in sb.store.groups.values() if not g.default_type and not g.internal)
        outsiders = [u for u in sb.store.users.values() if u.id not in group.members][:2]
    (tmp_path / "rows.csv").write_text(
        "email,group\n" + "".join(f"{u.email},{group.name}\n" for u in outsiders)
    )
    for method in ("POST", "DELETE"):
        path = tmp_path / f"{method.lower()}.yaml"  # a name, so a ledger, each
        path.write_text(MEMBERS_JOB.format(method=method))
        job = load_job(path)
        console = Console(file=io.StringIO(), width=120)
        assert await run_job(job, console=console, handle_signals=False) == 0
        async with Sandbox(SandboxConfig(state=str(tmp_path / "state.json"))) as sb:
            members = set(sb.store.groups[group.id].members)
        inside = {u.id for u in outsiders} & members
        assert inside == ({u.id for u in outsiders} if method == "POST" else set())


async def test_a_lookup_by_id_checks_the_record_exists(tmp_path: Path) -> None:
    """by: {id: ...} GETs the record (one segment, however odd the value): a missing or
    path-like id is an invalid row, an existing one passes its fields on."""
    from synap_bulk.tasks import build_task
    from synap_bulk.tasks.request import RequestTask

    async with Sandbox(SandboxConfig(seed=1, users=20)) as sb:
        attempt = next(iter(sb.store.attempts.values()))
        (tmp_path / "rows.csv").write_text(f"a\n{attempt.id}\nnope\n../users\n")
        (tmp_path / "job.yaml").write_text(
            "version: 1\nname: ids\napi: {base_url: sandbox}\ntask:\n  kind: request\n"
            "  source: rows.csv\n  method: GET\n  path: attempts/{attempt.id}\n"
            '  lookups:\n    attempt: {resource: attempts, by: {id: "{a}"}}\n'
        )
        job = load_job(tmp_path / "job.yaml")
        task = build_task(job, job.profile)
        assert isinstance(task, RequestTask)
        from synap_bulk.client import SynapClient

        async with SynapClient(sb.url, token=sb.token) as client:
            await task.prepare(client, None)  # type: ignore[arg-type]
        rows = [x async for x in task.items()]
    assert [getattr(r, "payload", {}).get("path") for r in rows[:1]] == [f"attempts/{attempt.id}"]
    details = [r.error.detail for r in rows[1:]]  # type: ignore[union-attr]
    assert details == [
        "attempt: no attempt with id 'nope'",
        "attempt: no attempt with id '../users'",
    ]


def test_validate_of_a_lookup_job_leaves_lookups_to_plan_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offline, a key made of lookup fields ("lock {attempt.id}") is no duplicate of another
    row's: validate passes the demo's rows (the lookups are checked by plan and run)."""
    from synap_bulk.cli import main

    for name in ("lock-attempts.yaml", "lock-attempts.csv"):
        shutil.copy(DEMO / name, tmp_path / name)
    assert main(["validate", str(tmp_path / "lock-attempts.yaml")]) == 0
    assert "input: 4 rows, 4 valid, 0 invalid" in capsys.readouterr().out
