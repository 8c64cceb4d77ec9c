"""Rate control on a fake clock: pacing, shared pause, cut and recovery, header pacing."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import anyio
import pytest

from synap_bulk.clock import FakeClock
from synap_bulk.ratecontrol import (
    ClockPacer,
    RateController,
    RateSettings,
    cubic_rate,
    parse_retry_after,
)

WALL = 1_700_000_000.0


def http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(WALL + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        (http_date(10), 10.0),
        ("0", None),
        ("-4", None),
        (http_date(-5), None),
        ("soon", None),
        ("", None),
        ("nan", None),
        ("inf", None),
        (None, None),
        ("Mon, 99 Foo 2024 99:99:99 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Seconds and HTTP dates give a wait; zero, negative, past and garbage give None."""
    assert parse_retry_after(value, WALL) == expected


def controller(rate: float | str | None = 100.0, **kw: object) -> RateController:
    clock = kw.pop("clock", None) or FakeClock()
    return RateController(
        rate,  # type: ignore[arg-type]
        clock=clock,  # type: ignore[arg-type]
        rng=random.Random(1),
        wall=lambda: WALL,
        **kw,  # type: ignore[arg-type]
    )


async def send(
    rc: RateController, status: int = 200, headers: dict[str, str] | None = None
) -> float:
    sent = await rc.acquire()
    rc.release()
    rc.observe(sent, status, headers or {})
    return sent


async def test_ceiling_paces_evenly_with_no_initial_burst() -> None:
    """At 10/s the 1st request leaves at once and the 11th exactly one second later."""
    rc = controller(10.0)
    times = [await send(rc) for _ in range(11)]
    assert times[0] == 0.0
    assert times[-1] == pytest.approx(1.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g == pytest.approx(0.1) for g in gaps)


async def test_concurrency_cap_bounds_requests_in_flight() -> None:
    """No more than ``concurrency`` requests hold a slot at once."""
    clock = FakeClock()
    rc = controller(None, clock=clock, concurrency=3)
    peak = 0
    gate = anyio.Event()

    async def one() -> None:
        nonlocal peak
        await rc.acquire()
        peak = max(peak, rc.in_flight)
        await gate.wait()
        rc.release()

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(one)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert rc.in_flight == 3
        gate.set()
    assert peak == 3 and rc.in_flight == 0


async def test_429_pauses_everyone_until_retry_after_and_cuts_once() -> None:
    """A 429 sets one shared pause; answers to requests sent before the cut do not cut again."""
    clock = FakeClock(auto_advance=False)
    rc = controller(100.0, clock=clock)
    rc.observe(0.0, 429, {"Retry-After": "2"})
    assert rc.paused_until == 2.0 and rc.pauses == 1
    assert rc.rate == pytest.approx(70.0)
    rc.observe(0.0, 429, {"Retry-After": "1"})  # same round, shorter: changes nothing
    assert rc.paused_until == 2.0 and rc.pauses == 1
    assert rc.rate == pytest.approx(70.0)

    sent: list[float] = []

    async def go() -> None:
        sent.append(await rc.acquire())
        rc.release()

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(go)
        await anyio.lowlevel.checkpoint()
        clock.advance(1.9)
        await anyio.lowlevel.checkpoint()
        assert sent == []  # nobody inside the window
        for _ in range(10):
            clock.advance(0.05)
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
    assert len(sent) == 3 and min(sent) >= 2.0


@pytest.mark.parametrize("value", [None, "0", "-3", "garbage"])
async def test_unusable_retry_after_still_pauses_with_growing_backoff(value: str | None) -> None:
    """Missing, zero, negative or garbage Retry-After gives a computed, growing, non-zero pause."""
    rc = controller(100.0, settings=RateSettings(pause_base=0.5, pause_cap=8.0))
    headers = {} if value is None else {"Retry-After": value}
    waits = []
    for _ in range(6):
        wait = rc.observe(rc.clock.now(), 429, headers)
        assert wait is not None
        waits.append(wait)
        await rc.clock.sleep(wait)
    assert all(w >= 0.25 for w in waits)
    assert waits[-1] > waits[0] and max(waits) <= 8.0
    assert rc.pauses == 6


async def test_a_pause_holds_back_requests_that_already_had_a_slot() -> None:
    """A request waiting for its pace slot when a 429 arrives still waits out the pause."""
    clock = FakeClock(auto_advance=False)
    rc = controller(1.0, clock=clock)  # one per second: the 2nd request waits a full second
    await rc.acquire()
    rc.release()
    sent: list[float] = []

    async def go() -> None:
        sent.append(await rc.acquire())
        rc.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await anyio.lowlevel.checkpoint()
        rc.observe(0.0, 429, {"Retry-After": "5"})
        for _ in range(60):
            clock.advance(0.1)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
    assert sent and sent[0] >= 5.0


def test_cubic_formula_returns_to_the_last_max_after_k() -> None:
    """CUBIC starts at beta x max, is back at max after K = cbrt(max(1-beta)/C) and then probes."""
    k = (100 * 0.3 / 0.4) ** (1 / 3)
    assert cubic_rate(0.0, 100.0, 0.7, 0.4) == pytest.approx(70.0)
    assert cubic_rate(k, 100.0, 0.7, 0.4) == pytest.approx(100.0)
    assert cubic_rate(k + 2, 100.0, 0.7, 0.4) > 100.0


async def recover(rc: RateController, seconds: float) -> list[tuple[float, float]]:
    """Send successes for ``seconds`` of fake time; return (time, rate) samples."""
    samples = []
    end = rc.clock.now() + seconds
    while rc.clock.now() < end:
        await send(rc)
        samples.append((rc.clock.now(), rc.rate or 0.0))
    return samples


async def test_cubic_recovers_to_the_ceiling_and_never_above() -> None:
    """After a cut, CUBIC climbs back to the ceiling within a few seconds and stays capped."""
    rc = controller(100.0)
    await recover(rc, 1.0)
    rc.observe(rc.clock.now(), 429, {"Retry-After": "1"})
    assert rc.rate == pytest.approx(70.0, rel=0.05)
    samples = await recover(rc, 8.0)
    rates = [r for _, r in samples]
    assert max(rates) <= 100.0
    assert rates[-1] == 100.0
    back = next(t for t, r in samples if r >= 99.0)
    assert 2.5 <= back - 1.0 <= 4.5  # near K (about 4.2 s after the cut; CUBIC is flat there)
    assert rates == sorted(rates)  # monotone climb below the ceiling


async def test_aimd_halves_and_climbs_linearly() -> None:
    """AIMD cuts to half and adds a constant step per second until the ceiling."""
    rc = controller(100.0, settings=RateSettings(algorithm="aimd", aimd_step=0.1))
    await recover(rc, 1.0)
    rc.observe(rc.clock.now(), 429, {"Retry-After": "1"})
    assert rc.rate == pytest.approx(50.0, rel=0.05)
    samples = await recover(rc, 3.0)
    t0, r0 = samples[0]
    t1, r1 = samples[-1]
    assert (r1 - r0) / (t1 - t0) == pytest.approx(10.0, rel=0.2)  # 10% of 100 per second
    samples = await recover(rc, 6.0)
    assert samples[-1][1] == 100.0


async def test_auto_starts_modest_grows_then_cuts_on_429() -> None:
    """``rate='auto'`` starts at a modest rate, grows while all is well and cuts on a 429."""
    rc = controller("auto", settings=RateSettings(auto_start=10.0, auto_growth=2.0))
    assert rc.rate == 10.0 and rc.ceiling is None
    samples = await recover(rc, 3.0)
    grown = samples[-1][1]
    assert grown > 40.0
    rc.observe(rc.clock.now(), 429, {"Retry-After": "1"})
    assert rc.rate is not None and rc.rate < grown * 0.75
    samples = await recover(rc, 10.0)
    assert samples[-1][1] > rc.rate * 0.9  # it keeps probing upward after the cut


async def test_no_ceiling_is_unpaced_until_the_first_429() -> None:
    """Without a rate nothing is paced; a 429 turns pacing on at a cut of the measured rate."""
    rc = controller(None)
    for _ in range(50):
        await send(rc)
    assert rc.clock.now() == 0.0 and rc.rate is None
    await rc.clock.sleep(1.0)
    await send(rc)
    rc.observe(rc.clock.now(), 429, {"Retry-After": "1"})
    assert rc.rate is not None and rc.rate > 0


async def test_low_remaining_spreads_sends_over_the_reset_window() -> None:
    """Remaining 1 with Reset 2 s spaces the next sends a second apart, before any 429."""
    rc = controller(None, concurrency=4)
    await send(rc, 200, {"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "2"})
    times = [await send(rc) for _ in range(3)]
    assert times[1] - times[0] == pytest.approx(1.0)
    assert times[2] - times[1] == pytest.approx(1.0)
    assert rc.pauses == 0


async def test_low_remaining_with_a_limit_paces_at_the_refill_rate() -> None:
    """With X-RateLimit-Limit, a draining token bucket is paced at (limit - remaining) / reset."""
    rc = controller(None, concurrency=4)
    headers = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}
    await send(rc, 200, headers)
    times = [await send(rc, 200, headers) for _ in range(5)]
    assert times[-1] - times[0] == pytest.approx(0.04)  # 10 ms apart: 100 per second


async def test_plenty_remaining_does_not_slow_anything() -> None:
    """With a healthy X-RateLimit-Remaining, header pacing stays out of the way."""
    rc = controller(None, concurrency=4)
    for _ in range(20):
        await send(rc, 200, {"X-RateLimit-Remaining": "80", "X-RateLimit-Reset": "1"})
    assert rc.clock.now() == 0.0


async def test_clock_pacer_rate_change_takes_effect() -> None:
    """Lowering the rate stretches the slot already reserved too: 10/s then 2/s is 0.5 s apart."""
    clock = FakeClock()
    pacer = ClockPacer(clock, 10.0)
    await pacer.wait()
    await pacer.wait()
    assert clock.now() == pytest.approx(0.1)
    pacer.set_rate(2.0)  # the 0.1 s owed at 10/s becomes 0.5 s at 2/s
    await pacer.wait()
    assert clock.now() == pytest.approx(0.6)
    await pacer.wait()
    assert clock.now() == pytest.approx(1.1)


async def test_pacer_burst_is_20_ms_of_sends_never_a_second() -> None:
    """At 1,000/s 20 sends go at once and the 21st waits; at 10/s only the first goes at once."""
    clock = FakeClock()
    fast = ClockPacer(clock, 1000.0)
    for _ in range(20):
        await fast.wait()
    assert clock.now() == 0.0
    await fast.wait()
    assert clock.now() == pytest.approx(0.001)
    slow = ClockPacer(FakeClock(), 10.0)
    await slow.wait()
    await slow.wait()
    assert slow._clock.now() == pytest.approx(0.1)
    fast.set_rate(None)
    before = clock.now()
    for _ in range(50):
        await fast.wait()  # no pacing at all
    assert clock.now() == before


class EventClock:
    """A discrete-event clock: time jumps to the earliest deadline when the driver says so."""

    def __init__(self) -> None:
        self._now = 0.0
        self.sleepers: list[tuple[float, anyio.Event]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        entry = (self._now + max(0.0, seconds), anyio.Event())
        self.sleepers.append(entry)
        try:
            await entry[1].wait()
        finally:
            if entry in self.sleepers:
                self.sleepers.remove(entry)

    def jump(self, to: float) -> None:
        """Move time to ``to`` and wake every sleeper due by then."""
        self._now = max(self._now, to)
        for entry in [e for e in self.sleepers if e[0] <= self._now]:
            self.sleepers.remove(entry)
            entry[1].set()

    def next_deadline(self) -> float:
        return min((d for d, _ in self.sleepers), default=math.inf)


async def settle(clock: EventClock, sleepers: int) -> None:
    """Run the loop until ``sleepers`` waiters are asleep on the clock and nothing else moves."""
    for _ in range(10_000):
        await asyncio.sleep(0)
        if len(clock.sleepers) == sleepers:
            for _ in range(5):  # and nothing else was about to move
                await asyncio.sleep(0)
            if len(clock.sleepers) == sleepers:
                return
    raise AssertionError("the waiters never settled")


async def run_waiters(
    clock: EventClock,
    pacer: ClockPacer,
    n: int,
    changes: list[tuple[float, float | None]],
    until: float,
) -> list[tuple[float, int]]:
    """``n`` tasks loop on ``pacer.wait()``; apply the (time, rate) changes; return admissions."""
    admitted: list[tuple[float, int]] = []

    async def waiter(i: int) -> None:
        while True:
            await pacer.wait()
            admitted.append((clock.now(), i))

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(waiter, i)
            await asyncio.sleep(0)  # each one queues in turn: FIFO order is start order
        pending = list(changes)
        while True:
            await settle(clock, n)
            nxt = min(clock.next_deadline(), pending[0][0] if pending else math.inf)
            if nxt >= until:
                break
            clock.jump(nxt)
            while pending and pending[0][0] <= clock.now():
                pacer.set_rate(pending.pop(0)[1])
        tg.cancel_scope.cancel()
    return admitted


async def test_pacer_admits_the_rate_it_is_set_to_while_the_rate_changes_every_100_ms() -> None:
    """50 waiters, the rate changed every 0.1 s for 20 s: each second admits its rate integral."""
    values = [20.0, 80.0, 35.0, 120.0, 50.0, 200.0, 10.0, 90.0, 150.0, 25.0, 60.0]
    schedule = [(k / 10, values[(k * 7) % len(values)]) for k in range(200)]
    clock = EventClock()
    pacer = ClockPacer(clock, schedule[0][1])
    admitted = await run_waiters(clock, pacer, 50, schedule[1:], until=20.0)
    times = [t for t, _ in admitted]
    for second in range(20):
        expected = sum(r * 0.1 for t, r in schedule if second <= t < second + 1)
        got = sum(1 for t in times if second <= t < second + 1)
        assert abs(got - expected) <= 0.03 * expected + 5, (second, got, expected)
    # Never ahead of the rate in force: per 0.1 s step, at most rate x 0.1 + the burst + 1.
    for t0, r in schedule:
        got = sum(1 for t in times if t0 <= t < t0 + 0.1 - 1e-9)
        assert got <= r * 0.1 + max(1.0, r * 0.02) + 1, (t0, r, got)
    # Strict FIFO: the 50 waiters take turns in their queueing order, round after round.
    order = [i for _, i in admitted]
    assert order[1:101] == [k % 50 for k in range(100)]  # waiter 0 went first, then queued


async def test_a_rate_cut_holds_back_every_queued_waiter() -> None:
    """After a cut from 100/s to 10/s no queued waiter leaves before the new spacing."""
    clock = EventClock()
    pacer = ClockPacer(clock, 100.0)
    admitted = await run_waiters(clock, pacer, 20, [(1.005, 10.0)], until=3.0)
    times = [t for t, _ in admitted]
    before = [t for t in times if t < 1.005]
    after = [t for t in times if t >= 1.005]
    assert 99 <= len(before) <= 103
    # The debt left at the cut (under one old slot) is stretched tenfold, then 0.1 s apart.
    assert after[0] - before[-1] >= 0.01 - 1e-9
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert gaps and min(gaps) >= 0.1 - 1e-9
    assert len(after) == pytest.approx(20, abs=1)


async def test_a_rate_raise_re_times_the_sleeping_head_at_once() -> None:
    """Raised from 1/s to 100/s mid-sleep, the head is not left sleeping on the old slot."""
    clock = EventClock()
    pacer = ClockPacer(clock, 1.0)
    admitted = await run_waiters(clock, pacer, 5, [(0.5, 100.0)], until=1.0)
    times = [t for t, _ in admitted]
    assert times[0] == 0.0
    # The 0.5 s still owed at the raise shrinks to 5 ms, inside the new burst: it goes at 0.5.
    assert times[1] == pytest.approx(0.5)
    assert 50 <= len(times) <= 53  # then 100/s


async def test_a_cancelled_waiter_leaves_the_queue_without_blocking_the_rest() -> None:
    """Cancelling a queued waiter (the head or not) hands its turn on; the others still go."""
    clock = EventClock()
    pacer = ClockPacer(clock, 10.0)
    await pacer.wait()  # uses the one free slot
    done: list[int] = []

    async def one(i: int) -> None:
        await pacer.wait()
        done.append(i)

    tasks = [asyncio.ensure_future(one(i)) for i in range(4)]
    await settle(clock, 4)
    assert pacer.waiting == 4
    tasks[0].cancel()  # the head, asleep on the clock
    tasks[2].cancel()
    await settle(clock, 2)
    assert pacer.waiting == 2
    for left in (1, 0):
        clock.jump(clock.next_deadline())
        await settle(clock, left)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert done == [1, 3]
    assert clock.now() == pytest.approx(0.2)


def test_rejects_a_nonsense_rate() -> None:
    """A rate must be positive, None or 'auto'."""
    for bad in (0, -1, float("nan"), "fast"):
        with pytest.raises(ValueError, match="rate must be"):
            RateController(bad)  # type: ignore[arg-type]


async def test_deadline_free_growth_is_capped_by_twice_the_measured_rate() -> None:
    """A client that sends slowly does not inflate its allowed rate far beyond what it uses."""
    rc = controller("auto", settings=RateSettings(auto_start=10.0))
    for _ in range(40):
        await rc.clock.sleep(0.5)  # 2 requests per second
        await send(rc)
    assert rc.rate is not None and rc.rate <= 2 * max(rc.measured, 5.0) + 1


class TokenBucket:
    """The sandbox's limiter in miniature: ``rate`` tokens/s, ``size`` at most, 1 s Retry-After."""

    def __init__(self, rate: float, size: float, headers: bool) -> None:
        self.rate, self.size, self.headers = rate, size, headers
        self.tokens, self.last = size, 0.0
        self.accepted = self.refused = 0

    def answer(self, now: float) -> tuple[int, dict[str, str]]:
        self.tokens = min(self.size, self.tokens + (now - self.last) * self.rate)
        self.last = now
        ok = self.tokens >= 1.0
        if ok:
            self.tokens -= 1.0
            self.accepted += 1
        else:
            self.refused += 1
        headers = {} if ok else {"Retry-After": "1"}
        if self.headers:
            headers |= {
                "X-RateLimit-Limit": str(int(self.size)),
                "X-RateLimit-Remaining": str(int(self.tokens)),
                "X-RateLimit-Reset": str(math.ceil((self.size - self.tokens) / self.rate)),
            }
        return (200 if ok else 429), headers


async def run_against(rc: RateController, bucket: TokenBucket, seconds: float) -> None:
    """Send one request after another against ``bucket`` for ``seconds`` of fake time."""
    while rc.clock.now() < seconds:
        sent = await rc.acquire()
        rc.release()
        status, headers = bucket.answer(sent)
        rc.observe(sent, status, headers)


@pytest.mark.parametrize("headers", [False, True])
async def test_auto_learns_a_token_bucket_and_holds_just_under_it(headers: bool) -> None:
    """From no knowledge, auto finds 100/s burst 10 within seconds and keeps 9x % with few 429s."""
    rc = controller("auto")
    bucket = TokenBucket(100.0, 10.0, headers)
    await run_against(rc, bucket, 60.0)
    assert rc.learned is not None and 88.0 <= rc.learned <= 106.0
    assert bucket.accepted >= 0.90 * 6000
    assert bucket.refused <= 0.01 * (bucket.accepted + bucket.refused)
    if headers:
        assert bucket.refused <= 1  # Remaining shows the drain before the bucket is empty


async def test_auto_estimate_is_the_accepted_rate_in_the_second_before_the_429() -> None:
    """At 103/s against a 100/s bucket, a 429 after seconds teaches ~100; the hold is 0.97x."""
    rc = controller("auto", settings=RateSettings(auto_start=103.0, auto_growth=1.0))
    bucket = TokenBucket(100.0, 10.0, False)
    while not bucket.refused:
        sent = await rc.acquire()
        rc.release()
        rc.observe(sent, *bucket.answer(sent))
    assert sent > 2.0  # the bucket of 10 drained at 3/s
    assert rc.learned == pytest.approx(100.0, rel=0.03)
    assert rc.rate == pytest.approx(0.97 * rc.learned)
    assert rc.paused_until == pytest.approx(rc.clock.now() + 1.0)


async def test_auto_probes_rarely_and_backs_off_after_a_failed_probe() -> None:
    """Probes at +3 % come 5 s after learning, then 10 s; a failed one doubles the next wait."""
    rc = controller("auto", settings=RateSettings(auto_start=120.0, auto_growth=1.0))
    bucket = TokenBucket(100.0, 10.0, False)
    starts: list[float] = []
    fails: list[float] = []
    prev = rc.rate or 0.0
    while rc.clock.now() < 120.0:
        sent = await rc.acquire()
        rc.release()
        status, headers = bucket.answer(sent)
        rc.observe(sent, status, headers)
        rate = rc.rate or 0.0
        if rate > prev * 1.03 and rc.learned is not None:
            starts.append(sent)
        if status == 429 and starts:
            fails.append(sent)
        prev = rate
    assert rc.learned is not None and 95.0 <= rc.learned <= 106.0
    assert starts and starts[0] >= 5.0
    assert 2 <= len(starts) <= 6
    assert bucket.refused <= 3 + len(starts)  # learning from a start at 120/s takes 2 or 3
    # After each failed probe the next one waits twice as long: 10, 20, 40, 80 s.
    after_fail = [next(t for t in starts if t > f) - f for f in fails if any(t > f for t in starts)]
    assert after_fail == sorted(after_fail)
    assert all(g >= 19.0 for g in after_fail)


class StallingBucket(TokenBucket):
    """A bucket that refuses one request at ``at`` seconds whatever its tokens (a server stall
    that let the queue through at once): a 429 that says nothing about the limit."""

    def __init__(self, at: float, *args: Any) -> None:
        super().__init__(*args)
        self.at = at

    def answer(self, now: float) -> tuple[int, dict[str, str]]:
        if now >= self.at:
            self.at = math.inf
            self.refused += 1
            return 429, {"Retry-After": "1"}
        return super().answer(now)


@pytest.mark.parametrize("headers", [False, True])
async def test_auto_leaves_an_estimate_far_too_low_in_seconds(headers: bool) -> None:
    """A spurious 429 at 40 % of the limit teaches 40/s; probes that last grow their step, a
    big one that fails is bisected, so the rate is back near the limit within 30 s (probing
    +3 % every 5-10 s took minutes: 2,501 accepted in the 60 s)."""
    rc = controller("auto")
    bucket = StallingBucket(0.65, 100.0, 10.0, headers)  # the slow start is past 40/s
    await run_against(rc, bucket, 1.0)
    assert rc.learned is not None and rc.learned < 50.0  # the stall taught it far too low
    await run_against(rc, bucket, 32.0)
    assert rc.learned >= 90.0
    await run_against(rc, bucket, 60.0)
    assert rc.learned <= 106.0
    assert bucket.accepted >= 0.65 * 6000
    assert bucket.refused <= 0.01 * (bucket.accepted + bucket.refused)


async def first_throttle(rc: RateController, bucket: TokenBucket, seconds: float) -> float:
    """Run against ``bucket`` for ``seconds``; the send time of its first 429 (inf: none)."""
    first = math.inf
    while rc.clock.now() < seconds:
        sent = await rc.acquire()
        rc.release()
        status, headers = bucket.answer(sent)
        rc.observe(sent, status, headers)
        if status == 429:
            first = min(first, sent)
    return first


async def test_slow_start_finds_a_bucket_within_a_second_and_one_429() -> None:
    """From 10/s the rate doubles every 0.2 s: the bucket of 10 at 100/s empties within a
    second, and that one 429 (its drain fitted to a bucket of 0.1 s) teaches 100 +- 6 %,
    where the second before it (mostly below the limit) said 53."""
    rc = controller("auto")
    bucket = TokenBucket(100.0, 10.0, False)
    first = await first_throttle(rc, bucket, 5.0)
    assert first < 1.0
    assert bucket.refused == 1
    assert rc.learned is not None and 94.0 <= rc.learned <= 106.0
    assert rc.rate == pytest.approx(0.97 * rc.learned)


async def test_slow_start_with_headers_settles_on_the_refill_without_a_429() -> None:
    """With X-RateLimit-Remaining the drain shows before the bucket is empty: the limit is
    known within a second and a half, and no request was refused."""
    rc = controller("auto")
    bucket = TokenBucket(100.0, 10.0, True)
    await first_throttle(rc, bucket, 1.5)
    assert bucket.refused == 0
    assert rc.learned is not None and 95.0 <= rc.learned <= 105.0


async def test_slow_start_429_with_the_bucket_size_in_the_headers_uses_it() -> None:
    """A bucket that empties faster than its drain shows (10 at 300/s) still 429s once;
    X-RateLimit-Limit gave its size, so the fit needs no assumption of it: 300 +- 6 %."""
    rc = controller("auto")
    bucket = TokenBucket(300.0, 10.0, True)
    await first_throttle(rc, bucket, 3.0)
    assert bucket.refused <= 2
    assert rc.learned is not None and 282.0 <= rc.learned <= 318.0


async def test_one_round_of_429s_without_retry_after_does_not_grow_the_backoff() -> None:
    """The 429s of requests already on their way when a round began are that round's: the
    computed pause grows with rounds, not with how many were in flight."""
    rc = controller(100.0, settings=RateSettings(pause_base=0.5, pause_cap=8.0))
    waits = [rc.observe(0.0, 429, {}) for _ in range(8)]  # 8 in flight, one round
    assert all(w is not None and 0.25 <= w <= 0.5 for w in waits)
    await rc.clock.sleep(1.0)
    again = rc.observe(rc.clock.now(), 429, {})  # sent after the round: the next one
    assert again is not None and 0.5 <= again <= 1.0


async def test_on_the_real_clock_the_pacer_admits_in_order_and_survives_a_cancelled_waiter() -> (
    None
):
    """With the system clock the pacer's waiters sleep on loop timers of its own: they still
    leave first come, first served, and a cancelled waiter leaves no turn behind."""
    from synap_bulk.clock import SystemClock

    pacer = ClockPacer(SystemClock(), 2000.0, burst_s=0.0)
    left: list[int] = []
    started = asyncio.Event()

    async def send(i: int) -> None:
        if i == 5:
            started.set()
        await pacer.wait()
        left.append(i)

    tasks = [asyncio.create_task(send(i)) for i in range(12)]
    await started.wait()
    await asyncio.sleep(0)
    assert pacer.waiting >= 6  # queued behind the pace, not admitted at once
    tasks[7].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert left == [i for i in range(12) if i != 7]
    assert pacer.waiting == 0
