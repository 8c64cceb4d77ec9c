"""Properties that must hold for any input (hypothesis): the JSON:API decoding raises only our
error type on arbitrary bytes; backoff stays within its bounds; the ledger never moves an item
from done to anything else; after a kill at any step an unsafe operation is never re-sent; the
formula escape of result files reads back exactly."""

from __future__ import annotations

import random
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import anyio
import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from synap_bulk import durable
from synap_bulk.errors import ApiError, MalformedResponse
from synap_bulk.items import Item, Outcome, Safety
from synap_bulk.jsonapi import NewResource, decode_errors
from synap_bulk.ledger import Ledger
from synap_bulk.report import escape_formula
from synap_bulk.resources import User
from synap_bulk.retry import RetryPolicy, backoff
from synap_bulk.sinks import FORMULA_START
from synap_bulk.sources import unescape_formula

from .test_client import make, script
from .test_engine import COMMIT_THEN_500, FakeTask, engine
from .test_transport import RawResponse

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- the JSON:API decoder on arbitrary bytes ---------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
#: Bytes that often get past the JSON parser and reach the validation (documents almost right).
_almost = st.fixed_dictionaries(
    {},
    optional={
        "data": _json
        | st.lists(
            st.fixed_dictionaries(
                {}, optional={"type": _json, "id": _json, "attributes": _json, "links": _json}
            ),
            max_size=3,
        ),
        "links": _json | st.fixed_dictionaries({}, optional={"next": _json}),
        "meta": _json,
        "errors": _json,
    },
).map(msgspec.json.encode)
BODIES = st.binary(max_size=300) | _almost | _json.map(msgspec.json.encode)


async def _every_call(body: bytes, status: int) -> list[BaseException | None]:
    """What get, paginate and create raise on a ``status`` answer with ``body`` (None: fine)."""
    outcomes: list[BaseException | None] = []
    answer = RawResponse(status, {}, body)
    calls = [
        lambda c: c.get("users", "1", User),
        lambda c: _drain(c.paginate("users", None, User, page_size=10)),
        lambda c: c.create("user-registrations", NewResource(type="UserRegistration"), User),
    ]
    for call in calls:
        client, _, _ = make(script(answer), retry=RetryPolicy(max_attempts=2))
        async with client:
            try:
                await call(client)
            except Exception as exc:  # the property is about every exception
                outcomes.append(exc)
            else:
                outcomes.append(None)
    return outcomes


async def _drain(pages: Any) -> None:
    n = 0
    async for _ in pages:
        n += 1
        if n > 50:  # a page that keeps coming back is the loop check's job
            break


@FAST
@given(body=BODIES)
def test_a_2xx_with_any_body_decodes_or_raises_malformed_response(body: bytes) -> None:
    for exc in anyio.run(_every_call, body, 200):
        assert exc is None or isinstance(exc, MalformedResponse), repr(exc)


@FAST
@given(body=BODIES, status=st.sampled_from([400, 403, 404, 409, 422, 500, 502, 503]))
def test_an_error_with_any_body_is_a_typed_api_error(body: bytes, status: int) -> None:
    for exc in anyio.run(_every_call, body, status):
        assert isinstance(exc, ApiError) and exc.status == status, repr(exc)
        str(exc), repr(exc)  # rendering the message never fails either


@FAST
@given(body=BODIES)
def test_decode_errors_never_raises(body: bytes) -> None:
    errors = decode_errors(body)
    assert errors is None or isinstance(errors, list)


# -- backoff ------------------------------------------------------------------------------------


@FAST
@given(
    attempt=st.integers(min_value=-5, max_value=10_000),
    base=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=600.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_stays_within_zero_and_the_capped_ceiling(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    policy = RetryPolicy(base=base, cap=cap)
    wait = backoff(attempt, policy, random.Random(seed))
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 60))
    assert 0.0 <= wait <= ceiling <= cap


# -- the ledger: done is final -------------------------------------------------------------------

KEYS = ["k0", "k1"]
_record = st.tuples(
    st.just("record"),
    st.sampled_from(KEYS),
    st.sampled_from(["done", "failed", "in_doubt", "invalid", "in_flight", "superseded"]),
    st.sampled_from(["", "r-1", "r-2"]),
)
_op = st.one_of(
    _record,
    _record,
    _record,
    st.tuples(st.just("mark"), st.sampled_from(KEYS)),
    st.tuples(st.just("forget"), st.sampled_from(KEYS)),
    st.tuples(st.just("settle"), st.sampled_from(KEYS), st.booleans()),
    st.tuples(st.just("supersede"), st.sampled_from(KEYS)),
    st.tuples(st.just("reopen")),
)


async def _apply(path: Path, ops: list[tuple[Any, ...]]) -> None:
    ledger = await Ledger.open(path, job_name="j", task_hash="t", input_hash="i")
    done: dict[str, str] = {}  # key -> remote id when first seen done

    async def check() -> None:
        states = await ledger.load_states()
        for key, state in states.items():
            if state.status == "done":
                done.setdefault(key, state.remote_id)
        for key, remote_id in done.items():
            assert key in states, f"{key} was done and is gone"
            assert states[key].status == "done", (key, states[key])
            assert states[key].remote_id == remote_id, (key, states[key])

    try:
        for op in ops:
            kind = op[0]
            if kind == "record":
                _, key, status, remote_id = op
                item = Item(key=key, line=KEYS.index(key) + 2, row={"k": key})
                outcome: Outcome | str = status
                if status in ("done", "failed"):
                    outcome = Outcome(status=status, action="created", remote_id=remote_id)
                ledger.record(item, outcome)
            elif kind == "mark":
                await ledger.mark_in_flight(Item(key=op[1], line=KEYS.index(op[1]) + 2))
            elif kind == "forget":
                await ledger.forget(Item(key=op[1]))
            elif kind == "settle":
                await ledger.settle([op[1]], applied=op[2])
            elif kind == "supersede":
                await ledger.supersede([(KEYS.index(op[1]) + 2, "another-key")])
            else:
                await ledger.close()
                ledger = await Ledger.open(path, job_name="j", task_hash="t", input_hash="i")
            await check()
    finally:
        await ledger.close()


@settings(SLOW, max_examples=50)
@given(ops=st.lists(_op, min_size=1, max_size=20))
@example(ops=[("record", "k0", "done", "r-1"), ("record", "k0", "failed", "")])
@example(ops=[("record", "k0", "done", "r-1"), ("mark", "k0"), ("forget", "k0")])
def test_the_ledger_never_moves_an_item_from_done(tmp_path: Path, ops: list[Any]) -> None:
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        anyio.run(_apply, case / "ledger.sqlite", ops)
    finally:
        shutil.rmtree(case, ignore_errors=True)


# -- a kill at any step never re-sends an unsafe operation ----------------------------------------


class KilledAt(FakeTask):
    """A FakeTask that, as its ``kill_at``-th request goes out, copies what the ledger has made
    durable so far: the file a SIGKILL at that moment would leave behind."""

    def __init__(self, n: int, kill_at: int, ledger: Path, snapshot: Path, **kw: Any) -> None:
        super().__init__(n, safety=Safety.UNSAFE, **kw)
        self.kill_at = kill_at
        self.ledger_file = ledger
        self.snapshot = snapshot
        self.sent_before_kill: list[str] = []

    async def execute(self, item: Item, client: Any) -> Outcome:
        await durable.barrier()  # the request goes out here, as in SynapClient.request
        if len(self.executed) < self.kill_at:
            self.sent_before_kill.append(item.key)
            if len(self.sent_before_kill) == self.kill_at:
                _snapshot(self.ledger_file, self.snapshot)
        return await super().execute(item, client)


def _snapshot(source: Path, target: Path) -> None:
    """A consistent copy of the committed state (SQLite's online backup)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


async def _kill_and_resume(
    tmp: Path, n: int, kill_at: int, concurrency: int, faulty: set[int]
) -> None:
    live, dead = tmp / "live.sqlite", tmp / "dead.sqlite"
    faults = {f"k{i}": [COMMIT_THEN_500] for i in faulty}
    first = KilledAt(n, kill_at, live, dead, faults=faults)
    async with await Ledger.open(live, job_name="j", task_hash="t", input_hash="i") as ledger:
        await engine(first, ledger, concurrency=concurrency).run()
    assert dead.exists()
    sent = set(first.sent_before_kill)
    # The process died there: reopen what it left and resume, more than once.
    for _ in range(2):
        again = FakeTask(n, safety=Safety.UNSAFE)
        again.server = set(sent)
        async with await Ledger.open(dead, job_name="j", task_hash="t", input_hash="i") as ledger:
            await engine(again, ledger, concurrency=concurrency).run()
            states = await ledger.load_states()
        assert not sent & set(again.executed), (sent, again.executed)
        assert len(again.executed) == len(set(again.executed))
        for key in sent:  # each sent one is done, or waits for a person to settle it
            assert states[key].status in ("done", "in_doubt"), (key, states[key])
        sent |= set(again.executed)
    assert len(sent) == n or any(s.status == "in_doubt" for s in states.values())


@SLOW
@given(
    n=st.integers(min_value=1, max_value=12),
    data=st.data(),
    concurrency=st.integers(min_value=1, max_value=6),
)
def test_after_a_kill_at_any_step_an_unsafe_operation_is_never_re_sent(
    tmp_path: Path, n: int, data: st.DataObject, concurrency: int
) -> None:
    kill_at = data.draw(st.integers(min_value=1, max_value=n), label="kill_at")
    faulty = data.draw(st.sets(st.integers(min_value=0, max_value=n - 1)), label="faulty")
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        anyio.run(_kill_and_resume, case, n, kill_at, concurrency, faulty)
    finally:
        shutil.rmtree(case, ignore_errors=True)


# -- the formula escape of result files -----------------------------------------------------------


@FAST
@given(value=st.text(alphabet=st.sampled_from(["'", "=", "+", "-", "@", "\t", "\r", "a", " "])))
def test_the_formula_escape_reads_back_exactly_and_never_starts_a_formula(value: str) -> None:
    escaped = escape_formula(value)
    assert unescape_formula(escaped) == value
    assert not escaped or escaped[0] not in FORMULA_START
