"""The core promise at scale: 20 SIGKILLs at seeded moments of a 5,000-row import through 5%
faults (commit-then-500 and commit-then-drop among them), against a standalone sandbox process
that keeps its data in a state file; after the final resume every valid row is on the server
exactly once, every invalid row is in the failures file, and the ledger agrees with the server.

Kill moments are request counts read from the sandbox's own counters (``/_sandbox/stats``):
the run is killed once the server has seen a seeded number of further requests. Between two
reads the test waits for the run to end, for at most :data:`POLL_S` (a bound on how often the
counters are read, not a sleep that anything depends on).
"""

from __future__ import annotations

import csv
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.abc import Process

from synap_bulk.ledger import Ledger
from synap_bulk.runner import EXIT_FAILED, ledger_path
from synap_bulk.sampledata import write_candidates
from synap_bulk.spec import load_job

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "p:kill-at-scale"
ROWS = 5_000
KILLS = 20
POLL_S = 0.05
#: 5% of requests fail; half of the faults commit the write first, then fail the answer.
FAULTS = "500=2,503=1,502=1,html502=1,drop=1,truncate=1,commit-then-500=4,commit-then-drop=4"
COHORTS = ["Cohort 01", "Cohort 02", "Cohort 03"]


def _start_sandbox(state: Path) -> tuple[subprocess.Popen[str], str]:
    """``python -m synap_bulk sandbox --state``; its /v3 URL once it accepts connections."""
    env = {**os.environ, "SYNAP_SANDBOX_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "synap_bulk", "sandbox", "--port", "0", "--state", str(state),
           "--users", "0", "--groups", "3", "--seed", "11", "--rate", "0",
           "--fault-rate", "0.05", "--faults", FAULTS]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "the sandbox did not announce itself"
    line = proc.stdout.readline()
    assert line.startswith("sandbox listening on http://127.0.0.1:"), line
    url = line.split()[-1]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    deadline = time.monotonic() + 60
    while True:  # it prints the line after binding, so the first attempt normally connects
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline
    return proc, url


def _job(tmp: Path, url: str) -> Path:
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: kill-scale
api:
  base_url: {url}
  token: ${{SYNAP_TOKEN}}
  concurrency: 16
task:
  kind: user-import
  source: candidates.csv
  match: externalId
  mode: upsert
  fields:
    name: "{{first_name}} {{last_name}}"
    emailAddress: "{{email}}"
    externalId: "{{candidate_no}}"
  groups: ["{{cohort}}", "Students"]
"""
    )
    return path


async def _stats(http: aiohttp.ClientSession, root: str) -> dict[str, Any]:
    async with http.get(
        f"{root}/_sandbox/stats", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as r:
        assert r.status == 200
        doc: dict[str, Any] = await r.json(content_type=None)
        return doc


async def _kill_after(http: aiohttp.ClientSession, root: str, proc: Process, requests: int) -> bool:
    """SIGKILL the run once the server has seen ``requests`` requests; False if it ended first."""
    while (await _stats(http, root))["requests"] < requests:
        with anyio.move_on_after(POLL_S):
            await proc.wait()
            return False
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    return True


async def _server_users(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    """externalId -> id of every user on the server, read through its paginated listing."""
    found: dict[str, str] = {}
    next_url: str | None = f"{url}/users?page[size]=500"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while next_url:
        async with http.get(next_url, headers=headers) as r:
            if r.status != 200:  # the sandbox's faults apply to us too: ask again
                continue
            doc = await r.json(content_type=None)
        for user in doc["data"]:
            ext = user["attributes"].get("externalId")
            if ext and ext.startswith("C"):  # the candidates, not the seeded markers
                assert ext not in found, f"{ext} twice on the server"
                found[ext] = user["id"]
        next_url = doc["links"].get("next")
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_twenty_kills_at_scale_leave_every_valid_row_exactly_once(tmp_path: Path) -> None:
    cands = write_candidates(
        tmp_path / "candidates.csv", ROWS, cohorts=COHORTS, seed=11, bad_every=50
    )
    proc, url = _start_sandbox(tmp_path / "sandbox.json")
    root = url.rsplit("/v3", 1)[0]
    rng = random.Random(20261202)
    env = {**os.environ, "SYNAP_TOKEN": TOKEN}
    job = _job(tmp_path, url)
    cmd = [sys.executable, "-m", "synap_bulk", "run", str(job)]
    kills, ended_first = 0, []
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(KILLS):
                start = (await _stats(http, root))["requests"]
                log = tmp_path / f"run-{i}.log"
                with log.open("wb") as err:
                    run = await anyio.open_process(
                        cmd, env=env, stdout=subprocess.DEVNULL, stderr=err
                    )
                    if await _kill_after(http, root, run, start + rng.randint(20, 260)):
                        kills += 1
                    else:
                        ended_first.append(log.read_text()[-1500:])
            final = await anyio.run_process(cmd, env=env, check=False)
            # Faults off for the checks: the server's answers are now the truth to compare with.
            async with http.patch(
                f"{root}/_sandbox/config",
                json={"fault_rate": 0.0},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as r:
                assert r.status == 200, await r.text()
            stats = await _stats(http, root)
            server = await _server_users(http, url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert kills == KILLS, f"each run must be killed mid-way; ended first: {ended_first}"
    assert final.returncode == EXIT_FAILED, final.stderr.decode()[-2000:]  # the invalid rows
    assert stats["faults"].get("commit-then-500", 0) > 0
    assert stats["faults"].get("commit-then-drop", 0) > 0
    assert stats["duplicate_creates"] == 0
    assert max(stats["creates_by_key"].values()) == 1
    assert set(server) == set(cands.valid_ids)  # 0 missing, 0 extra
    # The ledger agrees with the server: every valid row done with the id the server gave it.
    ledger = await Ledger.open_readonly(ledger_path(load_job(job, offline=True)))
    try:
        states = await ledger.load_states()
    finally:
        await ledger.close()
    done = {k.split(":", 1)[1]: s.remote_id for k, s in states.items() if s.status == "done"}
    assert done == server
    with (tmp_path / "out" / "kill-scale" / "failures.csv").open(encoding="utf-8-sig") as fh:
        failures = list(csv.DictReader(fh))
    assert {int(r["_line"]) for r in failures} == set(cands.invalid_lines)
