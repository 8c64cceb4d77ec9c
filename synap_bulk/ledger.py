"""The ledger: one SQLite file per job recording every item's state, cursors and runs.

SQLite runs in WAL mode with ``synchronous=NORMAL`` (a commit survives a killed process), on one
connection owned by one dedicated thread so the event loop never blocks. Writes are group
committed: :meth:`Ledger.record` only queues, and the writer thread commits whatever is queued
in one transaction when a caller waits (:meth:`Ledger.mark_in_flight`, :meth:`Ledger.set_cursor`,
:meth:`Ledger.flush`), when enough records are queued, or every ~50 ms. Concurrent waiters share
one transaction, so durability costs one commit per batch, not per item.

The ledger never sees the token: it stores keys, input rows, statuses and the server's errors.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec
from msgspec import Struct

from .errors import CheckpointError
from .items import InvalidRow, Item, ItemError, Outcome

if TYPE_CHECKING:
    from .sources import CsvRow

__all__ = [
    "FailedItem",
    "ItemState",
    "ItemStatus",
    "Ledger",
    "LedgerStats",
    "RunInfo",
]

ItemStatus = Literal["in_flight", "done", "failed", "in_doubt", "invalid", "superseded"]
_STATUSES = ("in_flight", "done", "failed", "in_doubt", "invalid", "superseded")
#: Statuses whose input row is kept, so the failures file can be rebuilt from the ledger alone.
_KEEP_ROW = frozenset({"failed", "invalid", "in_doubt"})

_T = TypeVar("_T")


class CorruptLedger(CheckpointError):
    """The ledger file exists but is not a usable SQLite ledger (``--restart`` sets it aside)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    line INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    action TEXT NOT NULL DEFAULT '',
    remote_id TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    row TEXT,
    updated_at REAL NOT NULL,  -- julian day, UTC: datetime(updated_at) reads it
    run INTEGER NOT NULL DEFAULT 0  -- the run that last recorded the item
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    status TEXT NOT NULL,
    summary TEXT,
    pid INTEGER  -- the process that ran it: gone while 'running' means interrupted
);
-- What each write of a run needs to be reversed (synap_bulk.images), recorded before it is
-- sent; added since the first release (IF NOT EXISTS creates it in an older ledger too).
CREATE TABLE IF NOT EXISTS before_images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run INTEGER NOT NULL,
    item_key TEXT NOT NULL,
    ref TEXT NOT NULL,  -- the written thing, e.g. users/42; the first image of a run wins
    image TEXT NOT NULL,  -- JSON of images.BeforeImage
    UNIQUE (run, ref)
);
"""

#: Columns added since the first release, added to an older ledger when it is opened.
_MIGRATIONS = (
    ("items", "run", "ALTER TABLE items ADD COLUMN run INTEGER NOT NULL DEFAULT 0"),
    ("runs", "pid", "ALTER TABLE runs ADD COLUMN pid INTEGER"),
)

_UPSERT = """
INSERT INTO items (key, line, status, action, remote_id, attempts, error, row, run, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, julianday('now'))
ON CONFLICT(key) DO UPDATE SET
    line = excluded.line, status = excluded.status,
    action = CASE WHEN excluded.action = '' THEN items.action ELSE excluded.action END,
    remote_id = CASE WHEN excluded.remote_id = '' THEN items.remote_id
                     ELSE excluded.remote_id END,
    attempts = excluded.attempts, error = excluded.error, row = excluded.row,
    run = excluded.run, updated_at = excluded.updated_at
WHERE items.status != 'done'
"""
# Done is final: no later record (a late duplicate outcome, an in-flight mark) moves a done item
# to anything else; only ``--restart`` (a fresh ledger) forgets it.


class ItemState(Struct, frozen=True, kw_only=True):
    """What the ledger knows of one item when a run starts."""

    status: str
    attempts: int = 0
    remote_id: str = ""
    action: str = ""
    #: The HTTP status (or "transport", "invalid", ...) of the last error, '' when none.
    error_status: str = ""
    #: The run that last recorded the item (0 in a ledger older than run numbers).
    run: int = 0


class FailedItem(Struct, frozen=True, kw_only=True):
    """A failed, invalid or in-doubt item with its input row: one line of the failures file."""

    key: str
    line: int
    status: str
    row: dict[str, str]
    error: ItemError
    attempts: int = 0


class RunInfo(Struct, frozen=True, kw_only=True):
    """One ``run`` of the job, as recorded."""

    id: int
    started_at: str
    ended_at: str | None
    status: str
    summary: dict[str, Any] | None = None
    #: The process that ran it (None in a ledger older than this field).
    pid: int | None = None


class LedgerStats(Struct, frozen=True, kw_only=True):
    """Counters for tests and benchmarks: group commit shows as records >> transactions."""

    transactions: int
    records_written: int
    pending: int


_encode = msgspec.json.Encoder().encode
_error_decoder = msgspec.json.Decoder(ItemError)
_row_decoder = msgspec.json.Decoder(dict[str, str])
_summary_decoder = msgspec.json.Decoder(dict[str, Any])


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_Record = tuple[str, int, str, str, str, int, str | None, str | None, int]
_Call = tuple[Callable[[sqlite3.Connection], Any] | None, "asyncio.Future[Any] | None"]


class Ledger:
    """The job's SQLite ledger. Open with ``await Ledger.open(...)``; use as ``async with``."""

    #: Commit without waiting when this many records are queued.
    batch_size = 512
    #: Longest a queued record waits for its commit when nobody is waiting on it.
    max_delay = 0.05

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self._loop = loop
        self._cond = threading.Condition()
        self._records: list[_Record] = []  # item rows to upsert, in order
        self._calls: list[_Call] = []  # reads, cursor writes and waiters, after the records
        self._urgent = False  # somebody awaits: commit now rather than in max_delay
        self._kick_scheduled = False
        self._lock_fd: int | None = None
        self._closing = False
        self._closed = False
        self._failure: BaseException | None = None
        self._transactions = 0
        self._records_written = 0
        #: The run in progress (set by begin_run); every record carries it.
        self.run_id = 0
        #: Where ``open(restart=True)`` moved an unusable ledger file it found, else None.
        self.set_aside: Path | None = None
        self._thread = threading.Thread(
            target=self._writer, name=f"ledger:{path.name}", daemon=True
        )

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        job_name: str,
        task_hash: str,
        input_hash: str,
        restart: bool = False,
        check_input: bool = True,
    ) -> Ledger:
        """Open or create the ledger; refuse one whose task or input changed unless restarting.

        ``check_input=False`` accepts another input (a file of fixed rows fed back): items are
        matched by key, and the ledger keeps the hash of the job's own input.
        """
        path = Path(path)
        set_aside: Path | None = None
        while True:
            ledger = cls(path, asyncio.get_running_loop())
            ledger._lock_fd = _lock(ledger.path)
            ledger._thread.start()
            try:
                await ledger._call(
                    lambda db: _init_meta(
                        db, path, job_name, task_hash, input_hash, restart, check_input
                    )
                )
            except CorruptLedger:
                await ledger.close()
                if not restart or set_aside is not None:
                    raise
                set_aside = _set_aside(path)  # --restart: keep the bad file, start afresh
                continue
            except BaseException:
                await ledger.close()
                raise
            ledger.set_aside = set_aside
            return ledger

    @classmethod
    async def open_readonly(cls, path: str | Path) -> Ledger:
        """Open an existing ledger to read it (``status``), without checking its job."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: no ledger")
        ledger = cls(path, asyncio.get_running_loop())
        ledger._thread.start()
        try:
            await ledger._call(lambda db: None)
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- items -----------------------------------------------------------------------------

    def record(
        self,
        item: Item | InvalidRow,
        outcome: Outcome | str,
        attempts: int = 0,
        error: ItemError | None = None,
    ) -> None:
        """Queue an item's new state (committed with the next batch); never blocks."""
        if isinstance(outcome, Outcome):
            status: str = outcome.status
            action = outcome.action
            remote_id = outcome.remote_id
            error = outcome.error if outcome.error is not None else error
        else:
            status, action, remote_id = outcome, "", ""
        err = None if error is None else _encode(error).decode()
        row = _encode(dict(item.row)).decode() if status in _KEEP_ROW else None
        self._add_record(
            (item.key, item.line, status, action, remote_id, attempts, err, row, self.run_id)
        )

    async def mark_in_flight(self, item: Item, attempts: int = 0) -> None:
        """Record the item as in flight and return once that is committed (group commit)."""
        await self.queue_in_flight(item, attempts)

    def queue_in_flight(self, item: Item, attempts: int = 0) -> asyncio.Future[Any]:
        """Queue the item's in-flight mark; the future resolves once it is committed (the
        engine holds it as the item's durability barrier, :mod:`synap_bulk.durable`)."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        rec = (item.key, item.line, "in_flight", "", "", attempts, None, None, self.run_id)
        self._add_record(rec, fut)
        return fut

    async def forget(self, item: Item) -> None:
        """Drop an item's row: its in-flight mark was for a request that certainly had no
        effect (never sent, or refused), so a resume must treat it as never started."""
        key = item.key

        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM items WHERE key = ? AND status != 'done'", (key,))

        await self._call(write)

    async def transact(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` on the ledger's connection in the next transaction; committed when this
        returns (for the ledger's companions, e.g. :mod:`synap_bulk.images`)."""
        return await self._call(fn)

    def defer(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``fn`` in a coming transaction (within ``max_delay``) without waiting for it:
        for writes nothing is sent after (a created resource's id beside its image). Queued
        in order with everything else; an error in ``fn`` other than SQLite's is dropped."""
        self._check_open()
        with self._cond:
            self._calls.append((fn, None))
            if len(self._calls) == 1 and not self._records:
                self._cond.notify()  # as for a first record: committed within max_delay

    async def flush(self) -> None:
        """Return once everything queued so far is committed."""
        await self._call(lambda db: None)

    async def load_states(self) -> dict[str, ItemState]:
        """Every item's state by key (the engine's resume map)."""

        def read(db: sqlite3.Connection) -> dict[str, ItemState]:
            out: dict[str, ItemState] = {}
            cur = db.execute(
                "SELECT key, status, attempts, remote_id, action, "
                "CASE WHEN error IS NULL THEN '' ELSE json_extract(error, '$.status') END, run "
                "FROM items"
            )
            for key, status, attempts, remote_id, action, err, run in cur:
                out[key] = ItemState(
                    status=status,
                    attempts=attempts,
                    remote_id=remote_id,
                    action=action,
                    error_status=err or "",
                    run=run,
                )
            return out

        return await self._call(read)

    async def done_in_run(self, run: int, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """``key -> (action, remote_id)`` of those of ``keys`` that run ``run`` made done (the
        success file reads a batch of items at a time; keep ``keys`` to a few hundred)."""
        if not keys:
            return {}

        def read(db: sqlite3.Connection) -> dict[str, tuple[str, str]]:
            marks = ",".join("?" * len(keys))
            cur = db.execute(
                "SELECT key, action, remote_id FROM items "
                f"WHERE run = ? AND status = 'done' AND key IN ({marks})",
                (run, *keys),
            )
            return {key: (action, remote_id) for key, action, remote_id in cur}

        return await self._call(read)

    async def join_done_in_run(
        self,
        run: int,
        rows: Iterable[CsvRow],
        write: Callable[[int, dict[str, str], str, str], None],
    ) -> int:
        """For each input record (in line order) that run ``run`` made done, in line order:
        ``write(line, values, action, remote_id)``; returns how many. The done records come
        sorted from one query, merged with one pass over ``rows`` on the ledger's thread, so
        memory stays flat however many rows (the success file of an input whose items are its
        records, one per line)."""

        def join(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "SELECT line, action, remote_id FROM items "
                "WHERE run = ? AND status = 'done' ORDER BY line",
                (run,),
            )
            records = iter(rows)
            at: CsvRow | None = None
            written, last = 0, -1
            for line, action, remote_id in cur:
                while at is None or at.line < line:
                    at = next(records, None)
                    if at is None:
                        return written
                if at.line == line and line != last:
                    write(line, at.values, action, remote_id)
                    written += 1
                    last = line
            return written

        return await self._call(join)

    async def failed_items(self) -> list[FailedItem]:
        """Failed, invalid and in-doubt items in input-line order, with rows and errors."""

        def read(db: sqlite3.Connection) -> list[FailedItem]:
            cur = db.execute(
                "SELECT key, line, status, row, error, attempts FROM items "
                "WHERE status IN ('failed', 'invalid', 'in_doubt') ORDER BY line, key"
            )
            return [
                FailedItem(
                    key=key,
                    line=line,
                    status=status,
                    row=_row_decoder.decode(row) if row else {},
                    error=_error_decoder.decode(error) if error else ItemError(),
                    attempts=attempts,
                )
                for key, line, status, row, error, attempts in cur
            ]

        return await self._call(read)

    async def counts(self, run: int | None = None) -> dict[str, int]:
        """How many items are in each status (of those ``run`` recorded last, when given)."""

        def read(db: sqlite3.Connection) -> dict[str, int]:
            if run is None:
                cur = db.execute("SELECT status, COUNT(*) FROM items GROUP BY status")
            else:
                cur = db.execute(
                    "SELECT status, COUNT(*) FROM items WHERE run = ? GROUP BY status", (run,)
                )
            return {status: n for status, n in cur}

        return await self._call(read)

    async def action_counts(self, run: int | None = None) -> dict[str, int]:
        """How many done items took each action (created, updated, ...), optionally of one run."""

        def read(db: sqlite3.Connection) -> dict[str, int]:
            sql = "SELECT action, COUNT(*) FROM items WHERE status = 'done' AND action != ''"
            args: tuple[int, ...] = ()
            if run is not None:
                sql += " AND run = ?"
                args = (run,)
            cur = db.execute(sql + " GROUP BY action ORDER BY action", args)
            return {action: n for action, n in cur}

        return await self._call(read)

    async def settle(self, keys: list[str], *, applied: bool) -> dict[str, str]:
        """Settle in-doubt items a person has checked on the server.

        ``applied``: the request took effect, so the item is done (action ``settled``) and is
        never sent again. Otherwise it did not: the item is forgotten, so the next run sends it.
        Returns, for each key, ``settled`` or why not (``not in doubt: <status>``, ``unknown``).
        """
        run = self.run_id

        def write(db: sqlite3.Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            for key in keys:
                row = db.execute("SELECT status FROM items WHERE key = ?", (key,)).fetchone()
                if row is None:
                    out[key] = "unknown"
                elif row[0] != "in_doubt":
                    out[key] = f"not in doubt: {row[0]}"
                elif applied:
                    db.execute(
                        "UPDATE items SET status = 'done', action = 'settled', error = NULL, "
                        "row = NULL, run = ?, updated_at = julianday('now') WHERE key = ?",
                        (run, key),
                    )
                    out[key] = "settled"
                else:
                    db.execute("DELETE FROM items WHERE key = ?", (key,))
                    out[key] = "settled"
            return out

        return await self._call(write)

    async def supersede(self, fixed: list[tuple[int, str]]) -> int:
        """Rows fed back fixed, as (original line, key): the not-done records of those lines
        under another key (an invalid row keyed by its line, a row whose fix changed its key)
        become ``superseded``: no longer rows to fix, and skipped when the original input runs
        again. Done records are never touched. Returns how many records changed."""

        def write(db: sqlite3.Connection) -> int:
            changed = 0
            for line, key in fixed:
                cur = db.execute(
                    "UPDATE items SET status = 'superseded', error = NULL, row = NULL, "
                    "run = ?, updated_at = julianday('now') "
                    "WHERE line = ? AND key != ? AND status NOT IN ('done', 'superseded')",
                    (self.run_id, line, key),
                )
                changed += cur.rowcount
            return changed

        return await self._call(write)

    async def get_meta(self, name: str) -> str | None:
        """A value the ledger keeps about its job (e.g. the portal it belongs to)."""

        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._call(read)

    async def set_meta(self, name: str, value: str) -> None:
        """Keep a value about the job; committed when this returns."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                (name, value),
            )

        await self._call(write)

    # -- cursors ---------------------------------------------------------------------------

    async def set_cursor(self, name: str, value: str) -> None:
        """Store a named cursor; committed when this returns."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO cursors (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await self._call(write)

    async def get_cursor(self, name: str) -> str | None:
        """A named cursor's value, None when never set."""

        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._call(read)

    # -- runs ------------------------------------------------------------------------------

    async def begin_run(self) -> int:
        """Record a run as started by this process; returns its id, which every item record of
        the run carries from now on."""
        started = _now_iso()
        pid = os.getpid()

        def write(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO runs (started_at, status, pid) VALUES (?, 'running', ?)",
                (started, pid),
            )
            return int(cur.lastrowid or 0)

        self.run_id = await self._call(write)
        return self.run_id

    async def end_run(self, run_id: int, status: str, summary: Mapping[str, Any]) -> None:
        """Record how a run ended (completed | stopped | aborted) and its summary."""
        ended = _now_iso()
        blob = _encode(summary).decode()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE runs SET ended_at = ?, status = ?, summary = ? WHERE id = ?",
                (ended, status, blob, run_id),
            )

        await self._call(write)

    async def last_completed_run_started_at(self) -> str | None:
        """When the last completed run started (ISO 8601, UTC): ``since: last-run`` reads it."""

        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT started_at FROM runs WHERE status = 'completed' ORDER BY id DESC LIMIT 1"
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._call(read)

    async def runs(self) -> list[RunInfo]:
        """Every recorded run, oldest first."""

        def read(db: sqlite3.Connection) -> list[RunInfo]:
            cur = db.execute(
                "SELECT id, started_at, ended_at, status, summary, pid FROM runs ORDER BY id"
            )
            return [
                RunInfo(
                    id=rid,
                    started_at=started,
                    ended_at=ended,
                    status=status,
                    summary=_summary_decoder.decode(summary) if summary else None,
                    pid=pid,
                )
                for rid, started, ended, status, summary, pid in cur
            ]

        return await self._call(read)

    # -- lifecycle -------------------------------------------------------------------------

    def statistics(self) -> LedgerStats:
        """Transactions committed, records written, records still queued."""
        return LedgerStats(
            transactions=self._transactions,
            records_written=self._records_written,
            pending=len(self._records),
        )

    async def close(self) -> None:
        """Commit what is queued, then close the database and stop the writer thread."""
        if self._closed:
            return
        if self._thread.is_alive():
            fut: asyncio.Future[Any] = self._loop.create_future()
            with self._cond:
                self._calls.append((None, fut))
                self._urgent = True
                self._closing = True
                self._cond.notify()
            try:
                await asyncio.shield(fut)
            except CheckpointError:
                pass
        self._closed = True
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    # -- the writer thread -----------------------------------------------------------------

    def _check_open(self) -> None:
        if isinstance(self._failure, CorruptLedger):
            raise self._failure
        if self._failure is not None:
            raise CheckpointError(f"{self.path}: the ledger failed: {self._failure}")
        if self._closing or self._closed:
            raise CheckpointError(f"{self.path}: the ledger is closed")

    def _add_record(self, rec: _Record, fut: asyncio.Future[Any] | None = None) -> None:
        self._check_open()
        with self._cond:
            self._records.append(rec)
            if fut is not None:
                self._calls.append((None, fut))
                self._schedule_kick()
            elif len(self._records) >= self.batch_size:
                self._urgent = True
                self._cond.notify()
            elif len(self._records) == 1:
                # The writer may be asleep with nothing queued: wake it so that this record is
                # committed within max_delay even if nothing else is ever written (an item that
                # finished must not stay "in flight" on disk while the run is idle).
                self._cond.notify()

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        self._check_open()
        fut: asyncio.Future[Any] = self._loop.create_future()
        with self._cond:
            self._calls.append((fn, fut))
            self._schedule_kick()
        result: _T = await fut
        return result

    def _schedule_kick(self) -> None:
        # Wake the writer once per event-loop iteration, not per waiter: everything queued in
        # this iteration (e.g. every worker's in-flight mark) shares one transaction.
        if not self._kick_scheduled:
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)

    def _kick(self) -> None:
        with self._cond:
            self._kick_scheduled = False
            self._urgent = True
            self._cond.notify()

    def _writer(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            db = _connect(self.path)
        except CheckpointError as exc:
            self._failure = exc
        except Exception as exc:
            self._failure = CheckpointError(f"{self.path}: cannot open the ledger: {exc}")
        while True:
            with self._cond:
                started = time.monotonic()
                while not self._urgent:
                    if self._records or self._calls:
                        left = self.max_delay - (time.monotonic() - started)
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    else:
                        self._cond.wait()
                        started = time.monotonic()
                records, self._records = self._records, []
                calls, self._calls = self._calls, []
                self._urgent = False
                closing = self._closing
            self._commit(db, records, calls)
            if closing:
                if db is not None:
                    db.close()
                return

    def _commit(
        self, db: sqlite3.Connection | None, records: list[_Record], calls: list[_Call]
    ) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        failure: BaseException | None = self._failure
        if db is not None and failure is None and (records or calls):
            try:
                db.execute("BEGIN IMMEDIATE")
                if records:
                    db.executemany(_UPSERT, records)
                for fn, fut in calls:
                    value: Any = None
                    error: BaseException | None = None
                    if fn is not None:
                        try:
                            value = fn(db)
                        except sqlite3.Error:
                            raise
                        except Exception as exc:  # e.g. a refused open: for its caller only
                            error = exc
                    if fut is not None:
                        results.append((fut, value, error))
                db.execute("COMMIT")
                self._transactions += 1
                self._records_written += len(records)
            except sqlite3.Error as exc:
                _rollback(db)
                failure = CheckpointError(f"{self.path}: {exc}")
                self._failure = failure
        if failure is not None:
            results = [(fut, None, failure) for _, fut in calls if fut is not None]
        if results:
            self._resolve(results)

    def _resolve(
        self, results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    ) -> None:
        def settle() -> None:
            for fut, value, exc in results:
                if fut.done():
                    continue
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(value)

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is gone: nobody is waiting any more
            pass


def _lock(path: Path) -> int | None:
    """Hold an exclusive lock for this run: two runs of one job must never interleave."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no run lock
        return None
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot create the run lock: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CheckpointError(
            f"{path}: another run of this job is using the ledger; let it finish or stop it first"
        ) from None
    return fd


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=True)
        db.execute("PRAGMA busy_timeout = 5000")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise CheckpointError(f"{path}: cannot use WAL mode (journal_mode is {mode})")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)
        for table, column, alter in _MIGRATIONS:
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                db.execute(alter)
    except sqlite3.Error as exc:
        raise CorruptLedger(
            f"{path}: not a usable ledger: {exc}; run with --restart to set it aside (it is "
            "kept beside, as .corrupt-<time>) and start the job afresh"
        ) from None
    return db


def _set_aside(path: Path) -> Path:
    """Move an unusable ledger (and its WAL files) to ``<name>.corrupt-<time>``; keep it."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            os.replace(part, target.with_name(target.name + suffix))
    return target


def _untouched(db: sqlite3.Connection) -> bool:
    """No item and no cursor recorded: a ledger whose job has done nothing yet."""
    items = db.execute("SELECT 1 FROM items LIMIT 1").fetchone()
    cursors = db.execute("SELECT 1 FROM cursors LIMIT 1").fetchone()
    return items is None and cursors is None


def _init_meta(
    db: sqlite3.Connection,
    path: Path,
    job_name: str,
    task_hash: str,
    input_hash: str,
    restart: bool,
    check_input: bool = True,
) -> None:
    meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
    if meta and not restart and _untouched(db):
        # Nothing recorded yet (e.g. the first run stopped at an error in the job file, which
        # the person then fixed): there is no progress to protect, so the job starts afresh.
        restart = True
    if meta and not restart:
        changed = []
        if meta.get("task_hash") != task_hash:
            changed.append("the job's task section")
        if check_input and meta.get("input_hash", "") != input_hash:
            changed.append("the input file")
        if changed:
            raise CheckpointError(
                f"{path}: {' and '.join(changed)} changed since this ledger was started "
                f"({meta.get('created', '?')}); run with --restart to start the job afresh "
                "(this forgets its progress), or restore the previous version to resume"
            )
    if restart:
        db.execute("DELETE FROM items")
        db.execute("DELETE FROM cursors")
    if restart or not meta:
        values = {
            "job_name": job_name,
            "task_hash": task_hash,
            "input_hash": input_hash,
            "created": _now_iso(),
        }
        db.executemany(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            list(values.items()),
        )
    elif meta.get("job_name") != job_name:
        db.execute("UPDATE meta SET v = ? WHERE k = 'job_name'", (job_name,))
