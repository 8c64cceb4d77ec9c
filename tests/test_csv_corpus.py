"""The corpus of awkward CSV inputs, each run as a user import against a sandbox.

Every ``tests/corpus/csv/*.csv`` has a sibling ``.expected`` (JSON): either a file-level refusal
(``exit`` 2 and the one ``error:`` line; nothing is sent) or the rows the server must end up with
(``done``: externalId -> [email, name], each created exactly once) and the failures file's rows
(``failures``: [line, _error_status, the start of _error_detail]). A 1 MB field is generated here
rather than kept in the repository.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from synap_bulk.runner import run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.sinks import FORMULA_START
from synap_bulk.spec import load_job

CORPUS = Path(__file__).parent / "corpus" / "csv"
FILES = sorted(CORPUS.glob("*.csv"))
#: Made at test time: a 1 MB field (the csv module's field limit is 128 KiB).
ONE_MB = b"id,email,name\nM1,m1@example.com," + b"x" * (1 << 20) + b"\nM2,m2@example.com,Small\n"
GENERATED: dict[str, tuple[bytes, dict[str, Any]]] = {
    # One row with a 1 MB value is that row's problem; the rows after it are imported.
    "one-mb-field": (
        ONE_MB,
        {
            "exit": 1,
            "done": {"M2": ["m2@example.com", "Small"]},
            "failures": [[2, "invalid", "a value longer than 131,072 characters"]],
        },
    ),
    # An open quote that runs past the field limit over many lines: the rest is unsure, so
    # the whole file is refused (nothing is sent).
    "open-quote-past-the-limit": (
        b'id,email,name\nQ1,q1@example.com,"' + b"x\n" * 70_000 + b"Q2,q2@example.com,Q\n",
        {
            "exit": 2,
            "error": "error: users.csv:2: field larger than field limit (131072); "
            "is a quote left open?",
        },
    ),
}
CASES = [p.stem for p in FILES] + list(GENERATED)


def test_the_corpus_is_complete() -> None:
    """Every case the issue lists is here, each with its expectation."""
    assert {p.stem for p in CORPUS.glob("*.expected")} == {p.stem for p in FILES}
    assert set(CASES) >= {
        "empty", "header-only", "bom", "crlf", "quoted-newlines", "unclosed-quote",
        "ragged-rows", "duplicate-header", "one-mb-field", "latin-1", "nul-bytes",
        "email-spaces-capitals", "duplicate-keys", "formula-values",
    }  # fmt: skip


def _read(case: str) -> tuple[bytes, dict[str, Any]]:
    if case in GENERATED:
        return GENERATED[case]
    expected: dict[str, Any] = json.loads((CORPUS / f"{case}.expected").read_text())
    return (CORPUS / f"{case}.csv").read_bytes(), expected


@pytest.mark.parametrize("case", CASES)
async def test_an_awkward_csv_is_imported_row_by_row_or_refused_whole(
    tmp_path: Path, case: str
) -> None:
    data, expected = _read(case)
    (tmp_path / "users.csv").write_bytes(data)
    console = Console(file=io.StringIO(), width=300)
    async with Sandbox(SandboxConfig(users=0, groups=1, seed=1)) as sb:
        (tmp_path / "token.txt").write_text(sb.token)
        (tmp_path / "token.txt").chmod(0o600)
        (tmp_path / "job.yaml").write_text(
            f"""version: 1
name: csv
api:
  base_url: {sb.url}
  token_file: token.txt
task:
  kind: user-import
  source: users.csv
  match: externalId
  fields: {{externalId: "{{id}}", emailAddress: "{{email}}", name: "{{name}}"}}
"""
        )
        code = await run_job(load_job(tmp_path / "job.yaml"), console=console, handle_signals=False)
        users = {
            u.external_id: [u.email, u.name]
            for u in sb.store.users.values()
            if u.external_id and not u.external_id.startswith("M0")  # not the seeded markers
        }
        stats = sb.statistics()
    said = console.file.getvalue()  # type: ignore[attr-defined]
    assert code == expected["exit"], said
    failures_file = tmp_path / "out" / "csv" / "failures.csv"
    if "error" in expected:  # refused whole: one error line, nothing written to the server
        assert [line for line in said.splitlines() if line.startswith("error")] == [
            expected["error"]
        ]
        assert users == {} and stats.creates_by_key == {}
        assert not failures_file.exists()
        return
    assert users == expected["done"]
    assert all(n == 1 for n in stats.creates_by_key.values())
    rows: list[list[Any]] = []
    if failures_file.exists():
        text = failures_file.read_text(encoding="utf-8-sig")
        # The failures file keeps a too-long value whole (for the person to fix): read it back
        # with room for it.
        limit = csv.field_size_limit(len(text) + 1)
        try:
            records = list(csv.DictReader(io.StringIO(text, newline="")))
        finally:
            csv.field_size_limit(limit)
        for r in records:
            rows.append([int(r["_line"]), r["_error_status"], r["_error_detail"]])
            # no cell a spreadsheet would run as a formula (formula-values.csv has one)
            assert all(not v or v[0] not in FORMULA_START for v in r.values()), r
    want = expected.get("failures", [])
    assert [r[:2] for r in rows] == [w[:2] for w in want]
    for got, (_, _, detail) in zip(rows, want, strict=True):
        assert got[2].startswith(detail), (got, detail)
