"""The runner: its wiring policies, and one door for every kind of job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from synap_bulk.items import Safety
from synap_bulk.runner import client_rate, engine_workers
from synap_bulk.spec import load_job


@pytest.mark.parametrize("safety", [Safety.IDEMPOTENT, Safety.RECONCILABLE])
def test_repeatable_tasks_run_four_workers_a_request_slot(safety: Safety) -> None:
    """Items waiting on a group batch or a backoff must not leave request slots idle."""
    assert engine_workers(16, safety) == 64
    assert engine_workers(1, safety) == 4


def test_unsafe_tasks_keep_few_items_marked_but_unsent() -> None:
    """An unsafe item marked in flight that never left is in doubt after a crash: few of them."""
    assert engine_workers(16, Safety.UNSAFE) == 20
    assert engine_workers(1, Safety.UNSAFE) == 3


def _export_job(tmp: Path, *, profile: str = "") -> Path:
    # The sandbox keeps the default profile (its own `profile: {}`), whatever the job's says.
    path = tmp / "export.yaml"
    path.write_text(
        f"""version: 1
name: one-door-export
api:
  base_url: sandbox
  concurrency: 4
{profile}sandbox: {{seed: 3, users: 40, exams: 2, attempts_per_exam: 30, profile: {{}}}}
task:
  kind: export-attempts
  format: ndjson
  output: out/attempts.ndjson
  page_size: 25
"""
    )
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAP_")}
    return subprocess.run(
        [sys.executable, "-m", "synap_bulk", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_export_job_writes_a_summary_and_shows_in_status(tmp_path: Path) -> None:
    """An export goes through the same door as the other kinds: summary.json with the rows
    exported, and `status` lists its run with what it exported."""
    job = _export_job(tmp_path)
    run = _cli("run", str(job), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "out" / "one-door-export" / "summary.json").read_text())
    assert summary["kind"] == "export-attempts" and summary["status"] == "completed"
    assert summary["counts"]["exported"] == summary["counts"]["done"] == 60
    assert summary["task"]["rows"] == 60
    lines = (tmp_path / "out" / "attempts.ndjson").read_text().splitlines()
    assert len(lines) == 60
    status = _cli("status", str(job), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "completed (60 done, 60 exported)" in status.stdout


def test_a_404_on_an_export_page_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    """A page the server does not have ends the export with one `error:` line naming the
    request, exit code 2, no traceback, and a summary.json that gives the reason."""
    job = _export_job(tmp_path, profile="  profile: {attempts_path: no-such-attempts}\n")
    run = _cli("run", str(job), cwd=tmp_path)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "404" in errors[0] and "no-such-attempts" in errors[0]
    summary = json.loads((tmp_path / "out" / "one-door-export" / "summary.json").read_text())
    assert summary["status"] == "aborted" and "404" in summary["reason"]


def test_plan_of_a_refused_export_is_one_error_line(tmp_path: Path) -> None:
    """plan fails the same way as run: one error line, exit 2, nothing written."""
    job = _export_job(tmp_path, profile="  profile: {attempts_path: no-such-attempts}\n")
    plan = _cli("plan", str(job), cwd=tmp_path)
    assert plan.returncode == 2 and "Traceback" not in plan.stderr
    assert [ln for ln in plan.stderr.splitlines() if ln.startswith("error:")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.yaml"]


def test_every_registered_kind_builds_from_its_spec() -> None:
    """The registry maps every kind the job-file union knows to a spec and a task maker."""
    from synap_bulk.spec import TaskSpec
    from synap_bulk.tasks import KINDS

    union = {t.kind for t in typing.get_args(TaskSpec)}
    assert set(KINDS) == union
    assert all(entry.spec.kind == kind for kind, entry in KINDS.items())


def test_runner_and_cli_never_branch_on_kind_or_probe_tasks() -> None:
    """The runner drives tasks by their declared shape; no kind checks, no getattr probes."""
    root = Path(__file__).resolve().parent.parent / "synap_bulk"
    for name in ("runner.py", "planning.py", "status.py", "cli.py"):
        text = (root / name).read_text()
        assert "getattr(task" not in text and "kind ==" not in text, name


@pytest.mark.parametrize(
    ("rate", "base_url", "expected"),
    [
        (None, "https://api.synap.ac/v3", "auto"),  # a real portal: find its limit unasked
        (None, "sandbox", None),
        (None, "http://127.0.0.1:8080/v3", None),  # a standalone sandbox on this machine
        (None, "http://localhost:8080/v3", None),
        ("none", "https://api.synap.ac/v3", None),  # no ceiling, said explicitly
        ("auto", "sandbox", "auto"),
        (20.0, "https://api.synap.ac/v3", 20.0),
    ],
)
def test_an_omitted_rate_is_auto_against_a_remote_server_only(
    rate: float | str | None, base_url: str, expected: float | str | None
) -> None:
    assert client_rate(rate, base_url) == expected


def test_rate_none_is_accepted_in_a_job_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "version: 1\nname: r\napi: {base_url: 'https://api.synap.ac/v3', token: t, rate: none}\n"
        "task: {kind: export, resource: users, output: out/u.ndjson}\n"
    )
    assert load_job(path, offline=True).spec.api.rate == "none"
