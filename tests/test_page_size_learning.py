"""A page size the server refuses (400 naming it) or clamps (a shorter page with a next link)
is learned once, used for the rest of the run, and never fails a listing or an export."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from synap_bulk import pagination
from synap_bulk.client import SynapClient
from synap_bulk.jsonapi import AnyResource
from synap_bulk.profile import ApiProfile
from synap_bulk.runner import EXIT_OK, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job

CONFIG = SandboxConfig(
    seed=4,
    users=95,
    exams=2,
    attempts_per_exam=70,
    default_page_size=10,
    max_page_size=10,
)


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(CONFIG) as sandbox:
        yield sandbox


def _pages_asked(sb: Sandbox) -> int:
    return sb.statistics().by_route.get("users.list", 0)


async def _all_ids(sb: Sandbox) -> list[str]:
    """Every user id, at the server's own maximum (nothing to learn)."""
    async with SynapClient(sb.url, token=sb.token) as client:
        ids = [u.id async for u in client.paginate("users", None, AnyResource, 10)]
        assert client.page_size_cap is None
        return ids


@pytest.mark.parametrize("parallel", [1, 4])
async def test_a_refused_page_size_is_learned_from_the_400(sb: Sandbox, parallel: int) -> None:
    """Asked for 25 where the maximum is 10 (400 'between 1 and 10'): the listing still gives
    every user once, in order, and the client asks for 10 from then on."""
    want = await _all_ids(sb)
    async with SynapClient(sb.url, token=sb.token) as client:
        got = [
            u.id async for u in client.paginate("users", None, AnyResource, 25, parallel=parallel)
        ]
        assert client.page_size_cap == 10
        refused = sb.statistics().by_status.get(400, 0)
        again = [u.id async for u in client.paginate("users", None, AnyResource, 25)]
        assert sb.statistics().by_status.get(400, 0) == refused  # learned once per run
    assert got == want == again
    assert len(set(got)) == len(got) == sb.statistics().resources["User"]


async def test_without_a_hint_the_size_is_found_by_bisection(
    sb: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 400 that names the parameter but no bound: the largest size accepted is found."""
    sb.configure(max_page_size=13, default_page_size=13)
    monkeypatch.setattr(pagination, "_hinted_size", lambda exc, below: None)
    async with SynapClient(sb.url, token=sb.token) as client:
        got = [u.id async for u in client.paginate("users", None, AnyResource, 500)]
        assert client.page_size_cap == 13
    assert len(set(got)) == len(got) == sb.statistics().resources["User"]


@pytest.mark.parametrize("style", ["page-number", "offset"])
@pytest.mark.parametrize("parallel", [1, 4])
async def test_a_clamped_page_size_is_learned_from_the_short_page(
    sb: Sandbox, style: str, parallel: int
) -> None:
    """The server gives 10 of the 25 asked, with a next link: positions follow the 10, so
    parallel pages neither skip nor repeat a row."""
    sb.configure(page_size_over_max="clamp")
    profile = ApiProfile(pagination=style)  # type: ignore[arg-type]
    async with SynapClient(sb.url, token=sb.token, profile=profile) as client:
        want = [u.id async for u in client.paginate("users", None, AnyResource, 10)]
        assert client.page_size_cap is None  # 10 is what the server gives: nothing to learn
        before = _pages_asked(sb)
        got = [
            u.id async for u in client.paginate("users", None, AnyResource, 25, parallel=parallel)
        ]
        assert client.page_size_cap == 10
    assert got == want and len(set(got)) == sb.statistics().resources["User"]
    # Pages of 10, none asked twice (nor a page past the end: the last one has no next link).
    assert _pages_asked(sb) - before == math.ceil(len(want) / 10)


@pytest.mark.parametrize("mode", ["reject", "clamp"])
async def test_an_export_asking_for_500_per_page_completes(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The export's default page size (the profile's 500) against a maximum of 10: every
    attempt once, not a failed export."""
    sb.configure(page_size_over_max=mode)
    monkeypatch.setenv("SYNAP_TOKEN", sb.token)
    job = tmp_path / "job.yaml"
    out = tmp_path / "attempts.csv"
    job.write_text(
        f"""version: 1
name: learn
api:
  base_url: {sb.url}
  token: ${{SYNAP_TOKEN}}
  concurrency: 4
task:
  kind: export-attempts
  format: csv
  parallel: 3
  output: {out}
"""
    )
    console = Console(file=io.StringIO(), width=300)
    code = await run_job(load_job(job), console=console, handle_signals=False)
    assert code == EXIT_OK, console.file.getvalue()  # type: ignore[attr-defined]
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == sb.statistics().resources["Attempt"]
