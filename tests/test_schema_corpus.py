"""The JSON Schema, as an editor's validator (jsonschema, draft 2020-12) uses it: every job in
jobs/ passes, and every job of the corpora is refused at the path of its mistake.

``tests/corpus/schema/*.yaml`` each start with ``# refused at: PATH``: the one place the schema
must point at (a key's own path; for an unknown or missing key, the mapping that holds it).
``validate`` refuses each of them too, naming that place or a key inside it, so the editor and
the command agree. The CLI corpus (``tests/corpus/jobs``) is classified in :data:`CLI_CORPUS`:
where the schema refuses the file, or why only ``validate`` can see the mistake.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from synap_bulk.cli import main
from synap_bulk.spec import job_schema

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
JOBS = sorted((ROOT / "jobs").rglob("*.yaml"))
SCHEMA_CORPUS = sorted((Path(__file__).parent / "corpus" / "schema").glob("*.yaml"))
CLI_DIR = Path(__file__).parent / "corpus" / "jobs"

#: Each CLI-corpus job: the path the schema refuses it at, or (None, why the schema cannot).
CLI_CORPUS: dict[str, tuple[str | None, str]] = {
    "alias-bomb": (None, "a YAML reader limit"),
    "deep-nesting-block": (None, "a YAML reader limit"),
    "deep-nesting-flow": (None, "a YAML reader limit"),
    "recursive-alias": (None, "a YAML reader limit"),
    "syntax-error": (None, "not YAML"),
    "tab-indentation": (None, "not YAML"),
    "non-utf8": (None, "not text"),
    "empty": (None, "no document"),
    "only-comments": (None, "no document"),
    "explicit-tag": (None, "a YAML tag, refused by the reader"),
    "python-tag": (None, "a YAML tag, refused by the reader"),
    "duplicate-key-api": (None, "a YAML parser keeps the last of duplicate keys"),
    "duplicate-key-task": (None, "a YAML parser keeps the last of duplicate keys"),
    "duplicate-key-top": (None, "a YAML parser keeps the last of duplicate keys"),
    "huge-integer": (None, "a reader limit on number length"),
    "non-finite-grace": (None, "JSON has no infinity; a YAML editor's numbers do"),
    "non-finite-rate": (None, "JSON has no infinity; a YAML editor's numbers do"),
    "non-finite-timeout": (None, "JSON has no NaN; a YAML editor's numbers do"),
    "missing-env-var": (None, "the environment at load time"),
    "missing-source": (None, "the file system"),
    "source-is-directory": (None, "the file system"),
    "ledger-is-directory": (None, "the file system"),
    "insecure-url": (None, "a URL rule (https, or http to localhost)"),
    "top-level-list": ("", "the top level must be a mapping"),
    "missing-required-api": ("", "a required key"),
    "out-of-range-attempts": ("run.max_item_attempts", ""),
    "out-of-range-concurrency": ("api.concurrency", ""),
    "out-of-range-rate": ("api.rate", ""),
    "unknown-key-api": ("api", ""),
    "unknown-key-run": ("run", ""),
    "unknown-key-task": ("task", ""),
    "unknown-key-top": ("", ""),
    "wrong-kind": ("task.kind", ""),
    "wrong-type-concurrency": ("api.concurrency", ""),
    "wrong-type-fields": ("task.fields", ""),
    "wrong-type-version": ("version", ""),
    "unknown-key-sandbox": ("sandbox", ""),
    "unknown-key-breaker": ("run.breaker", ""),
    "unknown-key-profile": (None, "api.profile is an open mapping; its keys are the profile's"),
    "non-finite-nan": (None, "JSON has no NaN; a YAML editor's numbers do"),
    "wrong-type-groups": ("task.groups", ""),
    "wrong-type-breaker-threshold": ("run.breaker.threshold", ""),
    "out-of-range-breaker-threshold": ("run.breaker.threshold", ""),
    "env-var-in-url-missing": (None, "the environment at load time"),
}


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = job_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def refused_at(validator: Any, data: Any) -> list[str]:
    """The dotted paths of every schema error of ``data`` (indexes as [n])."""
    paths = []
    for error in validator.iter_errors(data):
        parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path]
        paths.append("".join(parts).lstrip(".").replace(".[", "["))
    return sorted(paths)


def test_the_corpora_are_complete() -> None:
    """Every CLI-corpus job is classified here, and the schema corpus covers every task kind,
    the sandbox section and the run section."""
    assert {p.stem for p in CLI_DIR.glob("*.yaml")} == set(CLI_CORPUS)
    texts = [p.read_text() for p in SCHEMA_CORPUS]
    for kind in ("user-import", "assign-markers", "export-attempts", "request"):
        assert any(f"kind: {kind}" in t for t in texts), kind
    assert any(t.startswith("# refused at: sandbox") for t in texts)
    assert any(t.startswith("# refused at: run.") for t in texts)


@pytest.mark.parametrize("path", JOBS, ids=[str(p.relative_to(ROOT)) for p in JOBS])
def test_every_job_in_jobs_is_valid_under_the_schema(validator: Any, path: Path) -> None:
    """Each job file under jobs/, read as an editor's YAML reader would, has no schema error."""
    assert refused_at(validator, yaml.safe_load(path.read_text(encoding="utf-8"))) == []


def test_the_corpus_base_job_is_valid_under_the_schema(validator: Any) -> None:
    """valid.yml, which every CLI-corpus job was made from, has no schema error."""
    assert refused_at(validator, yaml.safe_load((CLI_DIR / "valid.yml").read_text())) == []


@pytest.mark.parametrize("path", SCHEMA_CORPUS, ids=[p.stem for p in SCHEMA_CORPUS])
def test_the_schema_refuses_each_mistake_at_its_path(
    validator: Any, path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One schema error, at the place the file's first line names; validate refuses the same
    file (exit 2) naming that place or a key inside it."""
    text = path.read_text(encoding="utf-8")
    match = re.match(r"# refused at: (\S*)\n", text)
    assert match, f"{path.name}: first line must be '# refused at: PATH'"
    where = match.group(1)
    assert refused_at(validator, yaml.safe_load(text)) == [where]
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    said = re.match(rf"error: {re.escape(str(path))}:\d+: ([^:]+):", err)
    assert said, err
    assert said.group(1) == where or said.group(1).startswith(f"{where}."), err


@pytest.mark.parametrize("name", sorted(CLI_CORPUS))
def test_the_cli_corpus_is_refused_by_the_schema_where_it_can_see(
    validator: Any, name: str
) -> None:
    """Each CLI-corpus job the schema can judge is refused at the expected path; for the rest,
    the reason is said above (what no JSON Schema can see)."""
    where, _ = CLI_CORPUS[name]
    if where is None:
        return
    data = yaml.safe_load((CLI_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    assert refused_at(validator, data) == [where]
