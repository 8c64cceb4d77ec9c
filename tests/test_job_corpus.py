"""The corpus of broken job files: each gives exactly its expected one-line error, exit code 2.

Every ``tests/corpus/jobs/*.yaml`` is wrong in one way and has a sibling ``.expected`` holding
the one line ``validate`` prints on stderr, with ``{dir}`` standing for the corpus folder.
``valid.yml`` is the job they were all made from, with no mistake in it.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from synap_bulk.cli import main

CORPUS = Path(__file__).parent / "corpus" / "jobs"
JOBS = sorted(CORPUS.glob("*.yaml"))
#: The files that would eat memory or stack without the reader's limits.
BOMBS = ["alias-bomb.yaml", "recursive-alias.yaml", "deep-nesting-flow.yaml"]
#: The address-space cap for the bombs' subprocess: far less than a billion laughs needs.
MEMORY_CAP = 1 << 30


def expected_line(job: Path) -> str:
    text = job.with_suffix(".expected").read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 1, f"{job.name}: one line expected"
    return text.rstrip("\n").replace("{dir}", str(CORPUS))


@pytest.fixture(autouse=True)
def _unset_corpus_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNAP_BULK_CORPUS_UNSET", raising=False)


def test_the_corpus_is_complete() -> None:
    """Every job in the corpus has its .expected file and every .expected file its job."""
    assert len(JOBS) >= 30
    assert {p.stem for p in CORPUS.glob("*.expected")} == {p.stem for p in JOBS}
    for name in BOMBS:
        assert (CORPUS / name).is_file()


def test_the_job_the_corpus_was_made_from_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """valid.yml validates, so each broken file's error comes from its own one mistake."""
    assert main(["validate", str(CORPUS / "valid.yml")]) == 0
    out, err = capsys.readouterr()
    want = f"{CORPUS / 'valid.yml'}: job file ok (user-import); input: 1 row, 1 valid, 0 invalid"
    assert out == want + "\n"
    assert err == ""


@pytest.mark.parametrize("job", JOBS, ids=[p.stem for p in JOBS])
def test_a_broken_job_gives_exactly_its_expected_error(
    job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate exits 2 with exactly one stderr line, the expected one, and no traceback."""
    code = main(["validate", str(job)])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "Traceback" not in err and "unexpected" not in err
    assert err.rstrip("\n") == expected_line(job)


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


@pytest.mark.parametrize("name", BOMBS)
def test_a_bomb_is_refused_within_a_memory_cap(name: str) -> None:
    """Under a 1 GiB address-space cap, a bomb is still a clean exit 2 with its one-line error,
    never a MemoryError or RecursionError."""
    job = CORPUS / name
    proc = subprocess.run(
        [sys.executable, "-m", "synap_bulk", "validate", str(job)],
        capture_output=True,
        text=True,
        preexec_fn=_cap_memory,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.rstrip("\n") == expected_line(job)
    assert "Error" not in proc.stderr
