"""``kind: export`` with named lookups: a cohort named by its name, resolved once before the
first page; a name that finds nothing (or two groups) is an error at its line, nothing written."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from synap_bulk.errors import SpecError
from synap_bulk.runner import EXIT_INVALID, EXIT_OK, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job
from synap_bulk.tasks import build_task


@pytest.fixture
async def sb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sandbox]:
    config = SandboxConfig(seed=3, users=90, exams=2, attempts_per_exam=5)
    async with Sandbox(config) as sandbox:
        monkeypatch.setenv("SYNAP_TOKEN", sandbox.token)
        yield sandbox


def _job(tmp: Path, url: str, lookups: str, filters: str) -> Path:
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: cohort
api:
  base_url: {url}
  token: ${{SYNAP_TOKEN}}
task:
  kind: export
  resource: users
  lookups:
{lookups}
  filters: {filters}
  format: csv
  columns: [id, attributes.emailAddress]
  output: out/members.csv
  page_size: 7
"""
    )
    return path


async def _run(path: Path) -> tuple[int, str]:
    console = Console(file=io.StringIO(), width=300)
    code = await run_job(load_job(path), console=console, handle_signals=False)
    return code, console.file.getvalue()  # type: ignore[attr-defined]


def _cohort(sb: Sandbox) -> tuple[str, str]:
    group = next(g for g in sb.store.groups.values() if g.default_type is None and not g.internal)
    return group.id, group.name


@pytest.mark.parametrize("placeholder", ["{cohort.id}", "{cohort}"])
async def test_a_cohort_named_by_name_exports_exactly_its_members(
    tmp_path: Path, sb: Sandbox, placeholder: str
) -> None:
    gid, name = _cohort(sb)
    path = _job(
        tmp_path,
        sb.url,
        f"    cohort: {{resource: user-groups, by: {{name: {name!r}}}}}",
        f'{{userGroup: "{placeholder}"}}',
    )
    code, out = await _run(path)
    assert code == EXIT_OK, out
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out/members.csv").read_text())))
    assert sorted(r["id"] for r in rows) == sorted(sb.store.groups[gid].members)
    assert len(rows) < len(sb.store.users)  # the filter was applied, not every user


async def test_a_name_that_finds_no_group_is_an_error_at_the_lookup_line(
    tmp_path: Path, sb: Sandbox
) -> None:
    path = _job(
        tmp_path,
        sb.url,
        "    cohort: {resource: user-groups, by: {name: No Such Cohort}}",
        '{userGroup: "{cohort.id}"}',
    )
    code, out = await _run(path)
    assert code == EXIT_INVALID
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "cohort:" in t)
    assert f"job.yaml:{line}: task.lookups.cohort:" in out
    assert "no user group with name 'No Such Cohort'" in out
    assert not (tmp_path / "out/members.csv").exists()


async def test_two_groups_of_one_name_is_an_error_not_a_guess(tmp_path: Path, sb: Sandbox) -> None:
    gid, name = _cohort(sb)
    other = next(g for g in sb.store.groups.values() if g.default_type is None and g.id != gid)
    other.name = name  # two groups share the name now
    path = _job(
        tmp_path,
        sb.url,
        f"    cohort: {{resource: user-groups, by: {{name: {name!r}}}}}",
        '{userGroup: "{cohort.id}"}',
    )
    code, out = await _run(path)
    assert code == EXIT_INVALID
    assert "2 user-groups with name" in out
    assert not (tmp_path / "out/members.csv").exists()


@pytest.mark.parametrize(
    ("lookups", "filters", "at"),
    [
        (
            "    cohort: {resource: user-groups, by: {name: X}}",
            '{userGroup: "{group.id}"}',
            "task.filters.userGroup",
        ),
        (
            "    cohort: {resource: user-groups, by: {title: X}}",
            '{userGroup: "{cohort.id}"}',
            "task.lookups.cohort.by.title",
        ),
        (
            "    cohort: {resource: user-groups, by: {name: '{column}'}}",
            '{userGroup: "{cohort.id}"}',
            "task.lookups.cohort.by.name",
        ),
    ],
)
def test_a_placeholder_no_lookup_gives_is_an_error_at_its_line(
    tmp_path: Path, lookups: str, filters: str, at: str
) -> None:
    path = _job(tmp_path, "https://api.example.test/v3", lookups, filters)
    job = load_job(path, offline=True)
    with pytest.raises(SpecError) as info:
        build_task(job, job.profile)
    assert f"{at}:" in str(info.value)
    assert "job.yaml:" in str(info.value)
