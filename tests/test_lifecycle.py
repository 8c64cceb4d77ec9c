"""Run after run of one job against a server that remembers (a standalone sandbox): identity,
clean aborts, result files that are never overwritten, fix and feed back, honest counts."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from synap_bulk.ledger import Ledger
from synap_bulk.planning import plan_job
from synap_bulk.runner import EXIT_FAILED, EXIT_INVALID, EXIT_OK, ledger_path, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job
from synap_bulk.status import status_job

ROOT = Path(__file__).resolve().parent.parent

CANDIDATES = """\
candidate_no,first_name,last_name,email,cohort
C1,Ada,Lovelace,ada@example.edu,Cohort 01
C2,Alan,Turing,alan.at.example.edu,Cohort 01
C3,Grace,Hopper,grace@example.edu,Cohort 01
C4,Edsger,Dijkstra,edsger@example.edu,Cohort 01
C5,Barbara,Liskov,,Cohort 01
C6,Donald,Knuth,donald@example.edu,Cohort 01
"""


def import_job(tmp: Path, url: str, *, token: str = "", name: str = "life") -> Path:
    """A user-import job against ``url``; the token from a file unless ``token`` is given."""
    token_line = f"token: {token}" if token else "token_file: token.txt"
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: {name}
api:
  base_url: {url}
  {token_line}
  concurrency: 4
task:
  kind: user-import
  source: candidates.csv
  match: externalId
  fields:
    name: "{{first_name}} {{last_name}}"
    emailAddress: "{{email}}"
    externalId: "{{candidate_no}}"
  groups: ["{{cohort}}"]
"""
    )
    if not (tmp / "candidates.csv").exists():
        (tmp / "candidates.csv").write_text(CANDIDATES)
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def said(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined]


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


def summary(tmp: Path, run: int | None = None, name: str = "life") -> dict[str, Any]:
    out = tmp / "out" / name
    path = out / "runs" / str(run) / "summary.json" if run else out / "summary.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def files_containing(folder: Path, needle: bytes) -> list[Path]:
    return [f for f in folder.rglob("*") if f.is_file() and needle in f.read_bytes()]


def dead_pid() -> int:
    """The id of a process that has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def extra_time_job(tmp: Path, sb: Sandbox) -> Path:
    """The demo's unsafe timer-reset job (and its CSV), pointed at ``sb`` as a real server."""
    text = (ROOT / "jobs" / "demo" / "extra-time.yaml").read_text()
    job = text.replace("base_url: sandbox", f'base_url: "{sb.url}"\n  token_file: token.txt')
    (tmp / "job.yaml").write_text(re.sub(r"(?m)^sandbox: .*\n", "", job))
    (tmp / "token.txt").write_text(sb.token)
    src = (ROOT / "jobs" / "demo" / "access-arrangements.csv").read_text()
    (tmp / "access-arrangements.csv").write_text(src)
    return tmp / "job.yaml"


def sandbox(**config: Any) -> Sandbox:
    base: dict[str, Any] = {"users": 0, "groups": 1, "seed": 1}
    return Sandbox(SandboxConfig(**(base | config)))


async def test_job_token_file_wins_over_a_wrong_synap_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SYNAP_TOKEN left in the environment never beats the job's own token_file; the run says
    and records who it acts as, and where its token came from, never the token."""
    async with sandbox() as sb:
        (tmp_path / "token.txt").write_text(sb.token + "\n")
        monkeypatch.setenv("SYNAP_TOKEN", "p:wrong-token-from-the-shell")
        console = quiet()
        code = await run_job(load_job(import_job(tmp_path, sb.url)), console=console)
        portal = sb.store.portal.id
    assert code == EXIT_FAILED  # the two broken rows
    s = summary(tmp_path)
    assert s["token_from"] == "job token_file" and s["portal_id"] == portal
    assert f"(id {portal})" in s["acting_as"]
    assert f"Acting as {s['acting_as']} (token from job token_file)" in said(console)
    assert files_containing(tmp_path, sb.token.encode()) == [tmp_path / "token.txt"]


async def test_a_token_the_server_answers_404_for_sends_zero_writes(tmp_path: Path) -> None:
    """A misconfigured token that the API answers with 404 stops the run at the identity check:
    one error line, exit 2, a summary giving the reason, and not one write reached the server."""
    async with sandbox(bad_token_status=404) as sb:
        console = quiet()
        job = load_job(import_job(tmp_path, sb.url, token="p:misconfigured"))
        code = await run_job(job, console=console)
        stats = sb.statistics()
    assert code == EXIT_INVALID
    errors = [ln for ln in said(console).splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "404" in errors[0]
    assert not [route for route in stats.by_route if not route.endswith((".get", ".current"))]
    assert stats.requests <= 2
    assert summary(tmp_path)["status"] == "aborted"


async def test_fix_and_feed_back_keeps_lines_and_never_overwrites_results(tmp_path: Path) -> None:
    """The failures file, fixed by hand and fed back with --source, runs without --restart:
    done rows stay done, fixed rows are created, the original lines stay in `_line`, each run
    keeps its own result files, and the two success files together are what the server has."""
    async with sandbox() as sb:
        (tmp_path / "token.txt").write_text(sb.token)
        path = import_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet()) == EXIT_FAILED
        out = tmp_path / "out" / "life"
        failures = rows(out / "failures.csv")
        assert [r["_line"] for r in failures] == ["3", "6"]
        first_run_files = {p: p.read_bytes() for p in (out / "runs" / "1").iterdir()}
        # The person fixes the two rows in a copy of the failures file.
        fixed = tmp_path / "fixed.csv"
        with fixed.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(failures[0]))
            writer.writeheader()
            for r in failures:
                r["email"] = r["email"].replace(".at.", "@") or "barbara@example.edu"
                writer.writerow(r)
        console = quiet()
        code = await run_job(load_job(path), source=fixed, console=console)
        # The original file, run again, still holds the two broken rows: their fixed versions
        # stand in for them, so nothing is sent and nothing is left to fix.
        again = await run_job(load_job(path), console=quiet())
        server = {
            u.external_id: u.id
            for u in sb.store.users.values()
            if (u.external_id or "").startswith("C")  # the candidates, not the seeded markers
        }
    assert code == EXIT_OK, said(console)
    assert {p: p.read_bytes() for p in (out / "runs" / "1").iterdir()} == first_run_files
    one, two = rows(out / "runs" / "1" / "success.csv"), rows(out / "runs" / "2" / "success.csv")
    assert [r["_line"] for r in two] == ["3", "6"]
    assert {r["candidate_no"]: r["_remote_id"] for r in one + two} == server
    assert not (out / "failures.csv").exists()
    s = summary(tmp_path, run=2)
    assert s["this_run"]["done"] == 2 and s["this_run"]["created"] == 2
    assert s["job_total"]["done"] == 6 and s["job_total"]["invalid"] == 0
    assert again == EXIT_OK
    s3 = summary(tmp_path)
    assert s3["this_run"]["done"] == 0 and s3["this_run"]["skipped"] == 6
    assert s3["job_total"]["superseded"] == 2 and s3["job_total"]["invalid"] == 0
    assert s3["requests"] <= 4  # who the token is, and the groups: no write


async def test_a_failures_file_fed_back_in_place_is_never_written_over(tmp_path: Path) -> None:
    """Fixing the failures file where it is and feeding it back: the run never replaces its own
    input, and says where its own failures went."""
    async with sandbox() as sb:
        (tmp_path / "token.txt").write_text(sb.token)
        path = import_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet()) == EXIT_FAILED
        failures = tmp_path / "out" / "life" / "failures.csv"
        text = failures.read_text().replace("alan.at.example.edu", "alan@example.edu")
        failures.write_text(text)  # one row fixed, the other still broken
        console = quiet()
        code = await run_job(load_job(path), source=failures, console=console)
    assert code == EXIT_FAILED
    assert failures.read_text() == text
    assert "Kept " in said(console) and "runs/2/failures.csv" in said(console)
    still = rows(tmp_path / "out" / "life" / "runs" / "2" / "failures.csv")
    assert [r["_line"] for r in still] == ["6"]


async def test_a_ledger_belongs_to_the_portal_it_was_started_on(tmp_path: Path) -> None:
    """The same job pointed at another portal is refused before any write unless --restart."""
    async with sandbox(seed=1) as one:
        (tmp_path / "token.txt").write_text(one.token)
        assert await run_job(load_job(import_job(tmp_path, one.url)), console=quiet()) == 1
    async with sandbox(seed=2) as two:
        (tmp_path / "token.txt").write_text(two.token)
        path = import_job(tmp_path, two.url)
        console = quiet()
        assert await run_job(load_job(path), console=console) == EXIT_INVALID
        writes = [r for r in two.statistics().by_route if "create" in r or "add" in r]
        assert "belongs to portal" in said(console) and writes == []
        assert await run_job(load_job(path), restart=True, console=quiet()) == EXIT_FAILED


async def test_a_no_op_rerun_says_it_did_nothing(tmp_path: Path) -> None:
    """Run again after completion: this run did 0, the job total is unchanged, and the summary
    labels the two."""
    (tmp_path / "candidates.csv").write_text(
        CANDIDATES.replace(".at.", "@").replace(",,", ",b@x.org,")
    )
    async with sandbox() as sb:
        (tmp_path / "token.txt").write_text(sb.token)
        path = import_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet()) == EXIT_OK
        console = quiet()
        assert await run_job(load_job(path), console=console) == EXIT_OK
    s = summary(tmp_path)
    assert s["this_run"]["done"] == 0 and s["this_run"]["skipped"] == 6
    assert s["job_total"]["done"] == 6 and s["job_total"]["created"] == 6
    text = said(console)
    assert "this run   0 done · 6 already done" in text
    assert "job total  6 done (6 created)" in text


async def test_bulk_delete_under_commit_then_fail_reports_every_delete(tmp_path: Path) -> None:
    """Deleting 30 users through commit-then-500 faults: the retries that find their own work
    done count as deleted, so the summary says 30 deleted and 0 failed, as the server says."""
    faults = {"commit-then-500": 1.0}
    async with sandbox(users=30, fault_rate=0.3, faults=faults, seed=4) as sb:
        ids = [u.id for u in sb.store.users.values() if (u.external_id or "").startswith("S")]
        assert len(ids) == 30
        (tmp_path / "users.csv").write_text("id\n" + "\n".join(ids) + "\n")
        (tmp_path / "token.txt").write_text(sb.token)
        (tmp_path / "job.yaml").write_text(
            f"""version: 1
name: purge
api: {{base_url: "{sb.url}", token_file: token.txt, concurrency: 4}}
task:
  kind: request
  source: users.csv
  method: DELETE
  path: "users/{{id}}"
  key: "{{id}}"
"""
        )
        code = await run_job(load_job(tmp_path / "job.yaml"), console=quiet())
        left = [i for i in ids if i in sb.store.users]
        committed = sb.statistics().committed_then_failed
    s = summary(tmp_path, name="purge")
    assert code == EXIT_OK and left == []
    assert s["job_total"]["done"] == 30 and s["job_total"]["failed"] == 0
    assert committed > 0 and s["reconciled"] >= 1


async def test_plan_after_a_completed_unsafe_job_sends_nothing(tmp_path: Path) -> None:
    """plan reads the ledger: after the unsafe timer-reset job completed, every row it sent is
    'done before' and nothing would be posted again."""
    async with sandbox(users=200, exams=2, attempts_per_exam=60) as sb:
        extra_time_job(tmp_path, sb)
        assert await run_job(load_job(tmp_path / "job.yaml"), console=quiet()) == EXIT_FAILED
        console = quiet()
        before = sb.statistics().requests
        assert await plan_job(load_job(tmp_path / "job.yaml"), console=console) == EXIT_OK
        posts = sb.statistics().by_route.get("attempt-timer-resets.create", 0)
        assert sb.statistics().requests - before == 2  # who the token is; nothing else
    plan = said(console)
    assert "6 done before" in plan and " post" not in plan.split("Plan for")[1]
    assert posts == 7


async def test_restart_of_an_unsafe_job_with_done_items_needs_force(tmp_path: Path) -> None:
    """--restart would re-send the done rows of an unsafe job: refused without --force."""
    async with sandbox(users=200, exams=2, attempts_per_exam=60) as sb:
        extra_time_job(tmp_path, sb)
        assert await run_job(load_job(tmp_path / "job.yaml"), console=quiet()) == EXIT_FAILED
        console = quiet()
        refused = await run_job(load_job(tmp_path / "job.yaml"), restart=True, console=console)
        sent = sb.statistics().by_route.get("attempt-timer-resets.create", 0)
        forced = await run_job(
            load_job(tmp_path / "job.yaml"), restart=True, force=True, console=quiet()
        )
        again = sb.statistics().by_route.get("attempt-timer-resets.create", 0)
    assert refused == EXIT_INVALID and "--force" in said(console) and sent == 7
    assert forced == EXIT_FAILED and again == 14


async def test_status_shows_a_killed_run_as_interrupted(tmp_path: Path) -> None:
    """A run recorded as running whose process is gone is 'interrupted' in status and in
    status --json; status touches no server."""
    path = import_job(tmp_path, "https://api.synap.example/v3", token="p:unused")
    job = load_job(path)
    ledger_file = ledger_path(job)
    ledger_file.parent.mkdir(parents=True)
    async with await Ledger.open(
        ledger_file, job_name="life", task_hash=job.task_hash(), input_hash="x"
    ) as ledger:
        await ledger.begin_run()
    dead = dead_pid()
    db = sqlite3.connect(ledger_file)
    db.execute("UPDATE runs SET pid = ?", (dead,))
    db.commit()
    db.close()
    console = quiet()
    assert await status_job(job, console=console) == EXIT_OK
    assert "interrupted" in said(console) and "running" not in said(console)
    console = quiet()
    assert await status_job(job, as_json=True, console=console) == EXIT_OK
    data = json.loads(said(console))
    assert [r["status"] for r in data["runs"]] == ["interrupted"]
    assert os.getpid() != dead


def _mend(failures: Path, fixed: Path) -> None:
    """What README tells the person to do in fixed.csv: fill in the missing names, mend the
    emails, give the duplicated candidate numbers their own."""
    text = failures.read_text(encoding="utf-8-sig")
    table = list(csv.DictReader(io.StringIO(text)))
    for r in table:
        if r["_error_code"] == "required":
            r["first_name"], r["last_name"] = "Frances", "Lovelace"
        elif r["_error_code"] == "email":
            r["email"] = r["email"].replace(".at.", "@")
        elif r["_error_code"] == "duplicate":
            r["candidate_no"] = f"S{int(r['_line']) - 1:06d}"
    with fixed.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


async def test_readme_fix_and_feed_back_walkthrough(tmp_path: Path) -> None:
    """README's walkthrough on the demo import, step by step: 390 done and 10 to fix; the fixed
    file fed back gives 10 done; the original again sends nothing; the run folders' success
    files together are what the server (the demo sandbox's state file) holds."""
    import shutil

    for name in ("user-import.yaml", "candidates.csv"):
        shutil.copy(ROOT / "jobs" / "demo" / name, tmp_path / name)
    job = tmp_path / "user-import.yaml"
    out = tmp_path / "out" / "demo-user-import"
    assert await run_job(load_job(job), console=quiet(), handle_signals=False) == EXIT_FAILED
    one = summary(tmp_path, name="demo-user-import")
    assert one["this_run"]["done"] == 390 and one["this_run"]["invalid"] == 10
    shutil.copy(out / "failures.csv", tmp_path / "fixed.csv")
    _mend(out / "failures.csv", tmp_path / "fixed.csv")
    code = await run_job(
        load_job(job), source=tmp_path / "fixed.csv", console=quiet(), handle_signals=False
    )
    two = summary(tmp_path, name="demo-user-import")
    assert code == EXIT_OK
    assert two["this_run"]["done"] == 10 and two["job_total"]["done"] == 400
    assert await run_job(load_job(job), console=quiet(), handle_signals=False) == EXIT_OK
    three = summary(tmp_path, name="demo-user-import")
    assert three["this_run"]["done"] == 0 and three["this_run"]["skipped"] == 400
    assert three["job_total"]["superseded"] == 10 and three["job_total"]["invalid"] == 0
    created = rows(out / "runs" / "1" / "success.csv") + rows(out / "runs" / "2" / "success.csv")
    async with Sandbox(SandboxConfig(state=str(out / "sandbox-state.json"))) as sb:
        server = {
            u.external_id: u.id
            for u in sb.store.users.values()
            if (u.external_id or "").startswith("S")  # the candidates, not the markers
        }
    assert {r["candidate_no"]: r["_remote_id"] for r in created} == server
    assert len(created) == len(server) == 400


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAP_")}
    return subprocess.run(
        [sys.executable, "-m", "synap_bulk", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_server_is_one_error_line_before_any_row(tmp_path: Path) -> None:
    """Nobody listening at the base URL: the identity check fails with one error line and exit 2
    (not 1, which would send a script looking for a failures file), and a summary saying why."""
    path = import_job(tmp_path, f"http://127.0.0.1:{_closed_port()}/v3", token="p:x")
    run = _cli("run", str(path), cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "127.0.0.1" in errors[0]
    assert summary(tmp_path)["status"] == "aborted"
    assert not (tmp_path / "out" / "life" / "failures.csv").exists()


def test_an_out_dir_that_cannot_be_created_is_an_error_at_its_line(tmp_path: Path) -> None:
    """run.out_dir under a file: one error line naming the job-file line, exit 2."""
    (tmp_path / "blocker").write_text("a file, not a folder\n")
    path = import_job(tmp_path, "sandbox")
    text = path.read_text().replace(
        "  concurrency: 4\n", "  concurrency: 4\nrun:\n  out_dir: blocker/out\n"
    )
    path.write_text(text.replace("  token_file: token.txt\n", ""))
    run = _cli("run", str(path), cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert (
        len(errors) == 1 and f"{path}:7: run.out_dir: cannot create the output folder" in errors[0]
    )


def test_run_with_a_missing_token_file_is_an_error_at_its_line(tmp_path: Path) -> None:
    """validate accepts a token file not written yet (it contacts no server) with a warning at
    its line, but run refuses it at its job-file line before anything else."""
    path = import_job(tmp_path, "https://api.synap.example/v3")
    checked = _cli("validate", str(path), cwd=tmp_path)
    assert checked.returncode == EXIT_FAILED  # the job is fine; two of its rows are not
    assert "job file ok" in checked.stdout
    assert checked.stderr.splitlines() == [
        f"warning: {path}:5: api.token_file: no such file yet (a relative path is taken from "
        "the job's folder); run needs it"
    ]
    run = _cli("run", str(path), cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: {path}:5: api.token_file: no such file (a relative path is taken from the "
        "job's folder)"
    ]
