"""The SQLite ledger: states, group commit, refusal of a changed job, cursors, runs, failures,
run numbers, meta values, settling in-doubt items, another input, older ledgers."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from synap_bulk.errors import CheckpointError
from synap_bulk.items import InvalidRow, Item, ItemError, Outcome, Safety
from synap_bulk.ledger import Ledger

from .test_engine import COMMIT_THEN_500, FakeTask, engine


def item(n: int, **row: str) -> Item:
    return Item(key=f"k{n}", line=n + 1, row=row or {"email": f"u{n}@x.org"})


def commit_then_500(*keys: str) -> dict[str, list[Any]]:
    """Faults for FakeTask: each key's first request takes effect, then the server answers 500."""
    return {key: [COMMIT_THEN_500] for key in keys}


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


async def test_a_ledger_with_nothing_recorded_accepts_a_fixed_job(tmp_path: Path) -> None:
    """A first run that stopped before recording anything (an error in the job file, fixed
    since) leaves no progress to protect: the changed job opens the ledger without --restart,
    and keeps the run history."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        await ledger.begin_run()
    async with await open_ledger(path, task_hash="t2", input_hash="i2") as ledger:
        assert len(await ledger.runs()) == 1
    async with await open_ledger(path, task_hash="t2", input_hash="i2") as ledger:
        ledger.record(item(1), Outcome(status="done"), 1)
    with pytest.raises(CheckpointError, match="task section"):
        await open_ledger(path, task_hash="t3", input_hash="i2")


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


async def test_restart_sets_a_corrupt_ledger_aside(tmp_path: Path) -> None:
    """A corrupt ledger says how to go on; --restart keeps it as .corrupt-<time> beside the new
    one and starts afresh, and the bad bytes are still there to look at."""
    path = tmp_path / "l.sqlite"
    junk = b"this is not a database, just text" * 100
    path.write_bytes(junk)
    with pytest.raises(CheckpointError, match="run with --restart to set it aside"):
        await open_ledger(path)
    ledger = await Ledger.open(path, job_name="job", task_hash="t1", input_hash="i1", restart=True)
    async with ledger:
        assert ledger.set_aside is not None and ledger.set_aside.name.startswith(
            "l.sqlite.corrupt-"
        )
        assert ledger.set_aside.read_bytes() == junk
        assert await ledger.counts() == {}
    async with await open_ledger(path) as again:
        assert again.set_aside is None


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


# -- runs, meta, settling, another input, older ledgers -------------------------------------------


async def test_records_carry_the_run_that_made_them(tmp_path: Path) -> None:
    """Every record and in-flight mark carries the run id begin_run set; counts and action
    counts can be taken per run or over all runs."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        assert ledger.run_id == 0
        r1 = await ledger.begin_run()
        assert ledger.run_id == r1
        ledger.record(item(1), Outcome(status="done", action="created"), 1)
        ledger.record(item(2), Outcome(status="done", action="updated"), 1)
        ledger.record(item(3), Outcome(status="failed", error=ItemError(status="400")), 1)
        await ledger.end_run(r1, "completed", {})
        r2 = await ledger.begin_run()
        assert r2 > r1
        ledger.record(item(3), Outcome(status="done", action="created"), 2)  # retried: now r2
        ledger.record(item(4), Outcome(status="done", action="created"), 1)
        await ledger.mark_in_flight(item(5))
        states = await ledger.load_states()
        assert {k: s.run for k, s in states.items()} == {
            "k1": r1,
            "k2": r1,
            "k3": r2,
            "k4": r2,
            "k5": r2,
        }
        assert await ledger.counts(run=r1) == {"done": 2}
        assert await ledger.counts(run=r2) == {"done": 2, "in_flight": 1}
        assert await ledger.counts() == {"done": 4, "in_flight": 1}
        assert await ledger.counts(run=r2 + 1) == {}
        assert await ledger.action_counts(run=r1) == {"created": 1, "updated": 1}
        assert await ledger.action_counts(run=r2) == {"created": 2}
        assert await ledger.action_counts() == {"created": 3, "updated": 1}
    db = sqlite3.connect(path)
    assert db.execute("SELECT key, run FROM items WHERE key = 'k3'").fetchone() == ("k3", r2)
    db.close()


async def test_runs_record_the_process_that_ran_them(tmp_path: Path) -> None:
    """begin_run stores this process's id, and runs() returns it with each run."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        r1 = await ledger.begin_run()
        await ledger.end_run(r1, "completed", {"done": 1})
        await ledger.begin_run()  # left running, as a killed process would leave it
    async with await Ledger.open_readonly(path) as reader:
        runs = await reader.runs()
    assert [(r.status, r.pid) for r in runs] == [
        ("completed", os.getpid()),
        ("running", os.getpid()),
    ]


async def test_settle_applied_is_done_and_never_sent_again(tmp_path: Path) -> None:
    """An in-doubt item settled as applied becomes done with action `settled`, loses its kept
    row and error, and the engine skips it on the next run."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        await engine(FakeTask(3, safety=Safety.UNSAFE, faults=commit_then_500("k1")), ledger).run()
        assert (await ledger.load_states())["k1"].status == "in_doubt"
        assert await ledger.settle(["k1"], applied=True) == {"k1": "settled"}
        state = (await ledger.load_states())["k1"]
        assert (state.status, state.action, state.error_status) == ("done", "settled", "")
        assert await ledger.failed_items() == []
        assert await ledger.action_counts() == {"created": 2, "settled": 1}
    async with await open_ledger(path) as ledger:
        again = FakeTask(3, safety=Safety.UNSAFE)
        result = await engine(again, ledger).run()
    assert again.executed == []
    assert result.stats.skipped_done == 3
    db = sqlite3.connect(path)
    assert db.execute("SELECT row, error FROM items WHERE key = 'k1'").fetchone() == (None, None)
    db.close()


async def test_settle_not_applied_is_forgotten_and_sent_on_the_next_run(tmp_path: Path) -> None:
    """An in-doubt item settled as not applied leaves the ledger, so the next run sends it
    (once) like an item never started."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        await engine(FakeTask(3, safety=Safety.UNSAFE, faults=commit_then_500("k2")), ledger).run()
        assert await ledger.settle(["k2"], applied=False) == {"k2": "settled"}
        assert "k2" not in await ledger.load_states()
        assert await ledger.counts() == {"done": 2}
    async with await open_ledger(path) as ledger:
        again = FakeTask(3, safety=Safety.UNSAFE)
        result = await engine(again, ledger).run()
        assert (await ledger.load_states())["k2"].action == "created"
    assert again.executed == ["k2"]
    assert result.stats.done == 1


async def test_settle_reports_unknown_and_not_in_doubt_keys_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """Keys the ledger does not know, or whose item is not in doubt, are reported with the
    reason and left exactly as they were, whichever way they are settled."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        ledger.record(item(1), Outcome(status="done", action="created", remote_id="r1"), 1)
        ledger.record(item(2), Outcome(status="failed", error=ItemError(status="400")), 1)
        ledger.record(item(3), "in_doubt", 1, ItemError(status="in-doubt"))
        await ledger.flush()
        before = await ledger.load_states()
        for applied in (True, False):
            answer = await ledger.settle(["k1", "k2", "nope"], applied=applied)
            assert answer == {
                "k1": "not in doubt: done",
                "k2": "not in doubt: failed",
                "nope": "unknown",
            }
        assert await ledger.load_states() == before
        assert [f.key for f in await ledger.failed_items()] == ["k2", "k3"]


async def test_meta_values_persist(tmp_path: Path) -> None:
    """set_meta stores a value (replacing an earlier one) that get_meta reads after reopening;
    an unset name reads None."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        assert await ledger.get_meta("portal") is None
        await ledger.set_meta("portal", "p-1")
        await ledger.set_meta("portal", "p-2")
        assert await ledger.get_meta("job_name") == "job"
    async with await open_ledger(path) as ledger:
        assert await ledger.get_meta("portal") == "p-2"
        assert await ledger.get_meta("input_hash") == "i1"


async def test_check_input_false_accepts_another_input_and_keeps_the_original_hash(
    tmp_path: Path,
) -> None:
    """With check_input=False another input hash is accepted without replacing the stored one,
    so a later normal open with the job's own input still resumes; the task is still checked."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        ledger.record(item(1), Outcome(status="done"), 1)
    with pytest.raises(CheckpointError, match="the input file changed"):
        await open_ledger(path, input_hash="fixed-rows")
    fed_back = await Ledger.open(
        path, job_name="job", task_hash="t1", input_hash="fixed-rows", check_input=False
    )
    async with fed_back as ledger:
        assert await ledger.get_meta("input_hash") == "i1"
        ledger.record(item(2), Outcome(status="done"), 1)
    with pytest.raises(CheckpointError, match="the job's task section changed"):
        await Ledger.open(path, job_name="job", task_hash="t2", input_hash="", check_input=False)
    async with await open_ledger(path) as ledger:
        assert set(await ledger.load_states()) == {"k1", "k2"}
        assert await ledger.get_meta("input_hash") == "i1"


#: The first release's schema: items without ``run``, runs without ``pid``.
OLD_SCHEMA = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE items (
    key TEXT PRIMARY KEY,
    line INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    action TEXT NOT NULL DEFAULT '',
    remote_id TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    row TEXT,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    status TEXT NOT NULL,
    summary TEXT
);
"""


async def test_a_ledger_of_the_previous_schema_opens_and_keeps_its_rows(tmp_path: Path) -> None:
    """A ledger written before run numbers and pids opens, gains both columns, keeps its items,
    cursors and runs (run 0, no pid) and resumes as before."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.executemany(
        "INSERT INTO meta (k, v) VALUES (?, ?)",
        [("job_name", "job"), ("task_hash", "t1"), ("input_hash", "i1"), ("created", "then")],
    )
    db.execute(
        "INSERT INTO items (key, line, status, action, remote_id, attempts, updated_at) "
        "VALUES ('k1', 2, 'done', 'created', 'r1', 1, julianday('now'))"
    )
    db.execute(
        "INSERT INTO items (key, line, status, attempts, error, row, updated_at) VALUES "
        """('k2', 3, 'in_doubt', 1, '{"status":"in-doubt"}', '{"email":"u2@x.org"}', 0)"""
    )
    db.execute("INSERT INTO cursors (name, value) VALUES ('c', 'page 2')")
    db.execute(
        "INSERT INTO runs (started_at, ended_at, status) VALUES ('2024-01-01T00:00:00Z', "
        "'2024-01-01T00:01:00Z', 'completed')"
    )
    db.commit()
    db.close()
    async with await open_ledger(path) as ledger:
        states = await ledger.load_states()
        assert (states["k1"].status, states["k1"].remote_id, states["k1"].run) == ("done", "r1", 0)
        assert (states["k2"].status, states["k2"].error_status) == ("in_doubt", "in-doubt")
        assert [f.row for f in await ledger.failed_items()] == [{"email": "u2@x.org"}]
        assert await ledger.get_cursor("c") == "page 2"
        old_run = (await ledger.runs())[0]
        assert (old_run.status, old_run.pid) == ("completed", None)
        run = await ledger.begin_run()
        ledger.record(item(3), Outcome(status="done", action="created"), 1)
        assert await ledger.settle(["k2"], applied=True) == {"k2": "settled"}
        assert await ledger.counts(run=run) == {"done": 2}
        assert await ledger.counts(run=0) == {"done": 1}
    db = sqlite3.connect(path)
    columns = {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in ("items", "runs")}
    db.close()
    assert "run" in columns["items"]
    assert "pid" in columns["runs"]
    async with await Ledger.open_readonly(path) as reader:
        assert [r.pid for r in await reader.runs()] == [None, os.getpid()]


async def test_a_lone_record_is_committed_while_the_run_is_idle(tmp_path: Path) -> None:
    """An outcome recorded when nothing else follows reaches the disk on its own within the
    writer's delay, so a kill during an idle spell never finds a finished item in flight."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        ledger.record(item(1), Outcome(status="done"), 1)
        with anyio.fail_after(5):
            # The writer thread commits on its own; nothing on this side could set an event.
            while ledger.statistics().records_written < 1:
                await anyio.lowlevel.checkpoint()
        db = sqlite3.connect(path)
        try:
            assert db.execute("SELECT status FROM items").fetchall() == [("done",)]
        finally:
            db.close()


async def test_done_records_of_a_run_join_the_input_by_line(tmp_path: Path) -> None:
    """The success file's join: each input record that this run made done, once, in line
    order, with its action and id; not the rows done by another run, failed, in flight, or
    whose line the input does not hold."""
    from synap_bulk.sources import CsvRow

    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        r1 = await ledger.begin_run()
        ledger.record(item(1), Outcome(status="done", action="created", remote_id="u1"), 1)
        await ledger.end_run(r1, "completed", {})
        r2 = await ledger.begin_run()
        # Recorded out of input order, as workers finish.
        for n, action in ((7, "updated"), (3, "created"), (5, "created"), (2, "unchanged")):
            ledger.record(item(n), Outcome(status="done", action=action, remote_id=f"u{n}"), 1)
        ledger.record(item(4), Outcome(status="failed", error=ItemError(status="400")), 1)
        await ledger.mark_in_flight(item(6))
        ledger.record(item(9), Outcome(status="done", action="created", remote_id="u9"), 1)
        await ledger.flush()
        source = [CsvRow(line=n + 1, values={"email": f"row{n}"}) for n in range(1, 9)]
        got: list[tuple[int, dict[str, str], str, str]] = []

        def write(line: int, values: dict[str, str], action: str, rid: str) -> None:
            got.append((line, values, action, rid))

        assert await ledger.join_done_in_run(r2, source, write) == 4
    assert got == [
        (3, {"email": "row2"}, "unchanged", "u2"),
        (4, {"email": "row3"}, "created", "u3"),
        (6, {"email": "row5"}, "created", "u5"),
        (8, {"email": "row7"}, "updated", "u7"),
    ]  # item 9 (line 10) is past the input's end; item 1 was run 1's
