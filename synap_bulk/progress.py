"""Progress while a run works: a live bar on a terminal, a plain line now and then elsewhere.

:class:`Progress` polls a snapshot function (the engine and the client own the counters; this
module only reads them) and shows done/total, failures, the achieved request rate, 429s and an
ETA. It runs as one task in the run's task group until cancelled, then :meth:`Progress.final`
leaves a last line. All timing goes through the injected :class:`~synap_bulk.clock.Clock`, so
tests drive it with a ``FakeClock`` and never wait.

Rates are measured here from the counters' deltas and smoothed exponentially (time constant
:data:`ITEM_RATE_TAU` for the ETA, :data:`REQUEST_RATE_TAU` for req/s), so one slow page or a
429 pause does not make the ETA jump; items skipped because an earlier run did them are left out
of the item rate (they finish instantly and would make the ETA look far too good).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from msgspec import Struct
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .clock import Clock, SystemClock
from .report import format_duration

__all__ = [
    "ITEM_RATE_TAU",
    "REQUEST_RATE_TAU",
    "Progress",
    "RateMeter",
    "Snapshot",
    "format_eta",
]

#: Seconds over which the item rate behind the ETA is smoothed.
ITEM_RATE_TAU = 20.0
#: Seconds over which the displayed request rate is smoothed.
REQUEST_RATE_TAU = 5.0
#: Columns of the live bar when the figures fit beside it.
BAR_WIDTH = 40


class Snapshot(Struct, frozen=True, kw_only=True):
    """The counters progress shows, read at one instant.

    ``total`` is ``None`` while unknown. ``done``, ``failed`` and ``skipped`` (done by an
    earlier run) partition the finished items; ``failed`` counts every item to fix (failed,
    invalid or in doubt) and shows as "to fix", like the summary's row. ``rate`` is the rate
    limit currently applied (0 when nothing paces sends): shown as the limit, not as the
    achieved rate.
    """

    total: int | None = None
    done: int = 0
    failed: int = 0
    skipped: int = 0
    in_flight: int = 0
    requests: int = 0
    rate: float = 0.0
    throttled: int = 0
    retries: int = 0
    elapsed_s: float = 0.0


class RateMeter:
    """An exponentially smoothed rate of a growing counter, fed with (time, count) samples.

    The first sample is the baseline; the estimate starts at the first measured interval in
    which the counter moved (seeding with zero would make early ETAs far too long) and then
    follows ``alpha = 1 - exp(-dt / tau)``, which weighs samples the same at any tick rate.
    """

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self.value: float | None = None
        self._last: tuple[float, int] | None = None

    def update(self, now: float, count: int) -> float | None:
        if self._last is None:
            self._last = (now, count)
            return self.value
        then, before = self._last
        dt = now - then
        if dt <= 0:
            return self.value
        self._last = (now, count)
        instant = max(0, count - before) / dt
        if self.value is None:
            if instant > 0:
                self.value = instant
        else:
            self.value += (1.0 - math.exp(-dt / self.tau)) * (instant - self.value)
        return self.value


def format_eta(seconds: float) -> str:
    """Whole seconds, rounded up, as ``42s``, ``6m12s`` or ``2h05m``."""
    s = math.ceil(seconds)
    return f"{s}s" if s < 60 else format_duration(s)


def _local_time() -> str:
    return time.strftime("%H:%M:%S")


class Progress:
    """Shows a run's progress until cancelled; :meth:`final` (alias :meth:`close`) ends it."""

    def __init__(
        self,
        get_snapshot: Callable[[], Snapshot],
        *,
        console: Console | None = None,
        plain_interval: float = 10.0,
        clock: Clock | None = None,
        refresh_per_second: float = 4.0,
        timestamp: Callable[[], str] | None = None,
    ) -> None:
        self._get = get_snapshot
        self.console = console or Console(stderr=True)
        self.plain_interval = plain_interval
        self.refresh_interval = 1.0 / refresh_per_second
        self._clock: Clock = clock or SystemClock()
        self._timestamp = timestamp or _local_time
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal
        self.items = RateMeter(ITEM_RATE_TAU)
        self.requests = RateMeter(REQUEST_RATE_TAU)
        self.lines = 0  # plain lines printed (tests and callers may read it)
        self._display: Live | None = None
        self._started = False
        self._finished = False

    # -- figures ------------------------------------------------------------------------------

    def sample(self) -> tuple[Snapshot, float | None, float | None]:
        """Read the counters now: the snapshot, the smoothed request rate and the ETA."""
        snap = self._get()
        now = self._clock.now()
        item_rate = self.items.update(now, snap.done + snap.failed)
        request_rate = self.requests.update(now, snap.requests)
        eta: float | None = None
        if snap.total is not None and item_rate:
            remaining = snap.total - snap.done - snap.failed - snap.skipped
            eta = max(0, remaining) / item_rate
        return snap, request_rate, eta

    def line(
        self,
        snap: Snapshot,
        request_rate: float | None,
        eta: float | None,
        *,
        final: bool = False,
    ) -> str:
        """One plain progress line (the format of logs and CI output)."""
        count = f"{snap.done:,}/{snap.total:,}" if snap.total is not None else f"{snap.done:,}"
        parts = [f"{count} done", f"{snap.failed:,} to fix"]
        if snap.skipped:
            parts.append(f"{snap.skipped:,} already done")
        parts.append(f"{request_rate or 0.0:.1f} req/s")
        parts.append(f"{snap.throttled:,} throttled")
        if final:
            parts.append(f"elapsed {format_duration(snap.elapsed_s)}")
        elif eta is not None:
            parts.append(f"ETA {format_eta(eta)}")
        return f"[{self._timestamp()}] " + " · ".join(parts)

    def renderable(
        self,
        snap: Snapshot,
        request_rate: float | None,
        eta: float | None,
        *,
        final: bool = False,
    ) -> RenderableType:
        """The live display: a bar, then the figures (styled, never parsed as markup).

        On one line when the terminal is wide enough; on a narrow one (80 columns) the bar and
        the counts make the first line and the rates the second, rather than wrapping the
        figures into a ragged column beside the bar.
        """
        finished = snap.done + snap.failed + snap.skipped
        total = snap.total
        count = f"{snap.done:,}/{total:,}" if total is not None else f"{snap.done:,}"
        head = Text.assemble(
            (f" {count} done", "bold"),
            " · ",
            (f"{snap.failed:,} to fix", "red" if snap.failed else ""),
        )
        if snap.skipped:
            head.append(f" · {snap.skipped:,} already done")
        tail = Text(f"{request_rate or 0.0:.1f} req/s")
        if snap.rate:
            tail.append(f" (limit {snap.rate:.4g})", "dim")
        tail.append(" · ")
        tail.append(f"{snap.throttled:,} throttled", "yellow" if snap.throttled else "")
        if snap.retries:
            tail.append(f" · {snap.retries:,} retries")
        if final:
            tail.append(f" · elapsed {format_duration(snap.elapsed_s)}")
        elif eta is not None:
            tail.append(f" · ETA {format_eta(eta)}", "cyan")
        else:
            tail.append(f" · {snap.in_flight:,} in flight", "dim")
        width = self.console.width
        one_line = BAR_WIDTH + head.cell_len + 3 + tail.cell_len <= width
        bar_width = BAR_WIDTH if one_line else max(10, min(BAR_WIDTH, width - head.cell_len))
        if total is None:
            bar = ProgressBar(total=None, width=bar_width, pulse=not final)
        else:  # a total of 0 is a full bar, never a division by zero
            completed = min(finished, total) if total else 1
            bar = ProgressBar(
                total=float(max(total, 1)), completed=float(completed), width=bar_width
            )
        grid = Table.grid(padding=0)
        if one_line:
            grid.add_row(bar, Text.assemble(head, " · ", tail))
            return Group(grid)
        grid.add_row(bar, head)
        return Group(grid, Text.assemble("  ", tail))

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Show progress until cancelled (start it in the run's task group)."""
        self._started = True
        if self.live:
            await self._run_live()
        else:
            self.sample()  # baseline for the rate meters
            while True:
                await self._clock.sleep(self.plain_interval)
                self._print(self.line(*self.sample()))

    async def _run_live(self) -> None:
        display = Live(console=self.console, auto_refresh=False, transient=False)
        self._display = display
        display.start()
        try:
            while True:
                display.update(self.renderable(*self.sample()), refresh=True)
                await self._clock.sleep(self.refresh_interval)
        finally:
            self._stop_live()

    def _stop_live(self) -> None:
        display, self._display = self._display, None
        if display is not None:
            display.update(self.renderable(*self.sample(), final=True), refresh=True)
            display.stop()

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        self.lines += 1

    def final(self) -> None:
        """Leave the final state on screen: the bar's last frame, or one last plain line."""
        if self._finished:
            return
        self._finished = True
        if self.live:
            if self._display is not None:
                self._stop_live()
            elif not self._started:
                self.console.print(self.renderable(*self.sample(), final=True))
            return
        self._print(self.line(*self.sample(), final=True))

    close = final
