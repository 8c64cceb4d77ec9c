"""``doctor JOB`` probes the server's assumptions read-only; a reconcilable job refuses to start
when the filter its safety rests on is not honoured."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from rich.console import Console

from synap_bulk.cli import main
from synap_bulk.runner import EXIT_INVALID, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job

DEMO = Path(__file__).resolve().parent.parent / "jobs" / "demo"

IMPORT = """\
version: 1
name: import
api:
  base_url: {base_url}
{sandbox}task:
  kind: user-import
  source: candidates.csv
  match: externalId
  fields: {{name: "{{name}}", emailAddress: "{{email}}", externalId: "{{id}}"}}
"""


def _import_job(tmp: Path, base_url: str, sandbox: str = "") -> Path:
    if base_url != "sandbox":
        base_url += "\n  token: p:sandbox"
    (tmp / "candidates.csv").write_text("id,name,email\nX1,Ada One,ada.one@example.org\n")
    path = tmp / "job.yaml"
    path.write_text(IMPORT.format(base_url=base_url, sandbox=sandbox))
    return path


def test_doctor_reports_a_filter_the_server_ignores(tmp_path: Path, capsys: object) -> None:
    """Against a sandbox that ignores filter[externalId], doctor says FAIL for it (exit 1)."""
    sandbox = "sandbox: {users: 20, ignore_filters: ['filter[externalId]']}\n"
    path = _import_job(tmp_path, "sandbox", sandbox)
    assert main(["doctor", str(path)]) == 1
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    lines = out.splitlines()
    bad = [line for line in lines if line.startswith("FAIL")]
    assert len(bad) == 1 and "filter[externalId] on users" in bad[0]
    assert "ignored" in bad[0] and "user-import reconciles its creates by externalId" in bad[0]
    assert any(line.startswith("ok    identity: Sandbox Admin") for line in lines)
    assert any("pagination page-number" in line and line.startswith("ok") for line in lines)
    assert any("page size 501" in line and "refused (400)" in line for line in lines)


def test_doctor_passes_against_the_default_sandbox(tmp_path: Path, capsys: object) -> None:
    """Every probed assumption holds against the sandbox it was written for (exit 0)."""
    assert main(["doctor", str(_import_job(tmp_path, "sandbox"))]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "FAIL" not in out and "filter[externalId] on users: an impossible value" in out


async def test_a_reconcilable_job_refuses_to_start_when_its_filter_is_ignored(
    tmp_path: Path,
) -> None:
    """user-import against a server ignoring its match filter: exit 2, one error, nothing sent."""
    async with Sandbox(SandboxConfig(users=20, ignore_filters=["filter[externalId]"])) as sb:
        job = load_job(_import_job(tmp_path, sb.url))
        text = io.StringIO()
        code = await run_job(job, console=Console(file=text, width=200), handle_signals=False)
        stats = sb.statistics()
        assert code == EXIT_INVALID
        assert "does not honour filter[externalId] on users" in text.getvalue()
        assert stats.by_route.get("user-registrations.create", 0) == 0
        assert stats.by_route.get("users.list", 0) == 1  # the one preflight GET
    summary = json.loads((tmp_path / "out" / "import" / "summary.json").read_text())
    assert "refusing to start" in summary["reason"]


async def test_the_same_job_runs_when_the_filter_is_honoured(tmp_path: Path) -> None:
    """The preflight costs one GET and lets a server that honours the filter through."""
    async with Sandbox(SandboxConfig(users=20)) as sb:
        job = load_job(_import_job(tmp_path, sb.url))
        console = Console(file=io.StringIO())
        assert await run_job(job, console=console, handle_signals=False) == 0
        assert sb.statistics().by_route.get("user-registrations.create", 0) == 1


def test_doctor_of_a_lookup_job_checks_each_lookup_filter(tmp_path: Path, capsys: object) -> None:
    """The extra-time sheet's lookups: users by externalId and attempts by user and exam."""
    for name in ("extra-time-sheet.yaml", "extra-time-sheet.csv"):
        shutil.copy(DEMO / name, tmp_path / name)
    assert main(["doctor", str(tmp_path / "extra-time-sheet.yaml")]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    for param in ("filter[externalId] on users", "filter[user] on attempts"):
        assert f"ok    {param}" in out


def test_doctor_checks_the_subject_user_header_of_a_job_that_acts_as_others(
    tmp_path: Path, capsys: object
) -> None:
    """A job with subject_user (seed 1's admin): the profile's header must refuse an unknown
    user; a profile naming a header the server does not know is reported (it would act as the
    token's user)."""
    path = _import_job(tmp_path, "sandbox")
    text = path.read_text().replace(
        "  base_url: sandbox\n", "  base_url: sandbox\n  subject_user: 4Xsoen7xYn\n"
    )
    path.write_text(text)
    assert main(["doctor", str(path)]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "ok    Subject-User header Subject-User: an unknown user is refused (400)" in out
    other = text.replace(
        "  subject_user: 4Xsoen7xYn\n",
        "  subject_user: 4Xsoen7xYn\n  profile: {subject_user_header: X-Other}\n",
    ).replace("task:", "sandbox: {profile: {}}\ntask:")
    path.write_text(other)
    assert main(["doctor", str(path)]) == 1
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "FAIL  Subject-User header X-Other: an unknown user is accepted" in out
