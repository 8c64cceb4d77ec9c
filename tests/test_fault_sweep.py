"""A sick-but-alive server makes us slower, never fails the work; only a dying one stops the run,
resumably, through the circuit breaker.

The sandbox's ``fault_rate`` (its default mix: 500/502/503/504, an HTML 502, dropped and
truncated answers, and on writes commit-then-500 / commit-then-drop) at 10% and 20%: a paginated
listing and an import complete, with retries and no ``RetryBudgetExhausted``. At 60% the import
stops through the breaker (exit 2, status ``stopped``, reason naming the breaker); a resume at
0% then completes with every row on the server exactly once.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from rich.console import Console

from synap_bulk.client import SynapClient
from synap_bulk.clock import FakeClock
from synap_bulk.resources import User
from synap_bulk.runner import EXIT_INVALID, EXIT_OK, run_job
from synap_bulk.sampledata import write_candidates
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job

ROWS = 150


@pytest.mark.parametrize("rate", [0.1, 0.2])
async def test_a_paginated_listing_completes_through_transient_faults(rate: float) -> None:
    """1,000 users in pages of 10 (100+ requests, the listing that used to die at 102): every
    user once, in order, with retries spaced out on the (fake) clock instead of refused."""
    async with Sandbox(SandboxConfig(seed=5, users=1000, fault_rate=rate)) as sb:
        clock = FakeClock()
        client = SynapClient(sb.url, token=sb.token, clock=clock, rng=random.Random(5))
        async with client:
            ids = [u.id async for u in client.paginate("users", None, User, page_size=10)]
            stats = client.statistics()
        expected = [u.id for u in sb.store.users.values()]
        faults = sum(sb.statistics().faults.values())
    assert ids == expected
    assert faults > 0 and stats.retries >= faults
    assert clock.now() > 0  # slower: each retry waited its backoff (or for the budget)


def _job(tmp: Path, url: str, token: str, breaker: str = "") -> Path:
    (tmp / "token.txt").write_text(token)
    (tmp / "token.txt").chmod(0o600)
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: sweep
api:
  base_url: {url}
  token_file: token.txt
  concurrency: 8
{breaker}task:
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


def _summary(tmp: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((tmp / "out" / "sweep" / "summary.json").read_text())
    return data


def _candidates(sb: Sandbox) -> dict[str, str]:
    return {
        u.external_id: u.id
        for u in sb.store.users.values()
        if u.external_id and u.external_id.startswith("C")
    }


@pytest.mark.parametrize("rate", [0.1, 0.2])
async def test_an_import_completes_through_transient_faults(tmp_path: Path, rate: float) -> None:
    cands = write_candidates(tmp_path / "candidates.csv", ROWS, cohorts=["Cohort 01"], seed=3)
    console = Console(file=io.StringIO(), width=200)
    async with Sandbox(SandboxConfig(seed=3, users=0, groups=1, fault_rate=rate)) as sb:
        code = await run_job(
            load_job(_job(tmp_path, sb.url, sb.token)), console=console, handle_signals=False
        )
        server = _candidates(sb)
        stats = sb.statistics()
    said = console.file.getvalue()  # type: ignore[attr-defined]
    assert code == EXIT_OK, said
    assert "RetryBudgetExhausted" not in said and "retry budget" not in said
    assert set(server) == set(cands.valid_ids)
    assert stats.duplicate_creates == 0 and max(stats.creates_by_key.values()) == 1
    assert sum(stats.faults.values()) > 0
    summary = _summary(tmp_path)
    assert summary["status"] == "completed"
    assert isinstance(summary["retries"], int) and summary["retries"] > 0


async def test_a_dying_server_trips_the_breaker_and_a_resume_completes(tmp_path: Path) -> None:
    """60% faults: the run stops (resumably) through the breaker; the server recovers (0%) and a
    plain re-run finishes: every valid row on the server exactly once."""
    cands = write_candidates(tmp_path / "candidates.csv", ROWS, cohorts=["Cohort 01"], seed=4)
    console = Console(file=io.StringIO(), width=200)
    async with Sandbox(SandboxConfig(seed=4, users=0, groups=1, fault_rate=0.6)) as sb:
        # A small breaker window, so it trips after a few item attempts: each attempt there has
        # already been retried by the client (spaced out by the retry budget), which is what
        # makes the default window (200, at least 50) take over a minute here.
        breaker = "run:\n  breaker: {window: 10, min_requests: 6, threshold: 0.5}\n"
        job = _job(tmp_path, sb.url, sb.token, breaker)
        stopped = await run_job(load_job(job), console=console, handle_signals=False)
        first = _summary(tmp_path)
        sb.configure(fault_rate=0.0)
        resumed = await run_job(load_job(job), console=console, handle_signals=False)
        server = _candidates(sb)
        stats = sb.statistics()
    said = console.file.getvalue()  # type: ignore[attr-defined]
    assert stopped == EXIT_INVALID, said
    assert first["status"] == "stopped" and "breaker" in str(first["reason"]), first
    counts = first["job_total"]
    assert isinstance(counts, dict) and counts.get("done", 0) < ROWS
    assert resumed == EXIT_OK, said
    assert set(server) == set(cands.valid_ids)
    assert stats.duplicate_creates == 0 and max(stats.creates_by_key.values()) == 1
    assert _summary(tmp_path)["status"] == "completed"
