"""The SQLite ledger: states, group commit, refusal of a changed job, cursors, runs, failures."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from synap_bulk.errors import CheckpointError
from synap_bulk.items import InvalidRow, Item, ItemError, Outcome
from synap_bulk.ledger import Ledger


def item(n: int, **row: str) -> Item:
    return Item(key=f"k{n}", line=n + 1, row=row or {"email": f"u{n}@x.org"})


async def open_ledger(path: Path, *, task_hash: str = "t1", input_hash: str = "i1") -> Ledger:
    return await Ledger.open(path, job_name="job", task_hash=task_hash, input_hash=input_hash)


async def test_states_round_trip_and_failures_keep_rows(tmp_path: Path) -> None:
    """Recorded outcomes come back as states; failed/invalid/in-doubt rows and errors are kept
    in line order for the failures file, done rows are not stored."""
    path = tmp_path / "j.ledger.sqlite"
    async with await open_ledger(path) as ledger:
        ledger.record(item(1), Outcome(status="done", action="created", remote_id="u1"), 1)
        err = ItemError(status="400", code="taken", field="email", detail="already registered")
        ledger.record(item(3), Outcome(status="failed", error=err), 2)
        bad = InvalidRow(key="k2", line=3, row={"email": "nope"}, error=ItemError(status="invalid"))
        ledger.record(bad, "invalid", 0, bad.error)
        ledger.record(item(4), "in_doubt", 1, ItemError(status="in-doubt", detail="review"))
        await ledger.mark_in_flight(item(5))
    async with await open_ledger(path) as ledger:
        states = await ledger.load_states()
        assert states["k1"].status == "done"
        assert states["k1"].remote_id == "u1"
        assert states["k1"].action == "created"
        assert states["k3"].status == "failed"
        assert states["k3"].error_status == "400"
        assert states["k5"].status == "in_flight"
        failed = await ledger.failed_items()
        assert [(f.key, f.line, f.status) for f in failed] == [
            ("k2", 3, "invalid"),
            ("k3", 4, "failed"),
            ("k4", 5, "in_doubt"),
        ]
        assert failed[1].row == {"email": "u3@x.org"}
        assert failed[1].error == err
        assert await ledger.counts() == {
            "done": 1,
            "failed": 1,
            "invalid": 1,
            "in_doubt": 1,
            "in_flight": 1,
        }
    db = sqlite3.connect(path)
    assert db.execute("SELECT row FROM items WHERE key = 'k1'").fetchone() == (None,)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


async def test_concurrent_mark_in_flight_share_transactions(tmp_path: Path) -> None:
    """Many concurrent in-flight marks are committed in a few shared transactions."""
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        before = ledger.statistics().transactions
        async with anyio.create_task_group() as tg:
            for n in range(300):
                tg.start_soon(ledger.mark_in_flight, item(n))
        stats = ledger.statistics()
        assert stats.records_written == 300
        assert stats.transactions - before <= 10
        assert (await ledger.counts()) == {"in_flight": 300}


async def test_records_are_batched_and_flushed(tmp_path: Path) -> None:
    """record() only queues; flush() commits the queue in one transaction."""
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        ledger.max_delay = 60.0
        before = ledger.statistics().transactions
        for n in range(100):
            ledger.record(item(n), Outcome(status="done"), 1)
        assert ledger.statistics().pending == 100
        await ledger.flush()
        stats = ledger.statistics()
        assert stats.pending == 0
        assert stats.records_written == 100
        assert stats.transactions - before == 1


async def test_changed_task_or_input_refuses_unless_restart(tmp_path: Path) -> None:
    """A ledger started for another task section or input refuses to resume, naming the change
    and --restart; restart clears items and cursors but keeps run history."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        ledger.record(item(1), Outcome(status="done"), 1)
        await ledger.set_cursor("export:1", "page 3")
        await ledger.begin_run()
    with pytest.raises(CheckpointError) as info:
        await open_ledger(path, task_hash="t2")
    msg = str(info.value)
    assert "the job's task section changed" in msg
    assert "--restart" in msg
    with pytest.raises(CheckpointError) as info:
        await open_ledger(path, task_hash="t2", input_hash="i2")
    assert "the job's task section and the input file changed" in str(info.value)
    ledger = await Ledger.open(path, job_name="job", task_hash="t2", input_hash="i1", restart=True)
    async with ledger:
        assert await ledger.load_states() == {}
        assert await ledger.get_cursor("export:1") is None
        assert len(await ledger.runs()) == 1
    async with await open_ledger(path, task_hash="t2") as ledger:
        assert await ledger.counts() == {}


async def test_cursors_and_runs(tmp_path: Path) -> None:
    """Cursors persist; runs record start, end, status and summary; the last completed run's
    start time is what `since: last-run` reads."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        assert await ledger.get_cursor("c") is None
        await ledger.set_cursor("c", "1")
        await ledger.set_cursor("c", "2")
        assert await ledger.last_completed_run_started_at() is None
        r1 = await ledger.begin_run()
        await ledger.end_run(r1, "completed", {"done": 3})
        r2 = await ledger.begin_run()
        await ledger.end_run(r2, "stopped", {})
    async with await Ledger.open_readonly(path) as ledger:
        assert await ledger.get_cursor("c") == "2"
        runs = await ledger.runs()
        assert [(r.id, r.status) for r in runs] == [(r1, "completed"), (r2, "stopped")]
        assert runs[0].summary == {"done": 3}
        assert await ledger.last_completed_run_started_at() == runs[0].started_at
        assert runs[0].started_at.endswith("Z")


async def test_unusable_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A file that is not SQLite is refused with CheckpointError, not a crash."""
    path = tmp_path / "l.sqlite"
    path.write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(CheckpointError):
        await open_ledger(path)
    with pytest.raises(CheckpointError):
        await Ledger.open_readonly(tmp_path / "missing.sqlite")


async def test_a_second_run_of_the_same_job_is_refused(tmp_path: Path) -> None:
    """While one run holds the ledger, another open is refused; reading (status) still works."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as first:
        with pytest.raises(CheckpointError, match="another run of this job"):
            await open_ledger(path)
        async with await Ledger.open_readonly(path) as reader:
            assert await reader.counts() == {}
        first.record(item(1), Outcome(status="done"), 1)
    async with await open_ledger(path) as again:
        assert await again.counts() == {"done": 1}
