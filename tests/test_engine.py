"""The engine: resume, safety classes after a crash or an ambiguous failure, 401, validation
errors, retry of failed items, circuit breaker, graceful and hard stops, plan."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from synap_bulk import durable
from synap_bulk.clock import FakeClock
from synap_bulk.engine import Engine, EngineConfig
from synap_bulk.errors import (
    BadRequest,
    ConnectError,
    NotFound,
    RateLimited,
    RequestTimeout,
    RetryBudgetExhausted,
    ServerError,
    SourceError,
    Unauthorized,
)
from synap_bulk.items import InvalidRow, Item, ItemError, Outcome, PlanRow, Safety
from synap_bulk.jsonapi import ErrorObject, ErrorSource
from synap_bulk.ledger import Ledger
from synap_bulk.retry import RetryPolicy, backoff

CLIENT: Any = object()  # the engine only passes the client through to the task
COMMIT_THEN_500 = "commit-then-500"


def server_error() -> ServerError:
    return ServerError(method="POST", path="/v3/things", status=500, trace_id="t-1")


class FakeTask:
    """A task over keys k0..k{n-1} whose 'server' is a set of keys that took effect."""

    kind = "fake"

    def __init__(
        self,
        n: int = 10,
        *,
        safety: Safety = Safety.IDEMPOTENT,
        invalid: tuple[int, ...] = (),
        faults: dict[str, list[Any]] | None = None,
        ledger_path: Path | None = None,
    ) -> None:
        self.n = n
        self.safety = safety
        self.invalid = invalid
        self.faults = faults or {}
        self.server: set[str] = set()
        self.executed: list[str] = []
        self.reconciled: list[str] = []
        self.ledger_path = ledger_path
        self.seen_status: dict[str, str | None] = {}
        self.gate: anyio.Event | None = None
        self.started = 0
        self.started_enough = anyio.Event()
        self.wait_for = 0
        self.gone_action = ""
        self.remembered: str | None = None

    async def prepare(self, client: Any, memory: Any) -> None:
        # Remembers across runs how many times it was prepared: proves what memory it is given.
        self.remembered = await memory.get_cursor("fake:prepared")
        await memory.set_cursor("fake:prepared", str(int(self.remembered or 0) + 1))

    async def items(self) -> AsyncIterator[Item | InvalidRow]:
        for i in range(self.n):
            row = {"email": f"u{i}@x.org"}
            if i in self.invalid:
                err = ItemError(status="invalid", field="email", detail="not an email address")
                yield InvalidRow(key=f"k{i}", line=i + 2, row=row, error=err)
            else:
                yield Item(key=f"k{i}", line=i + 2, row=row)

    async def execute(self, item: Item, client: Any) -> Outcome:
        await durable.barrier()  # as SynapClient does before each request it sends
        self.executed.append(item.key)
        if self.ledger_path is not None:
            self.seen_status[item.key] = committed_status(self.ledger_path, item.key)
        self.started += 1
        if self.wait_for and self.started >= self.wait_for:
            self.started_enough.set()
        if self.gate is not None:
            await self.gate.wait()
        plan = self.faults.get(item.key)
        if plan:
            fault = plan.pop(0)
            if fault == COMMIT_THEN_500:
                self.server.add(item.key)
                raise server_error()
            if fault is not None:
                raise fault
        self.server.add(item.key)
        return Outcome(status="done", action="created", remote_id=f"r-{item.key}")

    async def reconcile(self, item: Item, client: Any) -> Outcome | None:
        self.reconciled.append(item.key)
        if item.key in self.server:
            return Outcome(status="done", action="found", remote_id=f"r-{item.key}")
        return None

    async def plan(self, item: Item, client: Any) -> PlanRow:
        return PlanRow(key=item.key, line=item.line, action="create")

    def column_for_pointer(self, pointer: str) -> str:
        return {"/data/attributes/emailAddress": "email"}.get(pointer, "")

    def absent_means_done(self, item: Item) -> str:
        return self.gone_action

    def summary(self) -> dict[str, Any]:
        return {}


def committed_status(path: Path, key: str) -> str | None:
    """What another connection sees in the ledger: proves a mark is committed."""
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT status FROM items WHERE key = ?", (key,)).fetchone()
    finally:
        db.close()
    return None if row is None else str(row[0])


async def open_ledger(path: Path, task_hash: str = "t") -> Ledger:
    return await Ledger.open(path, job_name="j", task_hash=task_hash, input_hash="i")


def tries(n: int) -> RetryPolicy:
    """The item-level retry policy of the engine, with ``n`` attempts of one item."""
    return RetryPolicy(max_attempts=n, base=0.5, cap=30.0)


def engine(task: FakeTask, ledger: Ledger | None, **config: Any) -> Engine:
    cfg = EngineConfig(**{"concurrency": 4, "item_retry": tries(3), **config})
    return Engine(task, CLIENT, ledger, config=cfg, clock=FakeClock())  # type: ignore[arg-type]


async def test_run_then_resume_skips_done_items(tmp_path: Path) -> None:
    """A completed run records every item; running again executes nothing and skips them all."""
    path = tmp_path / "l.sqlite"
    task = FakeTask(20, invalid=(3,))
    async with await open_ledger(path) as ledger:
        result = await engine(task, ledger).run()
        assert result.status == "completed"
        assert result.stats.done == 19
        assert result.stats.invalid == 1
        assert result.stats.total_seen == 20
        assert await ledger.counts() == {"done": 19, "invalid": 1}
        failed = await ledger.failed_items()
        assert [(f.line, f.row["email"], f.error.detail) for f in failed] == [
            (5, "u3@x.org", "not an email address")
        ]
    async with await open_ledger(path) as ledger:
        again = FakeTask(20, invalid=(3,))
        result = await engine(again, ledger).run()
        assert again.executed == []
        assert result.stats.skipped_done == 19
        assert result.status == "completed"


async def test_in_flight_reconcilable_item_is_reconciled_not_resent(tmp_path: Path) -> None:
    """After a crash, an in-flight RECONCILABLE item that took effect is found, not re-sent; one
    that did not is sent once."""
    path = tmp_path / "l.sqlite"
    task = FakeTask(4, safety=Safety.RECONCILABLE)
    task.server.add("k1")  # the crashed run's request reached the server
    async with await open_ledger(path) as ledger:
        await ledger.mark_in_flight(Item(key="k1", line=3))
        await ledger.mark_in_flight(Item(key="k2", line=4))
        result = await engine(task, ledger).run()
        states = await ledger.load_states()
    assert result.stats.reconciled == 1
    assert sorted(task.reconciled) == ["k1", "k2"]
    assert sorted(task.executed) == ["k0", "k2", "k3"]
    assert states["k1"].status == "done"
    assert states["k1"].action == "found"
    assert all(s.status == "done" for s in states.values())


async def test_in_flight_unsafe_item_is_in_doubt_and_not_executed(tmp_path: Path) -> None:
    """After a crash, an in-flight UNSAFE item is reported for review and never re-sent, on this
    run or the next."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        await ledger.mark_in_flight(Item(key="k2", line=4))
        task = FakeTask(4, safety=Safety.UNSAFE)
        result = await engine(task, ledger).run()
        assert "k2" not in task.executed
        assert result.stats.in_doubt == 1
        failed = await ledger.failed_items()
        assert [(f.key, f.status, f.error.status) for f in failed] == [
            ("k2", "in_doubt", "in-doubt")
        ]
        assert failed[0].row == {"email": "u2@x.org"}
        task2 = FakeTask(4, safety=Safety.UNSAFE)
        await engine(task2, ledger, retry_failed=True).run()
        assert task2.executed == []


async def test_marks_are_durable_before_sending_and_group_committed(tmp_path: Path) -> None:
    """A RECONCILABLE item's in-flight mark is committed before its first request (the
    durability barrier every request passes); many concurrent marks share few transactions."""
    path = tmp_path / "l.sqlite"
    task = FakeTask(200, safety=Safety.RECONCILABLE, ledger_path=path)
    async with await open_ledger(path) as ledger:
        before = ledger.statistics().transactions
        result = await engine(task, ledger, concurrency=50).run()
        stats = ledger.statistics()
    assert result.stats.done == 200
    assert set(task.seen_status.values()) == {"in_flight"}
    assert stats.records_written == 400  # one mark and one outcome per item
    assert stats.transactions - before < 100


async def test_ambiguous_failure_then_reconcile_finds_it(tmp_path: Path) -> None:
    """A create that committed but answered 500 is reconciled and never sent a second time."""
    task = FakeTask(3, safety=Safety.RECONCILABLE, faults={"k1": [COMMIT_THEN_500]})
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        result = await engine(task, ledger).run()
        states = await ledger.load_states()
    assert task.executed.count("k1") == 1
    assert task.reconciled == ["k1"]
    assert result.stats.reconciled == 1
    assert states["k1"].status == "done"
    assert states["k1"].remote_id == "r-k1"


async def test_ambiguous_failure_by_safety(tmp_path: Path) -> None:
    """A timeout is retried for IDEMPOTENT, reconciled-then-retried for RECONCILABLE, in doubt
    for UNSAFE; a connect error (never sent) or a 429 (refused) is retried even for UNSAFE."""
    timeout = RequestTimeout("timed out", method="POST", path="/v3/x")
    idem = FakeTask(2, faults={"k0": [timeout]})
    async with await open_ledger(tmp_path / "a.sqlite") as ledger:
        r = await engine(idem, ledger).run()
    assert idem.executed.count("k0") == 2
    assert r.stats.retried == 1
    assert r.stats.done == 2

    rec = FakeTask(2, safety=Safety.RECONCILABLE, faults={"k0": [timeout]})
    async with await open_ledger(tmp_path / "b.sqlite") as ledger:
        r = await engine(rec, ledger).run()
    assert rec.executed.count("k0") == 2
    assert rec.reconciled == ["k0"]
    assert r.stats.done == 2

    unsafe = FakeTask(2, safety=Safety.UNSAFE, faults={"k0": [timeout]})
    async with await open_ledger(tmp_path / "c.sqlite") as ledger:
        r = await engine(unsafe, ledger).run()
        failed = await ledger.failed_items()
    assert unsafe.executed.count("k0") == 1
    assert r.stats.in_doubt == 1
    assert failed[0].status == "in_doubt"
    assert "timed out" in failed[0].error.detail

    refused = ConnectError("connection refused", method="POST", path="/v3/x")
    throttled = RateLimited(method="POST", path="/v3/x", status=429, retry_after=1.0)
    unsafe2 = FakeTask(2, safety=Safety.UNSAFE, faults={"k0": [refused], "k1": [throttled]})
    async with await open_ledger(tmp_path / "d.sqlite") as ledger:
        r = await engine(unsafe2, ledger).run()
    assert unsafe2.executed.count("k0") == 2
    assert unsafe2.executed.count("k1") == 2
    assert r.stats.done == 2
    assert r.stats.in_doubt == 0


async def test_attempts_run_out_then_failed(tmp_path: Path) -> None:
    """An item that keeps failing with 5xx is failed after its item attempts, with backoff."""
    task = FakeTask(1, faults={"k0": [server_error()] * 5})
    clock = FakeClock()
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        cfg = EngineConfig(concurrency=1, item_retry=tries(3))
        r = await Engine(task, CLIENT, ledger, config=cfg, clock=clock).run()  # type: ignore[arg-type]
        failed = await ledger.failed_items()
    assert task.executed == ["k0"] * 3
    assert r.stats.failed == 1
    assert r.stats.retried == 2
    assert len(clock.slept) == 2
    assert failed[0].error.status == "500"
    assert failed[0].attempts == 3


async def test_backoff_between_item_attempts_is_retry_backoff(tmp_path: Path) -> None:
    """The waits between an item's attempts are retry.backoff of the item policy: full jitter
    under base * 2**(n-1), capped, and the same seeded random source gives the same waits."""
    policy = RetryPolicy(max_attempts=6, base=1.0, cap=3.0)
    task = FakeTask(1, faults={"k0": [server_error()] * 6})
    clock = FakeClock()
    eng = Engine(
        task, CLIENT, None, config=EngineConfig(concurrency=1, item_retry=policy), clock=clock
    )  # type: ignore[arg-type]
    eng._random.seed(7)
    await eng.run()
    expected_rng = random.Random(7)
    assert clock.slept == [backoff(n, policy, expected_rng) for n in range(1, 6)]
    assert all(w <= min(3.0, 2.0 ** (n - 1)) for n, w in enumerate(clock.slept, 1))


async def test_client_retry_budget_exhausted_is_retried_at_item_level_then_failed(
    tmp_path: Path,
) -> None:
    """When the client's retry budget runs out on an item, the engine tries the item again after
    its own backoff, up to the item policy's attempts, then fails it with the last server error;
    each exhaustion feeds the circuit breaker like the server fault behind it."""
    last = server_error()
    exhausted = RetryBudgetExhausted(last)
    task = FakeTask(1, safety=Safety.IDEMPOTENT, faults={"k0": [exhausted] * 3})
    clock = FakeClock()
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        eng = Engine(
            task,
            CLIENT,
            ledger,
            config=EngineConfig(concurrency=1, item_retry=tries(3)),
            clock=clock,
        )  # type: ignore[arg-type]
        r = await eng.run()
        failed = await ledger.failed_items()
    assert task.executed == ["k0"] * 3
    assert r.status == "completed" and r.stats.failed == 1 and r.stats.retried == 2
    assert len(clock.slept) == 2
    assert failed[0].error.status == "500" and failed[0].attempts == 3
    assert sum(eng._window) == 3


async def test_budget_exhaustion_on_most_items_trips_the_breaker(tmp_path: Path) -> None:
    """A server so sick that the client's retry budget runs out on every item stops the run
    (resumably) through the circuit breaker instead of grinding through every item."""
    exhausted = RetryBudgetExhausted(server_error())
    faults: dict[str, list[Any]] = {f"k{i}": [exhausted] * 5 for i in range(100)}
    task = FakeTask(100, faults=faults)
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        cfg = EngineConfig(
            concurrency=2, item_retry=tries(5), breaker_window=20, breaker_min_requests=10
        )
        r = await Engine(task, CLIENT, ledger, config=cfg, clock=FakeClock()).run()  # type: ignore[arg-type]
    assert r.status == "stopped" and r.reason.startswith("circuit breaker")
    assert len(task.executed) < 30


async def test_401_aborts_at_once(tmp_path: Path) -> None:
    """Unauthorized aborts the run: no further item starts and the item is not failed."""
    unauthorized = Unauthorized(method="POST", path="/v3/x", status=401)
    task = FakeTask(50, safety=Safety.RECONCILABLE, faults={"k5": [unauthorized]})
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        r = await engine(task, ledger, concurrency=1).run()
        states = await ledger.load_states()
    assert r.status == "aborted"
    assert r.reason.startswith("401 Unauthorized for POST /v3/x")
    assert task.executed[-1] == "k5"
    assert len(task.executed) == 6
    assert states["k5"].status == "in_flight"


async def test_validation_error_is_failed_with_field_mapped(tmp_path: Path) -> None:
    """A 400 fails the item with the server's code and text, its pointer mapped to the column."""
    err = BadRequest(
        method="POST",
        path="/v3/user-registrations",
        status=400,
        errors=[
            ErrorObject(
                status="400",
                code="taken",
                detail="email already registered",
                source=ErrorSource(pointer="/data/attributes/emailAddress"),
            )
        ],
    )
    task = FakeTask(3, safety=Safety.RECONCILABLE, faults={"k1": [err]})
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        r = await engine(task, ledger).run()
        failed = await ledger.failed_items()
    assert task.executed.count("k1") == 1
    assert r.stats.failed == 1
    assert r.status == "completed"
    assert failed[0].error == ItemError(
        status="400", code="taken", field="email", detail="email already registered"
    )
    assert failed[0].row == {"email": "u1@x.org"}


async def test_retry_failed(tmp_path: Path) -> None:
    """Failed items are skipped on resume unless retry_failed, which runs them again."""
    err = BadRequest(method="POST", path="/v3/x", status=400)
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        await engine(FakeTask(3, faults={"k1": [err]}), ledger).run()
        plain = FakeTask(3)
        r = await engine(plain, ledger).run()
        assert plain.executed == []
        assert r.stats.skipped_failed == 1
        retry = FakeTask(3)
        r = await engine(retry, ledger, retry_failed=True).run()
        assert retry.executed == ["k1"]
        assert await ledger.counts() == {"done": 3}


async def test_retry_failed_reconciles_an_unknown_outcome_first(tmp_path: Path) -> None:
    """A RECONCILABLE item that failed after 5xx is looked up before --retry-failed re-sends it."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        first = FakeTask(2, safety=Safety.RECONCILABLE, faults={"k1": [server_error()] * 3})
        await engine(first, ledger).run()
        assert (await ledger.load_states())["k1"].status == "failed"
        retry = FakeTask(2, safety=Safety.RECONCILABLE)
        retry.server.add("k1")  # one of those 500s had committed after all
        r = await engine(retry, ledger, retry_failed=True).run()
    assert retry.executed == []
    assert r.stats.reconciled == 1


async def test_circuit_breaker_stops_the_run(tmp_path: Path) -> None:
    """When most recent attempts fail on the server side, the run stops (resumable)."""
    task = FakeTask(100, faults={f"k{i}": [server_error()] for i in range(100)})
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        r = await engine(
            task,
            ledger,
            concurrency=1,
            item_retry=tries(1),
            breaker_window=20,
            breaker_min_requests=10,
            breaker_threshold=0.5,
        ).run()
    assert r.status == "stopped"
    assert r.reason == (
        "circuit breaker: 10 of the last 10 attempts failed with server or transport errors"
    )
    assert len(task.executed) == 10


class CountingTask(FakeTask):
    """Counts the items its reader has handed out (what the engine holds at most)."""

    def __init__(self, n: int, **kw: Any) -> None:
        super().__init__(n, **kw)
        self.read = 0

    async def items(self) -> AsyncIterator[Item | InvalidRow]:
        async for it in super().items():
            self.read += 1
            yield it


async def test_the_reader_runs_ahead_of_the_workers_by_the_queue_only(tmp_path: Path) -> None:
    """While every worker is busy, the producer has read no more items than the workers hold,
    the queue holds and the one it waits to put: an input of any size is never buffered whole
    (an import's memory stays flat). Every item is still run exactly once."""
    task = CountingTask(500, safety=Safety.RECONCILABLE)
    task.gate = anyio.Event()
    task.wait_for = 4
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        eng = engine(task, ledger, concurrency=4, queue_size=6)
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def go() -> None:
                results.append(await eng.run())

            tg.start_soon(go)
            await task.started_enough.wait()
            await anyio.wait_all_tasks_blocked()
            assert task.read == 4 + 6 + 1
            task.gate.set()
        assert results[0].status == "completed"
        assert sorted(task.executed) == sorted(f"k{i}" for i in range(500))
        assert await ledger.counts() == {"done": 500}


async def test_graceful_stop_lets_in_flight_items_finish(tmp_path: Path) -> None:
    """stop(graceful=True) starts no new item, lets in-flight ones finish and records them."""
    path = tmp_path / "l.sqlite"
    task = FakeTask(50, safety=Safety.RECONCILABLE)
    task.gate = anyio.Event()
    task.wait_for = 4
    clock = FakeClock(auto_advance=False)
    async with await open_ledger(path) as ledger:
        eng = Engine(task, CLIENT, ledger, config=EngineConfig(concurrency=4), clock=clock)  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def go() -> None:
                results.append(await eng.run())

            tg.start_soon(go)
            await task.started_enough.wait()
            assert eng.statistics().in_flight == 4
            eng.stop(graceful=True)
            task.gate.set()
        assert results[0].status == "stopped"
        assert results[0].reason == "stopped on request"
        assert len(task.executed) == 4
        assert await ledger.counts() == {"done": 4}


async def test_grace_expiry_and_hard_stop_leave_items_in_flight(tmp_path: Path) -> None:
    """When the grace period runs out, in-flight items are cancelled and stay in flight (to be
    reconciled on resume); nothing is half-recorded."""
    path = tmp_path / "l.sqlite"
    task = FakeTask(50, safety=Safety.RECONCILABLE)
    task.gate = anyio.Event()  # never set: the requests hang
    task.wait_for = 4
    clock = FakeClock(auto_advance=False)
    async with await open_ledger(path) as ledger:
        cfg = EngineConfig(concurrency=4, grace_seconds=10)
        eng = Engine(task, CLIENT, ledger, config=cfg, clock=clock)  # type: ignore[arg-type]
        results: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                results.append(await eng.run())

            tg.start_soon(go)
            await task.started_enough.wait()
            eng.stop(graceful=True)
            while clock.sleepers == 0:
                await anyio.lowlevel.checkpoint()
            clock.advance(10)
        assert results[0].status == "stopped"
        assert await ledger.counts() == {"in_flight": 4}

        resumed = FakeTask(50, safety=Safety.RECONCILABLE)
        r = await engine(resumed, ledger).run()
        assert sorted(resumed.reconciled) == ["k0", "k1", "k2", "k3"]
        assert r.status == "completed"
        assert await ledger.counts() == {"done": 50}

    hard = FakeTask(50, safety=Safety.RECONCILABLE)
    hard.gate = anyio.Event()
    hard.wait_for = 2
    async with await open_ledger(tmp_path / "h.sqlite") as ledger:
        eng = engine(hard, ledger, concurrency=2)
        results = []
        async with anyio.create_task_group() as tg:

            async def go2() -> None:
                results.append(await eng.run())

            tg.start_soon(go2)
            await hard.started_enough.wait()
            eng.stop(graceful=False)
        assert results[0].status == "stopped"
        assert await ledger.counts() == {"in_flight": 2}


async def test_errors_from_the_source_propagate_unwrapped(tmp_path: Path) -> None:
    """A source that fails mid-way raises its own error from run(), not an exception group."""

    class Broken(FakeTask):
        async def items(self) -> AsyncIterator[Item | InvalidRow]:
            yield Item(key="k0", line=2)
            raise SourceError("candidates.csv: not UTF-8 at byte 120")

    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        with pytest.raises(SourceError, match="not UTF-8"):
            await engine(Broken(1), ledger).run()


async def test_plan_in_input_order_with_invalid_rows() -> None:
    """plan() gives one row per item in input order, invalid rows included, with no ledger."""
    task = FakeTask(30, invalid=(0, 7))
    rows = await engine(task, None, concurrency=8).plan()
    assert [r.key for r in rows] == [f"k{i}" for i in range(30)]
    assert rows[7].action == "invalid"
    assert rows[7].detail == "email: not an email address"
    assert rows[8].action == "create"
    assert task.executed == []


async def test_breaker_stops_retries_and_resume_reconciles(tmp_path: Path) -> None:
    """Once the breaker opens, items waiting to retry give up without being failed; a resume
    reconciles them and sends each at most once more."""
    faults = {f"k{i}": [COMMIT_THEN_500 if i % 2 else server_error()] for i in range(40)}
    task = FakeTask(40, safety=Safety.RECONCILABLE, faults=faults)
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        r = await engine(
            task, ledger, concurrency=4, breaker_window=8, breaker_min_requests=8
        ).run()
        assert r.status == "stopped"
        assert r.reason.startswith("circuit breaker")
        counts = await ledger.counts()
        assert "failed" not in counts
        resumed = FakeTask(40, safety=Safety.RECONCILABLE)
        resumed.server = set(task.server)
        r2 = await engine(resumed, ledger).run()
        assert r2.status == "completed"
        assert await ledger.counts() == {"done": 40}
    assert not task.server & set(resumed.executed)  # nothing that took effect is re-sent


async def test_grace_expiry_also_ends_a_stuck_reader(tmp_path: Path) -> None:
    """A stop ends the run after the grace period even when the item reader is blocked."""

    class Stuck(FakeTask):
        async def items(self) -> AsyncIterator[Item | InvalidRow]:
            yield Item(key="k0", line=2)
            self.started_enough.set()
            await anyio.Event().wait()  # a source that never answers
            yield Item(key="k1", line=3)

    task = Stuck(2)
    clock = FakeClock(auto_advance=False)
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        eng = Engine(task, CLIENT, ledger, config=EngineConfig(grace_seconds=5), clock=clock)  # type: ignore[arg-type]
        results: list[Any] = []
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                results.append(await eng.run())

            tg.start_soon(go)
            await task.started_enough.wait()
            eng.stop()
            while clock.sleepers == 0:
                await anyio.lowlevel.checkpoint()
            clock.advance(5)
        assert results[0].status == "stopped"
        assert await ledger.counts() in ({"done": 1}, {})  # k0 finished or never started


async def test_last_lookup_before_failing_after_unknown_outcomes(tmp_path: Path) -> None:
    """When attempts run out after an unknown outcome, a last lookup finds a create that took
    effect, so the item is done rather than failed."""
    faults = {"k0": [server_error(), server_error(), COMMIT_THEN_500]}
    task = FakeTask(1, safety=Safety.RECONCILABLE, faults=faults)
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        r = await engine(task, ledger, item_retry=tries(3)).run()
        states = await ledger.load_states()
    assert task.executed == ["k0"] * 3
    assert task.reconciled == ["k0"] * 3
    assert r.stats.reconciled == 1
    assert states["k0"].status == "done"


async def test_stopping_forgets_an_unsafe_item_that_was_refused(tmp_path: Path) -> None:
    """An unsafe item refused with 429 while the run stops is forgotten, not left in flight, so
    the resume sends it instead of reporting it in doubt."""
    path = tmp_path / "l.sqlite"
    throttled = RateLimited(method="POST", path="/v3/x", status=429, retry_after=1.0)
    async with await open_ledger(path) as ledger:
        task = FakeTask(1, safety=Safety.UNSAFE, faults={"k0": [throttled]})
        eng = engine(task, ledger)

        class StopOnExecute(FakeTask):
            async def execute(self, item: Item, client: Any) -> Outcome:
                await durable.barrier()  # the mark is on disk: the request is about to leave
                eng.stop()
                return await task.execute(item, client)

        eng.task = StopOnExecute(1, safety=Safety.UNSAFE)
        r = await eng.run()
        assert r.status == "stopped"
        assert await ledger.counts() == {}
        resumed = FakeTask(1, safety=Safety.UNSAFE)
        r = await engine(resumed, ledger).run()
        assert resumed.executed == ["k0"]
        assert r.stats.in_doubt == 0
        assert await ledger.counts() == {"done": 1}


async def test_repeated_delete_that_finds_nothing_after_an_unknown_outcome_is_done(
    tmp_path: Path,
) -> None:
    """A DELETE whose first answer was lost (5xx) and whose retry gets 404 did its work: the
    item is done with the task's action and counted as reconciled, not failed."""
    gone = NotFound(method="DELETE", path="/v3/users/u1", status=404)
    task = FakeTask(2, faults={"k0": [server_error(), gone], "k1": [gone]})
    task.gone_action = "deleted"
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        r = await engine(task, ledger).run()
        states = await ledger.load_states()
    assert states["k0"].status == "done" and states["k0"].action == "deleted"
    # A 404 with no unknown attempt before it is a real failure: the target never existed.
    assert states["k1"].status == "failed"
    assert r.stats.reconciled == 1 and r.stats.failed == 1


async def test_client_retry_404_after_unknown_outcome_is_done(tmp_path: Path) -> None:
    """The client's own retry of a DELETE can be the one that gets 404: it marks the error as
    coming after an unknown outcome, and the engine records the delete as done."""
    gone = NotFound(method="DELETE", path="/v3/users/u1", status=404)
    gone.after_unknown = True
    task = FakeTask(1, faults={"k0": [gone]})
    task.gone_action = "deleted"
    async with await open_ledger(tmp_path / "l.sqlite") as ledger:
        r = await engine(task, ledger).run()
        states = await ledger.load_states()
    assert states["k0"].status == "done" and r.stats.reconciled == 1


async def test_prepare_remembers_in_the_ledger_across_runs(tmp_path: Path) -> None:
    """A run's prepare keeps its decisions in the job's ledger, and the next run reads them."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        first = FakeTask(2)
        await engine(first, ledger).run()
        assert first.remembered is None
        second = FakeTask(2)
        await engine(second, ledger).run()
        assert second.remembered == "1"
        assert await ledger.get_cursor("fake:prepared") == "2"


async def test_plan_reads_the_memory_it_is_given_but_writes_nothing(tmp_path: Path) -> None:
    """plan with memory=ledger sees what a run stored; its own writes are dropped."""
    path = tmp_path / "l.sqlite"
    async with await open_ledger(path) as ledger:
        await engine(FakeTask(2), ledger).run()
        task = FakeTask(2)
        cfg = EngineConfig(concurrency=2)
        eng = Engine(task, CLIENT, None, config=cfg, clock=FakeClock(), memory=ledger)
        rows = await eng.plan()
        assert len(rows) == 2 and task.remembered == "1"
        assert await ledger.get_cursor("fake:prepared") == "1"
        blank = FakeTask(2)
        await engine(blank, None).plan()
        assert blank.remembered is None  # no ledger, no memory: nothing remembered
