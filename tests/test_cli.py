"""The command line as a user runs it: exit codes, messages, signals, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from synap_bulk.cli import main
from synap_bulk.sampledata import write_candidates
from synap_bulk.sandbox import Sandbox, SandboxConfig

from .requests_seen import RequestsSeen

ROOT = Path(__file__).resolve().parent.parent
DEMOS = sorted((ROOT / "jobs" / "demo").glob("*.yaml"))


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "synap_bulk", *args]


def _job(tmp: Path, base_url: str, name: str = "cli") -> Path:
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: {name}
api:
  base_url: {base_url}
  token: ${{SYNAP_TOKEN}}
  concurrency: 4
run:
  grace_seconds: 30
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
    return path


@pytest.mark.parametrize("job", DEMOS, ids=[p.name for p in DEMOS])
def test_every_demo_job_validates(job: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each example job file in jobs/demo is valid as shipped (its inputs keep deliberately
    broken rows, which make the exit code 1, never 2)."""
    assert main(["validate", str(job)]) in (0, 1)
    assert capsys.readouterr().out.startswith(f"{job}: job file ok (")


def test_validate_reads_the_whole_input_and_reports_invalid_rows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """validate of the demo import counts every row, names the first invalid ones with their
    line, column and reason, and exits 1 because some rows are invalid."""
    job = ROOT / "jobs" / "demo" / "user-import.yaml"
    assert main(["validate", str(job)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"{job}: job file ok (user-import); input: 400 rows, 390 valid, 10 invalid")
    assert lines[1:4] == [
        "  line 38: first_name: name is required",
        "  line 75: candidate_no: duplicate externalId 'S000073': already on line 74",
        "  line 112: email: not an email address: 'Ken.Knuth.at.example.edu'",
    ]
    assert len(lines) == 11


def test_validate_of_an_all_valid_input_exits_0_and_shows_more_than_ten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All rows valid: exit 0; with more than ten invalid rows, the rest are counted."""
    write_candidates(tmp_path / "candidates.csv", 30, cohorts=["Cohort 01"])
    path = _job(tmp_path, "sandbox")
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.endswith("input: 30 rows, 30 valid, 0 invalid\n")
    text = (tmp_path / "candidates.csv").read_text().replace("@", " at ")
    (tmp_path / "candidates.csv").write_text(text)
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "30 rows, 0 valid, 30 invalid" in out
    assert out.count(": not an email address: ") == 10
    assert "... and 20 more" in out


def test_invalid_job_exits_2_naming_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong value is reported as file:line: path: message with exit code 2."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "version: 1\nname: bad\napi:\n  base_url: sandbox\n  rate: fast\n"
        "task:\n  kind: request\n  source: x.csv\n  method: GET\n  path: users\n"
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f'error: {path}:5: api.rate: expected a number >= 0.1 or "auto" or "none", got "fast"\n'
    )


def test_missing_input_file_is_named_at_its_job_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An input path that does not exist is an error at the line that names it, with exit 2."""
    path = _job(tmp_path, "sandbox")
    monkeypatch.setenv("SYNAP_TOKEN", "p:x")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}:11: task.source: no such file: {tmp_path / 'candidates.csv'}\n"


def test_schema_is_json_schema_of_job_files(capsys: pytest.CaptureFixture[str]) -> None:
    """`schema` prints job_schema() as JSON: draft 2020-12, knowing the four task kinds."""
    from synap_bulk.spec import job_schema

    assert main(["schema"]) == 0
    text = capsys.readouterr().out
    schema = json.loads(text)
    assert schema == json.loads(json.dumps(job_schema()))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "$defs" in schema
    for kind in ("user-import", "assign-markers", "export-attempts", "export", "request"):
        assert f'"{kind}"' in text


async def test_wrong_token_aborts_with_exit_2_and_never_prints_it(tmp_path: Path) -> None:
    """A 401 stops the run at once (exit 2); the token appears in no output or file."""
    write_candidates(tmp_path / "candidates.csv", 20, cohorts=["Cohort 01"])
    secret = "p:wrong-token-0123456789"
    async with Sandbox(SandboxConfig(users=0, groups=1)) as sb:
        path = _job(tmp_path, sb.url)
        env = {**os.environ, "SYNAP_TOKEN": secret}
        result = await anyio.run_process(_cmd("run", str(path)), env=env, check=False)
        requests = sb.statistics().requests
    assert result.returncode == 2
    output = result.stdout.decode() + result.stderr.decode()
    assert "401" in output
    assert secret not in output
    assert requests <= 4  # at most one per worker already on its way
    assert _files_containing(tmp_path, secret.encode()) == []


def _files_containing(folder: Path, needle: bytes) -> list[Path]:
    return [f for f in folder.rglob("*") if f.is_file() and needle in f.read_bytes()]


async def test_sigterm_stops_gracefully_and_run_again_resumes(tmp_path: Path) -> None:
    """SIGTERM: in-flight work finishes, exit 1 with the resume command; re-running completes."""
    cands = write_candidates(tmp_path / "candidates.csv", 300, cohorts=["Cohort 01"])
    seen = RequestsSeen()
    async with Sandbox(SandboxConfig(users=0, groups=1, latency_ms=5), sleep=seen.sleep) as sb:
        path = _job(tmp_path, sb.url)
        env = {**os.environ, "SYNAP_TOKEN": sb.token}
        proc = await anyio.open_process(_cmd("run", str(path)), env=env)
        with anyio.fail_after(60):
            await seen.reached(60)
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None and proc.stderr is not None
        out = b"".join([chunk async for chunk in proc.stderr])
        code = await proc.wait()
        await proc.aclose()
        assert code == 1, out.decode()
        assert f"Resume with: {sys.executable} -m synap_bulk run".encode() in out or (
            b"Resume with: python -m synap_bulk run" in out
        )
        created_before = len([k for k in sb.store.by_external_id if k.startswith("C")])
        assert 0 < created_before < 300
        stopped = json.loads((tmp_path / "out" / "cli" / "summary.json").read_text())
        c = stopped["counts"]
        assert c["not_started"] == 300 - sum(
            c[k] for k in ("done", "failed", "invalid", "in_doubt")
        ) - c.get("in_flight", 0)
        status = await anyio.run_process(_cmd("status", str(path)), env=env, check=False)
        assert b"done" in status.stdout and status.returncode == 0
        again = await anyio.run_process(_cmd("run", str(path)), env=env, check=False)
        stats = sb.statistics()
        ids = {k for k in sb.store.by_external_id if k.startswith("C")}
    assert again.returncode == 0, again.stderr.decode()
    assert ids == set(cands.valid_ids)
    assert stats.duplicate_creates == 0
    summary = json.loads((tmp_path / "out" / "cli" / "summary.json").read_text())
    assert summary["counts"]["skipped"] == created_before


def test_help_lists_the_commands() -> None:
    """`python -m synap_bulk --help` works from a fresh interpreter and names each command."""
    out = subprocess.run(_cmd("--help"), capture_output=True, text=True, check=True).stdout
    for command in ("run", "validate", "plan", "status", "schema", "sandbox"):
        assert command in out
    assert "Exit codes: 0 all done; 1 some rows failed" in " ".join(out.split())


def test_every_command_help_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's --help opens with what the command does, not only its options."""
    for command, opening in (
        ("validate", "Check a job file and read its whole input"),
        ("status", "What the job's ledger says"),
        ("run", "Run a job, resuming where it stopped."),
    ):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert opening in " ".join(capsys.readouterr().out.split()), command


def test_version_and_the_command_as_invoked(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version; the installed synap-bulk script runs the CLI."""
    from synap_bulk import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"synap_bulk {__version__}"
    script = Path(sys.executable).with_name("synap-bulk")
    if script.exists():  # installed with pip install -e (as .ci/run does)
        out = subprocess.run([str(script), "--version"], capture_output=True, text=True)
        assert out.stdout.strip() == f"synap_bulk {__version__}"


def test_validate_and_status_need_no_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate and status touch no server, so a job whose token comes from an unset
    ${SYNAP_TOKEN} (or a token file not written yet) still validates and shows its status."""
    write_candidates(tmp_path / "candidates.csv", 3, cohorts=["Cohort 01"])
    path = _job(tmp_path, "https://api.synap.example/v3")
    assert main(["validate", str(path)]) == 0
    assert main(["status", str(path)]) == 0
    assert "not started" in capsys.readouterr().out
    text = path.read_text().replace("token: ${SYNAP_TOKEN}", "token_file: secrets/token")
    path.write_text(text)
    capsys.readouterr()
    assert main(["validate", str(path)]) == 0
    # ... but it says, at its line, that run would refuse it as it stands
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "token_file:" in t)
    err = capsys.readouterr().err
    assert f"warning: {path}:{line}: api.token_file: no such file yet" in err
    assert "secrets/token" not in err
