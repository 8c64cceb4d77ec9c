"""Where a job's ledger lives: under its out_dir by default, ``run.ledger`` when given, and a
ledger left at the old default place (beside the job file) still found, with a note."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synap_bulk.runner import EXIT_FAILED, ledger_path, run_job
from synap_bulk.spec import load_job
from synap_bulk.status import status_job
from tests.test_lifecycle import import_job, quiet, said, sandbox


async def test_the_ledger_and_its_lock_live_in_the_out_dir(tmp_path: Path) -> None:
    """A run leaves nothing beside the job file: ledger and lock are in out/<name>/."""
    async with sandbox() as sb:
        (tmp_path / "token.txt").write_text(sb.token)
        path = import_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet()) == EXIT_FAILED
    out = tmp_path / "out" / "life"
    assert ledger_path(load_job(path)) == out / "ledger.sqlite"
    assert (out / "ledger.sqlite").is_file() and (out / "ledger.sqlite.lock").exists()
    assert sorted(p.name for p in os.scandir(tmp_path)) == [
        "candidates.csv",
        "job.yaml",
        "out",
        "token.txt",
    ]


def test_run_ledger_overrides_the_default(tmp_path: Path) -> None:
    """run.ledger names the ledger, relative to the job file's folder."""
    path = import_job(tmp_path, "https://api.synap.example/v3", token="p:unused")
    path.write_text(path.read_text() + "run:\n  ledger: state/mine.sqlite\n")
    assert ledger_path(load_job(path, offline=True)) == tmp_path / "state" / "mine.sqlite"


async def test_a_ledger_at_the_old_default_place_is_still_used_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job started before the ledger moved resumes from <job>.ledger.sqlite beside the job
    file (nothing is re-sent), and a one-line note says how to move it."""
    async with sandbox() as sb:
        (tmp_path / "token.txt").write_text(sb.token)
        path = import_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet()) == EXIT_FAILED
        old = tmp_path / "job.ledger.sqlite"
        (tmp_path / "out" / "life" / "ledger.sqlite").rename(old)
        (tmp_path / "out" / "life" / "ledger.sqlite.lock").unlink()
        capsys.readouterr()
        console = quiet()
        assert await run_job(load_job(path), console=console) == EXIT_FAILED
        sent = sb.statistics().creates_by_key
    assert ledger_path(load_job(path)) == old
    assert "already done" in said(console)
    assert sent and max(sent.values()) == 1
    note = capsys.readouterr().err
    assert note.count("note: using the ledger at its old place") == 1
    assert str(old) in note and str(tmp_path / "out" / "life" / "ledger.sqlite") in note
    assert not (tmp_path / "out" / "life" / "ledger.sqlite").exists()


async def test_status_prefers_the_new_place_when_both_exist(tmp_path: Path) -> None:
    """Once a ledger is under out_dir, an old one beside the job file is ignored (no note)."""
    async with sandbox() as sb:
        (tmp_path / "token.txt").write_text(sb.token)
        path = import_job(tmp_path, sb.url)
        assert await run_job(load_job(path), console=quiet()) == EXIT_FAILED
    (tmp_path / "job.ledger.sqlite").write_bytes(b"")
    console = quiet()
    assert await status_job(load_job(path, offline=True), console=console) == 0
    assert ledger_path(load_job(path)) == tmp_path / "out" / "life" / "ledger.sqlite"
    assert "4 done" in said(console)
