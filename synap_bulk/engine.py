"""Runs a task: skip what is done, run the rest concurrently, record outcomes, stop cleanly.

One anyio task group per run: a producer streams the task's items through a bounded memory
stream (backpressure) to ``concurrency`` workers. The ledger decides what to skip; each item's
:class:`~synap_bulk.items.Safety` decides what may be repeated (README, "What it promises", 1):

- IDEMPOTENT items are simply run again after a crash or an ambiguous failure.
- RECONCILABLE items are marked in flight (durably) before sending; after a crash or an
  ambiguous failure (timeout, dropped connection, 5xx) the task's ``reconcile`` looks the result
  up before anything is re-sent.
- UNSAFE items are marked in flight before sending; one found in flight, or whose attempt ended
  ambiguously, is recorded ``in_doubt`` for a person to review and is never re-sent.

A 429 or a connection that never opened certainly had no effect, so it is retried whatever the
safety. A 401 aborts the run at once; other 4xx fail the item with the server's error kept; a
circuit breaker stops the run (resumably) when too many recent attempts failed on the server
side (5xx, transport, malformed answers; not 429s, which the client's rate control handles).
The engine itself never touches the disk or the network: the ledger and the task do.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import ObjectReceiveStream
from msgspec import Struct

from . import durable
from .clock import Clock, SystemClock
from .errors import (
    ApiError,
    MalformedResponse,
    RateLimited,
    RetryBudgetExhausted,
    ServerError,
    TransportError,
    Unauthorized,
)
from .images import book_for
from .items import SUPERSEDED, InvalidRow, Item, ItemError, Outcome, PlanRow, Safety
from .retry import RetryPolicy, backoff

if TYPE_CHECKING:
    from .client import SynapClient
    from .ledger import ItemState, Ledger
    from .tasks.base import CursorStore, ItemTask

__all__ = ["Engine", "EngineConfig", "EngineStats", "RunResult"]

#: Failures worth another attempt. Among them only a 429 (the server refused before acting) or
#: a transport error that never left (``never_sent``) certainly did not take effect; the others
#: are ambiguous: the request may have been carried out.
_RETRYABLE = (TransportError, ServerError, RateLimited, RetryBudgetExhausted)

IN_DOUBT_AFTER_CRASH = (
    "in flight when a previous run stopped: it may have reached the server; check there "
    "before sending it again"
)


class EngineConfig(Struct, frozen=True, kw_only=True):
    """How the engine runs; the job file's ``api`` and ``run`` sections fill it."""

    concurrency: int = 16
    grace_seconds: float = 10.0
    #: Attempts of one item (``max_attempts``) and the backoff between them (full jitter over
    #: ``base`` * 2**(attempt-1), capped at ``cap``): :func:`retry.backoff` at the item level,
    #: above the client's own retries of each request.
    item_retry: RetryPolicy = RetryPolicy(max_attempts=5, base=0.5, cap=30.0)
    retry_failed: bool = False
    breaker_window: int = 200
    breaker_min_requests: int = 50
    breaker_threshold: float = 0.5
    #: Items buffered between the reader and the workers (0: twice the concurrency).
    queue_size: int = 0


class EngineStats(Struct, frozen=True, kw_only=True):
    """A snapshot of this run's counters (the ledger holds the totals across runs)."""

    done: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    invalid: int = 0
    in_doubt: int = 0
    retried: int = 0
    reconciled: int = 0
    in_flight: int = 0
    total_seen: int = 0


class RunResult(Struct, frozen=True, kw_only=True):
    """How a run ended: completed, stopped (resumable) or aborted (e.g. 401), and why."""

    status: Literal["completed", "stopped", "aborted"]
    reason: str = ""
    stats: EngineStats


class _NullLedger:
    """Stands in for the ledger when none is given (plan, tests): remembers nothing."""

    def record(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def mark_in_flight(self, item: Item, attempts: int = 0) -> None:
        return None

    def queue_in_flight(self, item: Item, attempts: int = 0) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def forget(self, item: Item) -> None:
        return None

    async def load_states(self) -> dict[str, ItemState]:
        return {}

    async def get_cursor(self, name: str) -> str | None:
        return None

    async def set_cursor(self, name: str, value: str) -> None:
        return None


class _ReadOnlyMemory:
    """A cursor store seen by ``plan``: stored values are read, writes are dropped."""

    def __init__(self, inner: CursorStore) -> None:
        self._inner = inner

    async def get_cursor(self, name: str) -> str | None:
        return await self._inner.get_cursor(name)

    async def set_cursor(self, name: str, value: str) -> None:
        return None


class Engine:
    """Drives one task against one client, recording every item in the ledger."""

    def __init__(
        self,
        task: ItemTask,
        client: SynapClient,
        ledger: Ledger | None,
        *,
        config: EngineConfig | None = None,
        clock: Clock | None = None,
        memory: CursorStore | None = None,
        before_items: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        """``memory`` is where the task's ``prepare`` keeps and finds its decisions (the job's
        ledger by default; nothing is remembered without one). ``plan`` only reads it, so a plan
        given the job's ledger shows the decision a resumed run would finish.

        ``before_items`` is awaited after ``prepare`` and before the first item (the runner's
        guard of destructive changes): a non-empty answer aborts the run with it as the reason.
        A task with ``bind_images`` gets the ledger's before-image book (``images.py``)."""
        self.task = task
        self.client = client
        self.config = config or EngineConfig()
        self._ledger: Ledger | _NullLedger = ledger if ledger is not None else _NullLedger()
        self._memory: CursorStore = memory if memory is not None else self._ledger
        self._before_items = before_items
        self._clock: Clock = clock or SystemClock()
        self._random = random.Random()
        self._states: dict[str, ItemState] = {}
        # counters
        self._done = self._failed = self._skipped_done = self._skipped_failed = 0
        self._invalid = self._in_doubt = self._retried = self._reconciled = 0
        self._in_flight = self._total_seen = 0
        # breaker: a sliding window of finished attempts, True = server/transport failure
        self._window: deque[bool] = deque()
        self._bad = 0
        # stopping
        self._stop_requested = False
        self._hard_stop = False
        self._stop_reason = ""
        self._abort_reason = ""
        self._unfinished = False
        self._crash: BaseException | None = None
        self._stop_event: anyio.Event | None = None
        self._work_scope: anyio.CancelScope | None = None
        self._producer_scope: anyio.CancelScope | None = None
        self._workers_left = 0

    # -- public ----------------------------------------------------------------------------

    def statistics(self) -> EngineStats:
        """This run's counters, cheap enough to poll for a progress bar."""
        return EngineStats(
            done=self._done,
            failed=self._failed,
            skipped_done=self._skipped_done,
            skipped_failed=self._skipped_failed,
            invalid=self._invalid,
            in_doubt=self._in_doubt,
            retried=self._retried,
            reconciled=self._reconciled,
            in_flight=self._in_flight,
            total_seen=self._total_seen,
        )

    def stop(self, graceful: bool = True) -> None:
        """Stop admitting items; graceful lets in-flight ones finish within the grace period,
        otherwise they are cancelled now (and reconciled on resume)."""
        self._request_stop("stopped on request", hard=not graceful)

    async def run(self) -> RunResult:
        """Run (or resume) the task to the end, or until stopped or aborted."""
        self._states = await self._ledger.load_states()
        bind = getattr(self.task, "bind_images", None)
        if bind is not None:
            bind(book_for(self._ledger))
        try:
            await self.task.prepare(self.client, self._memory)
            refused = await self._before_items() if self._before_items is not None else ""
        except Unauthorized as exc:
            return RunResult(status="aborted", reason=str(exc), stats=self.statistics())
        if refused:
            return RunResult(status="aborted", reason=refused, stats=self.statistics())
        self._stop_event = anyio.Event()
        if self._stop_requested:
            self._stop_event.set()
        size = self.config.queue_size or 2 * self.config.concurrency
        workers = max(1, self.config.concurrency)
        # asyncio.Queue rather than an anyio memory stream: a worker that finds an item waiting
        # takes it without a checkpoint, which keeps the engine's cost per item to a few us.
        queue: asyncio.Queue[Item | None] = asyncio.Queue(size)
        self._workers_left = workers
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._grace_watch)
                async with anyio.create_task_group() as tg:
                    self._work_scope = tg.cancel_scope
                    if self._hard_stop:
                        tg.cancel_scope.cancel()
                    tg.start_soon(self._produce, queue, workers)
                    for _ in range(workers):
                        tg.start_soon(self._work, queue)
                outer.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._ledger.flush()
        if self._crash is not None:
            raise self._crash
        stats = self.statistics()
        if self._abort_reason:
            return RunResult(status="aborted", reason=self._abort_reason, stats=stats)
        if self._stop_requested and (self._unfinished or self._hard_stop):
            return RunResult(status="stopped", reason=self._stop_reason, stats=stats)
        return RunResult(status="completed", stats=stats)

    async def plan(self, skip: Mapping[str, str] | None = None) -> list[PlanRow]:
        """What a run would do with each item, in input order, without writing anything.

        ``skip`` maps the keys a run would not send (done before, in doubt) to the action the
        plan shows for them; those are not looked at on the server.
        """
        skip = skip or {}
        await self.task.prepare(self.client, _ReadOnlyMemory(self._memory))
        rows: list[PlanRow | None] = []
        send, recv = anyio.create_memory_object_stream[tuple[int, Item]](
            2 * self.config.concurrency
        )

        async def produce() -> None:
            async with send:
                items = self.task.items()
                try:
                    async for it in items:
                        idx = len(rows)
                        label = skip.get(it.key)
                        if label is not None:
                            rows.append(PlanRow(key=it.key, line=it.line, action=label))
                            continue
                        if isinstance(it, InvalidRow):
                            err = it.error
                            rows.append(
                                PlanRow(
                                    key=it.key,
                                    line=it.line,
                                    action="invalid",
                                    detail=_join(err.field, err.detail or err.code),
                                )
                            )
                            continue
                        rows.append(None)
                        await send.send((idx, it))
                finally:
                    await _aclose(items)

        async def work(stream: ObjectReceiveStream[tuple[int, Item]]) -> None:
            async with stream:
                async for idx, it in stream:
                    try:
                        rows[idx] = await self.task.plan(it, self.client)
                    except Unauthorized:
                        raise
                    except (ApiError, TransportError, MalformedResponse, RetryBudgetExhausted) as e:
                        rows[idx] = PlanRow(key=it.key, line=it.line, action="error", detail=str(e))

        await self._guarded_group(produce, [work] * max(1, self.config.concurrency), recv)
        return [r for r in rows if r is not None]

    # -- run internals ---------------------------------------------------------------------

    async def _guarded_group(self, produce: Any, workers: list[Any], recv: Any) -> None:
        """Run producer and workers; re-raise the first error itself, not an ExceptionGroup."""
        failure: list[BaseException] = []

        async def guard(fn: Any, *args: Any) -> None:
            try:
                await fn(*args)
            except Exception as exc:
                if not failure:
                    failure.append(exc)
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(guard, produce)
            for w in workers:
                tg.start_soon(guard, w, recv.clone())
            recv.close()
        if failure:
            raise failure[0]

    def _request_stop(self, reason: str, *, hard: bool = False) -> None:
        if not self._stop_requested:
            self._stop_requested = True
            self._stop_reason = reason
        if hard:
            self._hard_stop = True
            if self._work_scope is not None:
                self._work_scope.cancel()
        if self._stop_event is not None:
            self._stop_event.set()

    def _abort(self, reason: str) -> None:
        if not self._abort_reason:
            self._abort_reason = reason
        self._request_stop(reason, hard=True)

    def _fail_run(self, exc: BaseException) -> None:
        if self._crash is None:
            self._crash = exc
        self._request_stop(f"error: {exc}", hard=True)

    async def _grace_watch(self) -> None:
        assert self._stop_event is not None
        await self._stop_event.wait()
        if self._hard_stop:
            return
        await self._clock.sleep(self.config.grace_seconds)
        # Still running after the grace period (items in flight, or the reader stuck): cancel.
        # Cancelled items stay as the ledger has them: in flight (reconciled on resume) or absent.
        if self._work_scope is not None:
            self._unfinished = True
            self._work_scope.cancel()

    async def _produce(self, queue: asyncio.Queue[Item | None], workers: int) -> None:
        states = self._states
        retry_failed = self.config.retry_failed
        items: AsyncIterator[Item | InvalidRow] = self.task.items()
        with anyio.CancelScope() as self._producer_scope:
            try:
                async for it in items:
                    if self._stop_requested:
                        self._unfinished = True
                        return
                    self._total_seen += 1
                    state = states.get(it.key)
                    if state is not None and state.status == SUPERSEDED:
                        # A row fixed and fed back by an earlier run stands in for this one.
                        self._skipped_done += 1
                        continue
                    if isinstance(it, InvalidRow):
                        self._invalid += 1
                        self._ledger.record(it, "invalid", 0, it.error)
                        continue
                    if state is not None:
                        status = state.status
                        if status == "done":
                            self._skipped_done += 1
                            continue
                        if status == "in_doubt" or (
                            status in ("failed", "invalid") and not retry_failed
                        ):
                            self._skipped_failed += 1
                            continue
                    await queue.put(it)
                for _ in range(workers):
                    await queue.put(None)  # one end mark per worker
            except Exception as exc:
                self._fail_run(exc)
            finally:
                with anyio.CancelScope(shield=True):
                    await _aclose(items)
        if self._producer_scope.cancelled_caught:
            self._unfinished = True

    async def _work(self, queue: asyncio.Queue[Item | None]) -> None:
        try:
            while True:
                it = await queue.get()
                if it is None:
                    return
                if self._stop_requested:
                    self._unfinished = True
                    return
                self._in_flight += 1
                try:
                    await self._process(it)
                except Exception as exc:
                    self._fail_run(exc)
                    return
                finally:
                    self._in_flight -= 1
        finally:
            self._workers_left -= 1
            if self._workers_left == 0 and self._producer_scope is not None:
                self._producer_scope.cancel()  # nobody left to take items: stop reading them

    async def _process(self, item: Item) -> None:
        """One item from ledger state to recorded outcome, honouring its safety."""
        # The item's durability hold (set by _attempts) lives in this worker task's context;
        # this token puts back the value from before the item, whatever _attempts held.
        token = durable.hold(None)
        try:
            await self._attempts(item)
        finally:
            durable.release(token)

    async def _attempts(self, item: Item) -> None:
        safety = self.task.safety
        state = self._states.get(item.key)
        attempts = 0
        marked = False
        reconcile_first = False
        unknown = False  # an earlier attempt of this item may have taken effect
        if state is not None:
            attempts = state.attempts
            unknown = state.status == "in_flight" or _was_ambiguous(state.error_status)
            if state.status == "in_flight":
                if safety is Safety.UNSAFE:
                    self._record_in_doubt(item, attempts, "in-flight", IN_DOUBT_AFTER_CRASH)
                    return
                marked = True
                reconcile_first = safety is Safety.RECONCILABLE
            elif safety is Safety.RECONCILABLE and _was_ambiguous(state.error_status):
                reconcile_first = True  # --retry-failed after an unknown outcome
        max_tries = max(1, self.config.item_retry.max_attempts)
        tries = 0
        task, client, ledger = self.task, self.client, self._ledger
        while True:
            tries += 1
            try:
                if reconcile_first:
                    found = await task.reconcile(item, client)
                    if found is not None:
                        self._reconciled += 1
                        self._finish(item, found, attempts)
                        return
                    reconcile_first = False
                if not marked and safety is not Safety.IDEMPOTENT:
                    # Durable before the item's first request (durable.barrier in the client),
                    # usually in the same commit as the task's before-image.
                    durable.hold(ledger.queue_in_flight(item, attempts))
                    marked = True
                attempts += 1
                outcome = await task.execute(item, client)
            except Unauthorized as exc:
                self._abort(str(exc))
                return
            except _RETRYABLE as exc:
                refused = _not_carried_out(exc)
                unknown = unknown or not refused
                if not isinstance(_last(exc), RateLimited):  # throttling is not a sick server
                    self._note(True)
                if not refused:
                    if safety is Safety.UNSAFE:
                        self._record_in_doubt(
                            item,
                            attempts,
                            "ambiguous",
                            f"outcome unknown ({exc}); check on the server before sending it again",
                        )
                        return
                    if safety is Safety.RECONCILABLE:
                        reconcile_first = True
                if tries >= max_tries:
                    if reconcile_first and await self._last_look(item, attempts):
                        return
                    self._failed += 1
                    ledger.record(
                        item, "failed", attempts, ItemError(status=_status_of(exc), detail=str(exc))
                    )
                    return
                if not self._stop_requested:
                    self._retried += 1
                    await self._clock.sleep(backoff(tries, self.config.item_retry, self._random))
                if self._stop_requested:
                    # Stopping (signal or breaker): no new attempt. The ledger keeps the item as
                    # it was (absent, or in flight to reconcile) so that a resume picks it up;
                    # an unsafe item whose request certainly had no effect is forgotten rather
                    # than left in flight, which a resume would report as in doubt.
                    self._unfinished = True
                    if refused and safety is Safety.UNSAFE:
                        await ledger.forget(item)
                    return
                continue
            except ApiError as exc:  # 4xx: the server refused this item
                self._note(False)
                gone = task.absent_means_done(item) if exc.status == 404 else ""
                if gone and (unknown or exc.after_unknown):
                    # A repeated DELETE found nothing: the attempt whose answer was lost did it.
                    self._reconciled += 1
                    self._finish(item, Outcome(status="done", action=gone), attempts)
                    return
                self._failed += 1
                ledger.record(item, "failed", attempts, self._api_item_error(exc))
                return
            except MalformedResponse as exc:
                self._note(True)
                if safety is Safety.UNSAFE:  # a 2xx we cannot read: it probably took effect
                    self._record_in_doubt(item, attempts, "malformed-response", str(exc))
                    return
                # A reconcilable write answered 2xx with a body we cannot read probably took
                # effect: look it up now, so the row is not reported failed while it exists.
                if safety is Safety.RECONCILABLE and await self._last_look(item, attempts):
                    return
                self._failed += 1
                ledger.record(
                    item,
                    "failed",
                    attempts,
                    ItemError(status="malformed", code="malformed-response", detail=str(exc)),
                )
                return
            self._note(False)
            self._finish(item, outcome, attempts)
            return

    async def _last_look(self, item: Item, attempts: int) -> bool:
        """Attempts are used up after an unknown outcome: one last lookup before failing."""
        try:
            found = await self.task.reconcile(item, self.client)
        except Unauthorized as exc:
            self._abort(str(exc))
            return True
        except (*_RETRYABLE, ApiError, MalformedResponse):
            return False
        if found is None:
            return False
        self._reconciled += 1
        self._finish(item, found, attempts)
        return True

    def _finish(self, item: Item, outcome: Outcome, attempts: int) -> None:
        if outcome.status == "done":
            self._done += 1
        else:
            self._failed += 1
        self._ledger.record(item, outcome, attempts)

    def _record_in_doubt(self, item: Item, attempts: int, code: str, detail: str) -> None:
        self._in_doubt += 1
        error = ItemError(status="in-doubt", code=code, detail=detail)
        self._ledger.record(item, "in_doubt", attempts, error)

    def _api_item_error(self, exc: ApiError) -> ItemError:
        pointer = exc.first_pointer
        field = self.task.column_for_pointer(pointer) if pointer else ""
        texts = [e.detail or e.title or e.code or "" for e in exc.errors]
        detail = "; ".join(t for t in texts if t) or str(exc)
        return ItemError(status=str(exc.status), code=exc.code or "", field=field, detail=detail)

    def _note(self, failure: bool) -> None:
        """Feed the circuit breaker one finished attempt."""
        window = self._window
        if len(window) >= self.config.breaker_window and window.popleft():
            self._bad -= 1
        window.append(failure)
        if failure:
            self._bad += 1
            n = len(window)
            if (
                n >= self.config.breaker_min_requests
                and self._bad >= self.config.breaker_threshold * n
                and not self._stop_requested
            ):
                self._request_stop(
                    f"circuit breaker: {self._bad} of the last {n} attempts failed with server "
                    "or transport errors"
                )


def _last(exc: BaseException) -> BaseException:
    return exc.last if isinstance(exc, RetryBudgetExhausted) else exc


def _not_carried_out(exc: BaseException) -> bool:
    """True when the request certainly had no effect: never sent, or refused with a 429."""
    exc = _last(exc)
    return isinstance(exc, RateLimited) or (isinstance(exc, TransportError) and exc.never_sent)


def _status_of(exc: BaseException) -> str:
    exc = _last(exc)
    if isinstance(exc, ApiError):
        return str(exc.status)
    if isinstance(exc, TransportError):
        return "transport"
    return "error"


def _was_ambiguous(error_status: str) -> bool:
    """A failure whose request may have taken effect (so reconcile before re-sending)."""
    return error_status in ("transport", "malformed") or error_status.startswith("5")


def _join(field: str, text: str) -> str:
    return f"{field}: {text}" if field and text else field or text


async def _aclose(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()
