"""One feedback loop shared by every request of a run: ceiling, concurrency, pause, recovery.

* A **ceiling** paces sends at most ``rate`` per second with no initial burst (one GCRA limiter on
  the injected clock, :class:`ClockPacer`, that stays exact while the rate changes).
* A **concurrency cap** bounds requests in flight.
* On **429** every request waits behind one shared pause until Retry-After (seconds or an HTTP
  date; missing, zero, negative or garbage means a computed backoff, never a tight loop), and the
  rate is cut multiplicatively — once per round of throttling, not once per throttled request.
* Then the rate **recovers** toward the ceiling: CUBIC as in the AWS SDK's adaptive retry mode
  (the default, it measured better, see docs/client.md) or AIMD.
* When the server sends ``X-RateLimit-Remaining``/``Reset``, sends are spread over what is left
  of the window before a 429 happens.
* ``rate="auto"`` starts modest and doubles every 0.2 s (slow start) until X-RateLimit-Remaining
  falls (the refill is read off it) or the first 429 (the bucket it emptied is fitted), then
  holds under what it learned and probes, with no ceiling.

Everything reads time through the injected :class:`~synap_bulk.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol

from msgspec import Struct

from .clock import Clock, SystemClock

__all__ = [
    "ClockPacer",
    "Pacer",
    "RateController",
    "RateSettings",
    "cubic_rate",
    "parse_retry_after",
]

Algorithm = Literal["cubic", "aimd"]
#: Slack of the pace comparisons (a nanosecond): float sums of 1/rate must not cost a sleep.
_EPSILON = 1e-9


class RateSettings(Struct, frozen=True, kw_only=True):
    """Tuning of the feedback loop; the defaults are what the benchmark chose."""

    algorithm: Algorithm = "cubic"
    #: CUBIC: cut to ``beta`` x rate on a throttle; grow by ``scale`` x (t - K)^3 (AWS values).
    cubic_beta: float = 0.7
    cubic_scale: float = 0.4
    #: AIMD: cut to ``aimd_cut`` x rate; add ``aimd_step`` x (rate before the cut) per second.
    aimd_cut: float = 0.5
    aimd_step: float = 0.1
    #: The rate never goes below this (requests per second).
    min_rate: float = 0.5
    #: ``rate="auto"``: the first rate, and its growth factor per second until the first 429
    #: (32: doubling every 0.2 s; at 4 the start from no knowledge cost ~2 s at 100/s).
    auto_start: float = 10.0
    auto_growth: float = 32.0
    #: The window of the send rate that bounds the growth until the first 429 (seconds).
    auto_window: float = 0.2
    #: What the first 429 assumes of the server's burst, in seconds of its limit (a bucket of
    #: 10 at 100/s is 0.1): with the time the bucket took to empty it gives the limit.
    auto_burst_s: float = 0.1
    #: ``rate="auto"`` once it knows the limit L (the accepted rate in the second before a 429,
    #: or the refill rate read off X-RateLimit-Remaining): hold ``auto_hold`` x L, and every
    #: ``auto_probe_every`` s (the first one ``auto_probe_for`` s after L is first known, as a
    #: first estimate made while ramping up is low; doubling after each probe that fails, up to
    #: ``auto_probe_max``)
    #: probe at ``(1 + auto_probe)`` x L for ``auto_probe_for`` s. A probe that lasts makes its
    #: rate the new L (and the next probe follows at once); one that fails (a 429, or Remaining
    #: falling to half the bucket) goes back to the hold.
    #: From the second probe in a row that lasts, each doubles the next one's step (up to
    #: ``auto_probe_step_max``); a probe lasts ``auto_probe_for`` x ``auto_probe`` / step (at
    #: least ``auto_probe_min_for``: a bigger step drains a bucket sooner). So an estimate far
    #: too low (a 429 caused by a stall of the server, not by the limit) is left in seconds,
    #: not minutes. A failed probe with a step above ``auto_probe`` bounds the limit: the next
    #: probes bisect between L and the refused rate, the first ``auto_probe_for`` s later.
    auto_hold: float = 0.97
    auto_probe: float = 0.03
    auto_probe_every: float = 10.0
    auto_probe_max: float = 160.0
    auto_probe_for: float = 5.0
    auto_probe_step_max: float = 0.48
    auto_probe_min_for: float = 1.0
    #: Computed pause when a 429 gives no usable Retry-After: base x 2^n, capped (seconds).
    pause_base: float = 0.5
    pause_cap: float = 30.0
    #: A Retry-After longer than this is clipped (a misconfigured proxy must not stall a run).
    max_pause: float = 300.0
    #: How often the rate is recomputed while recovering (seconds).
    update_interval: float = 0.1
    #: With ``X-RateLimit-Remaining`` at or below this, sends are spread over the reset window.
    #: None means the concurrency (what may already be on its way).
    low_water: int | None = None


def parse_retry_after(value: str | None, wall_now: float) -> float | None:
    """Seconds to wait from a Retry-After value, or None when it gives no usable wait.

    Accepts delay-seconds (also fractional) and HTTP dates; zero, negative, non-finite and
    unparseable values are None so that the caller falls back to a computed backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - wall_now
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def cubic_rate(elapsed: float, last_max: float, beta: float, scale: float) -> float:
    """CUBIC's rate ``elapsed`` seconds after a throttle at ``last_max`` (AWS SDK formula)."""
    k = (last_max * (1.0 - beta) / scale) ** (1.0 / 3.0)
    rate: float = scale * (elapsed - k) ** 3 + last_max
    return rate


class Pacer(Protocol):
    """Spaces sends ``1/rate`` apart; ``None`` means no pacing."""

    def set_rate(self, rate: float | None) -> None: ...

    async def wait(self) -> None: ...


class ClockPacer:
    """One GCRA limiter on the injected clock whose rate can change under its waiters.

    GCRA (generic cell rate algorithm): a theoretical arrival time ``tat`` advances by
    ``1/rate`` per admission; a send may go when ``now >= tat - tolerance``, the tolerance being
    ``burst_s`` seconds of sends beyond the first (``max(1, rate x burst_s)`` at once: at 100/s
    that is 2, so a fresh client cannot fire a second's worth; at 5,000/s it is 100, so a send
    does not need a loop timer of its own). Waiters queue in FIFO order and only the head may
    leave; each sleeps on the clock until its own slot. A rate change rescales the debt still
    ahead (``tat - now``) to the new spacing and wakes every waiter to re-time, so after a cut
    nobody leaves before the new schedule and after a raise nobody sleeps on the old one.
    There is one limiter for the life of the pacer, so the rate it admits is the rate it was set
    to (rebuilding a limiter per change let the waiters of several old ones through at once).
    """

    def __init__(self, clock: Clock, rate: float | None = None, *, burst_s: float = 0.02) -> None:
        self._clock = clock
        # SystemClock sleeps are loop timers: the pacer may set those itself (see wait).
        self._real_clock = type(clock) is SystemClock
        self._burst_s = burst_s
        self._interval = 0.0
        self._tolerance = 0.0
        self._tat = -math.inf
        self._queue: deque[_Turn] = deque()
        self.rate: float | None = None
        self.set_rate(rate)

    @property
    def waiting(self) -> int:
        """Sends queued behind the pace."""
        return len(self._queue)

    def set_rate(self, rate: float | None) -> None:
        now = self._clock.now()
        old = self._interval
        new = 0.0 if rate is None else 1.0 / rate
        if not new:
            self._tat = -math.inf  # unpaced: no debt carried into a later rate
        elif old and self._tat > now:
            self._tat = now + (self._tat - now) * (new / old)
        self._interval = new
        self._tolerance = 0.0 if rate is None else (max(1.0, rate * self._burst_s) - 1.0) * new
        self.rate = rate
        self._wake_all()

    async def wait(self) -> None:
        clock = self._clock
        queue = self._queue
        if not queue:
            if not self._interval:
                return
            now = clock.now()
            if now >= self._tat - self._tolerance - _EPSILON:
                self._tat = max(self._tat, now) + self._interval
                return
        loop = asyncio.get_running_loop()
        turn = _Turn()
        queue.append(turn)
        try:
            while True:
                # Every waiter sleeps on the clock until its own slot (a discrete-event clock
                # sees everyone asleep); a rate change or a departure wakes them to re-time.
                pos = 0 if queue[0] is turn else queue.index(turn)
                until: float | None = None
                if self._interval:
                    now = clock.now()
                    due = self._tat - self._tolerance + pos * self._interval
                    if now < due - _EPSILON:
                        until = due
                    elif not pos:
                        self._tat = max(self._tat, now) + self._interval
                        break
                elif not pos:
                    break
                wake = turn.wake = loop.create_future()
                turn.until = until
                if until is None:
                    await wake  # our time has come: the ones ahead go first, then hand over
                    continue
                if self._real_clock:
                    # The real clock: a loop timer resolves the same future a kick would (no
                    # sleeper task and no asyncio.wait per send: a third of a paced send's CPU).
                    timer = loop.call_later(until - now, _resolve, wake)
                    try:
                        await wake
                    finally:
                        timer.cancel()
                    continue
                sleeper = asyncio.ensure_future(clock.sleep(until - now))
                try:
                    await asyncio.wait((sleeper, wake), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not sleeper.done():
                        sleeper.cancel()
                        await asyncio.wait((sleeper,))
        finally:
            turn.wake = None
            head = queue[0] is turn
            if head:
                queue.popleft()
            else:
                queue.remove(turn)
            if queue:
                if not head:
                    self._wake_all()  # everyone behind moved up one slot
                else:
                    nxt = queue[0]
                    due = self._tat - self._tolerance
                    if nxt.until is None or nxt.until > due + _EPSILON:
                        nxt.kick()

    def _wake_all(self) -> None:
        for turn in self._queue:
            turn.kick()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Turn:
    """One queued waiter: what it sleeps until (None: a hand-over) and how to wake it early."""

    __slots__ = ("until", "wake")

    def __init__(self) -> None:
        self.until: float | None = None
        self.wake: asyncio.Future[None] | None = None

    def kick(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


class RateController:
    """The shared feedback loop; the client calls :meth:`acquire`, :meth:`release`, :meth:`observe`.

    ``rate``: None (no ceiling; cut only after a 429), a number (the ceiling), or "auto".
    """

    def __init__(
        self,
        rate: float | Literal["auto"] | None = None,
        *,
        concurrency: int = 16,
        clock: Clock | None = None,
        settings: RateSettings | None = None,
        pacer: Pacer | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
        remaining_header: str = "X-RateLimit-Remaining",
        reset_header: str = "X-RateLimit-Reset",
        limit_header: str = "X-RateLimit-Limit",
        retry_after_header: str = "Retry-After",
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.settings = s = settings or RateSettings()
        self.clock: Clock = clock or SystemClock()
        self.auto = rate == "auto"
        if (rate is not None and not self.auto) and (
            not isinstance(rate, int | float) or not rate > 0 or not math.isfinite(rate)
        ):
            raise ValueError(f"rate must be a positive number, None or 'auto', got {rate!r}")
        self.ceiling: float | None = None if rate is None or self.auto else float(rate)
        self.concurrency = concurrency
        self._pacer: Pacer = pacer if pacer is not None else ClockPacer(self.clock)
        self._rng = rng or random.Random()
        self._wall = wall
        self._remaining_header = remaining_header
        self._reset_header = reset_header
        self._limit_header = limit_header
        self._retry_after_header = retry_after_header
        # asyncio's semaphore takes a free slot without a trip through the event loop (anyio's
        # CapacityLimiter always checkpoints): ~10 µs less per request, measured.
        self._limiter = asyncio.Semaphore(concurrency)
        self._low_water = s.low_water if s.low_water is not None else concurrency

        now = self.clock.now()
        self.rate: float | None = s.auto_start if self.auto else self.ceiling
        self._pacer.set_rate(self.rate)
        self.in_flight = 0
        self.pauses = 0
        self.paused_until = -math.inf
        self._throttled_once = False
        self._last_max = self.rate or 0.0
        self._last_cut = -math.inf
        self._consecutive = 0
        self._last_update = now
        # Measured send rate (AWS: 0.5 s buckets, smoothed 0.8).
        self._tx_bucket = math.floor(now * 2) / 2
        self._tx_count = 0
        self.measured = 0.0
        # rate="auto": what the server accepted (send times, and send times answered 429).
        self._sends: deque[float] = deque()
        self._refused: deque[float] = deque()
        self._pause_end = -math.inf
        self.learned: float | None = None
        self._probe_every = s.auto_probe_every
        self._probe_step = s.auto_probe
        #: After a big probe failed: the rate it refused (the limit lies below it).
        self._probe_above: float | None = None
        self._probe_wins = 0  # probes in a row that lasted (while no refusal bounds them)
        self._probe_at = math.inf
        self._probing_since: float | None = None
        # X-RateLimit-Remaining samples of the current unsaturated run: (sent_at, remaining).
        self._hdr_samples: deque[tuple[float, int]] = deque()
        self._hdr_cap: int | None = None  # the last X-RateLimit-Limit (the bucket's size)
        # Header pacing: while ``now < _hdr_until`` sends are spaced ``_hdr_gap`` apart.
        self._hdr_until = -math.inf
        self._hdr_gap = 0.0
        self._hdr_next = -math.inf

    # -- the request path ----------------------------------------------------------------------

    async def acquire(self) -> float:
        """Wait for a concurrency slot, any shared pause and the pace; return the send time."""
        await self._limiter.acquire()
        self.in_flight += 1
        try:
            clock = self.clock
            while True:
                now = clock.now()
                if now < self.paused_until:
                    await clock.sleep(self.paused_until - now)
                    continue
                if now < self._hdr_until:
                    slot = self._hdr_next if self._hdr_next > now else now
                    self._hdr_next = slot + self._hdr_gap
                    if slot > now:
                        await clock.sleep(slot - now)
                await self._pacer.wait()
                # A 429 may have arrived while we waited for our slot: never send into a pause.
                now = clock.now()
                if now >= self.paused_until:
                    break
        except BaseException:
            self.release()
            raise
        self._count_send(now)
        return now

    def release(self) -> None:
        """Give the concurrency slot back (after the answer, before any retry backoff)."""
        self.in_flight -= 1
        self._limiter.release()

    def observe(self, sent_at: float, status: int, headers: Mapping[str, str]) -> float | None:
        """Learn from an answer; for a 429 return the pause it caused (seconds from now)."""
        now = self.clock.now()
        if status == 429:
            return self._throttle(sent_at, headers.get(self._retry_after_header), now)
        remaining = headers.get(self._remaining_header)
        if remaining is not None:
            self._pace_to_headers(
                sent_at,
                remaining,
                headers.get(self._reset_header),
                headers.get(self._limit_header),
                now,
            )
        self._consecutive = 0
        elapsed = now - self._last_update
        if elapsed >= self.settings.update_interval:
            self._last_update = now
            self._recover(now, elapsed)
        return None

    # -- internals ---------------------------------------------------------------------------

    def _count_send(self, now: float) -> None:
        if self.auto:
            sends = self._sends
            sends.append(now)
            while sends[0] < now - 3.0:
                sends.popleft()
        self._tx_count += 1
        bucket = math.floor(now * 2) / 2
        if bucket > self._tx_bucket:
            span = bucket - self._tx_bucket
            # A gap (a pause, an idle spell) says nothing about the rate we can sustain.
            if span <= 1.0 and self.paused_until <= self._tx_bucket:
                sample = self._tx_count / span
                self.measured = sample * 0.8 + self.measured * 0.2 if self.measured else sample
            self._tx_count = 0
            self._tx_bucket = bucket

    def _set_rate(self, rate: float | None) -> None:
        if rate is not None:
            rate = max(self.settings.min_rate, rate)
            if self.ceiling is not None:
                rate = min(rate, self.ceiling)
        if rate != self.rate:
            self.rate = rate
            self._pacer.set_rate(rate)

    def _throttle(self, sent_at: float, retry_after: str | None, now: float) -> float:
        s = self.settings
        if sent_at > self._last_cut:
            # A new round of throttling: the answers to requests already on their way when the
            # last one began (up to the concurrency) are that round's, and do not lengthen it.
            self._consecutive += 1
        wait = parse_retry_after(retry_after, self._wall())
        if wait is None:
            exp = s.pause_base * 2.0 ** min(self._consecutive - 1, 30)
            # Jitter in [half, full] of the computed wait: never zero, never a tight loop.
            wait = min(s.pause_cap, exp) * self._rng.uniform(0.5, 1.0)
        wait = min(wait, s.max_pause)
        if self.auto:
            self._refused.append(sent_at)
            while self._refused[0] < now - 3.0:
                self._refused.popleft()
            if self.paused_until <= now:
                self._pause_end = max(self._pause_end, self.paused_until)
        until = now + wait
        if until > self.paused_until:
            if self.paused_until <= now:
                self.pauses += 1
            self.paused_until = until
        # Cut once per round: answers to requests sent before the last cut say nothing new.
        if sent_at > self._last_cut:
            if self.auto:
                self._learn_from_throttle(sent_at, now)
            else:
                self._cut(now)
        return wait

    def _recent_rate(self, now: float) -> float:
        """Sends per second over the last ``auto_window`` seconds (``rate="auto"`` only)."""
        window = self.settings.auto_window
        sends = self._sends
        return (len(sends) - bisect.bisect_right(sends, now - window)) / window

    def _accepted(self, start: float, end: float) -> int:
        """Sends in ``(start, end]`` that were not answered 429 (so far)."""
        sends = self._sends
        refused = self._refused
        n = bisect.bisect_right(sends, end) - bisect.bisect_right(sends, start)
        n -= bisect.bisect_right(refused, end) - bisect.bisect_right(refused, start)
        return n

    def _fit_bucket(self, since: float, at: float) -> float | None:
        """The refill rate R of a token bucket of ``auto_burst_s`` x R that the sends accepted
        in ``[since, at)`` emptied at ``at``; None with too few sends to tell.

        Going back from ``at`` (bucket empty) the bucket held ``accepted - R x span`` at each
        earlier send, so its size is the largest of those, ``B(R)``, which falls as R rises:
        bisect ``B(R) = auto_burst_s x R``, or ``B(R) = X-RateLimit-Limit`` when the server
        said it. One drain cannot tell R from the bucket's size
        (a bigger bucket lasts longer at a lower R); a bucket larger than assumed gives an R
        too high, which the next 429 corrects from a steadier rate.
        """
        s = self.settings
        sends = self._sends
        lo_i = bisect.bisect_left(sends, max(since, at - 3.0))
        hi_i = bisect.bisect_left(sends, at - _EPSILON)
        refused = set(self._refused)
        times = [t for t in list(sends)[lo_i:hi_i] if t not in refused]
        if len(times) < 5:
            return None
        n = len(times)
        burst = self._hdr_cap  # X-RateLimit-Limit, when the server said the bucket's size

        def size(rate: float) -> float:
            # sends accepted in [times[i], at) minus the refill over that span, at its largest
            return max(n - i - rate * (at - t) for i, t in enumerate(times))

        lo, hi = 0.0, n / max(at - times[-1], _EPSILON)
        for _ in range(40):
            mid = (lo + hi) / 2.0
            if size(mid) > (burst if burst is not None else s.auto_burst_s * mid):
                lo = mid
            else:
                hi = mid
        return lo if lo > 0 else None

    def _learn_from_throttle(self, sent_at: float, now: float) -> None:
        """The accepted rate over the second before this 429 estimates the bucket's refill."""
        s = self.settings
        first = self._sends[0] if self._sends else sent_at
        start = max(sent_at - 1.0, self._pause_end, first)
        span = sent_at - start
        # The 429'd send itself is not accepted: count strictly before it.
        accepted = self._accepted(start, sent_at - _EPSILON)
        if span >= 1.0 - _EPSILON and accepted > 0:
            estimate = accepted / span
        elif span >= 0.1 and accepted > 0:
            # Throttled within a second of a full bucket (after a pause, or at the start): the
            # accepted rate is inflated by the bucket (B / span), but the rate sent was too much.
            estimate = 0.9 * min(accepted / span, self.rate or math.inf)
        else:  # too little to go on: cut as CUBIC would
            estimate = s.cubic_beta * (self.learned or self.rate or self.measured or 1.0)
        if not self._throttled_once:
            # The first 429 ends the slow start, whose rate rose fast: the second before it
            # was mostly below the limit. Fit the bucket that was emptied instead.
            fitted = self._fit_bucket(max(self._pause_end, first), sent_at)
            if fitted is not None:  # but a stall of the server empties no bucket: not below
                estimate = max(estimate, fitted)  # what the last second's estimate says
        self._throttled_once = True
        self._last_cut = now
        self._last_update = max(now, self.paused_until)
        resume = max(now, self.paused_until)
        if self._probing_since is not None and self.learned is not None:
            # The probe found the limit between the hold (which went unthrottled) and the probe:
            # back to the hold, and probe less often (or, after a big step, halfway).
            self._probe_failed(resume)
            return
        self._settle_on(estimate, resume)

    def _settle_on(self, limit: float, now: float) -> None:
        s = self.settings
        first = self.learned is None
        self.learned = limit
        self._probing_since = None
        self._probe_at = now + (s.auto_probe_for if first else self._probe_every)
        self._set_rate(limit * s.auto_hold)

    def _probe_failed(self, now: float) -> None:
        """Back to the hold. A small step waits twice as long for the next probe; a big one
        bounds the limit from above, and the next probe, soon, tries halfway (bisection)."""
        s = self.settings
        learned = self.learned
        assert learned is not None
        step = self._probe_step
        self._probe_wins = 0
        if step <= s.auto_probe * 1.5:
            self._probe_every = min(s.auto_probe_max, self._probe_every * 2.0)
            self._probe_step = s.auto_probe
            self._probe_above = None
            self._settle_on(learned, now)
            return
        self._probe_above = learned * (1.0 + step)
        self._probe_step = max(s.auto_probe, step / 2.0)
        self._settle_on(learned, now)
        self._probe_at = now + s.auto_probe_for

    def _learn_from_remaining(self, sent_at: float, left: int, cap: int | None) -> None:
        """Refill = (accepted sends + rise of Remaining) / time, while the bucket is not full."""
        samples = self._hdr_samples
        if self._probing_since is not None and cap is not None and left <= cap // 2:
            # The probe drains the bucket: the limit is below it. Back to the hold, no 429.
            self._probe_failed(self.clock.now())
            samples.clear()
            return
        if cap is None or left >= cap - 1:  # full: it says only that the refill keeps up
            samples.clear()
            return
        samples.append((sent_at, left))
        while samples[0][0] < sent_at - 2.0:
            samples.popleft()
        t0, left0 = samples[0]
        span = sent_at - t0
        # Remaining is whole tokens: +-1 over the span. 0.2 s for a first estimate, then 1 s.
        if span < (0.2 if self.learned is None else 1.0):
            return
        refill = (self._accepted(t0, sent_at) + left - left0) / span
        if refill <= 0:
            return
        if self.learned is None or abs(refill - self.learned) > 0.02 * self.learned:
            self._throttled_once = True
            self._settle_on(refill, self.clock.now())
            samples.clear()

    def _cut(self, now: float) -> None:
        s = self.settings
        # AWS: cut from what was really sent, when that is below the rate allowed.
        base = self.rate if self.rate is not None else (self.measured or 1.0)
        if self.measured:
            base = min(base, self.measured)
        self._throttled_once = True
        self._last_max = base
        self._last_cut = now
        self._last_update = max(now, self.paused_until)  # no growth while everyone waits
        factor = s.cubic_beta if s.algorithm == "cubic" else s.aimd_cut
        self._set_rate(base * factor)

    def _recover(self, now: float, elapsed: float) -> None:
        s = self.settings
        rate = self.rate
        if self.auto and self.learned is not None:
            self._hold_or_probe(now)
            return
        if not self._throttled_once:
            if self.auto and rate is not None:
                if self._hdr_samples:  # Remaining is falling: hold while it shows the refill
                    return
                # Slow start: grow by the time that passed (answers are sparse at a low rate),
                # but never beyond twice what was really sent lately (a slow client does not
                # inflate its allowance).
                grown = rate * s.auto_growth ** min(elapsed, 2.0 * s.update_interval)
                grown = min(grown, max(rate, 2.0 * self._recent_rate(now)))
                self._set_rate(grown)
            return
        if rate is not None and self.ceiling is not None and rate >= self.ceiling:
            return
        if s.algorithm == "cubic":
            new = cubic_rate(now - self._last_cut, self._last_max, s.cubic_beta, s.cubic_scale)
        else:
            new = (rate or 0.0) + s.aimd_step * self._last_max * elapsed
        if self.measured:
            new = min(new, max(rate or 0.0, 2.0 * self.measured))
        if rate is None or new > rate or s.algorithm == "cubic":
            self._set_rate(new)

    def _hold_or_probe(self, now: float) -> None:
        """Hold just under the learned limit; now and then probe gently above it."""
        s = self.settings
        learned = self.learned
        assert learned is not None
        step = self._probe_step
        if self._probing_since is None:
            if now >= self._probe_at:
                self._probing_since = now
                self._set_rate(learned * (1.0 + step))
            return
        lasts = max(s.auto_probe_min_for, s.auto_probe_for * s.auto_probe / step)
        if now - self._probing_since >= lasts:
            # No 429 for a whole probe: the limit is at least the probe's rate. Probe again at
            # once, with twice the step.
            self._probe_every = s.auto_probe_every
            found = learned * (1.0 + step)
            above = self._probe_above
            if above is None:
                # One probe that lasts may be the bucket's slack; two in a row are a trend.
                self._probe_wins += 1
                if self._probe_wins >= 2:
                    self._probe_step = min(s.auto_probe_step_max, step * 2.0)
            elif above > found * (1.0 + 2.0 * s.auto_probe):  # halfway to the known refusal
                self._probe_step = (above / found - 1.0) / 2.0
            else:  # close enough: back to small probes
                self._probe_step = s.auto_probe
                self._probe_above = None
            self._settle_on(found, now)
            self._probe_at = now

    def _pace_to_headers(
        self, sent_at: float, remaining: str, reset: str | None, limit: str | None, now: float
    ) -> None:
        """Near the end of the allowance, space sends at the rate the server gives it back.

        With a limit L, remaining R and reset S, ``(L - R) / S`` is the refill rate of a token
        bucket (the usual limiter; S rounded up makes it an underestimate, on the safe side).
        Without L, the R requests left are spread over the S seconds (a fixed window). "Near
        the end" is R at most the low water mark and, with L known, at most L/4 (a bucket of 10
        that the client keeps at 9 is not running out). ``rate="auto"`` also learns the refill
        rate from how Remaining moves instead (that bound is 10x too low for a bucket of 10 whose
        Reset is rounded up to 1 s).
        """
        try:
            left = int(float(remaining))
            window = float(reset) if reset else 0.0
            cap = int(float(limit)) if limit else None
        except ValueError:
            return
        if self.auto:
            if cap is not None and cap > 0:
                self._hdr_cap = cap
            self._learn_from_remaining(sent_at, left, cap)
            if cap is not None:  # the learned refill paces better than (L - R) / S
                return
        low = self._low_water if cap is None else min(self._low_water, cap // 4)
        if left > low or not math.isfinite(window):
            return
        if window > 1e9:  # an epoch timestamp rather than seconds from now
            window -= self._wall()
        if window <= 0:
            return
        used = cap - left if cap is not None else 0
        self._hdr_gap = window / used if used > 0 else window / (left + 1)
        self._hdr_until = now + window
        if self._hdr_next < now:
            self._hdr_next = now
