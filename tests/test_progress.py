"""Progress: plain lines on a FakeClock, smoothed ETA, and the rich live display."""

from __future__ import annotations

import io

import anyio
import pytest
from rich.console import Console

from synap_bulk.clock import FakeClock
from synap_bulk.progress import Progress, RateMeter, Snapshot, format_eta


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=80), out


class Script:
    """Hands out snapshots in order; the run is cancelled so that final() reads the last one."""

    def __init__(self, snapshots: list[Snapshot]) -> None:
        self.snapshots = snapshots
        self.calls = 0
        self.scope: anyio.CancelScope | None = None

    def __call__(self) -> Snapshot:
        snap = self.snapshots[min(self.calls, len(self.snapshots) - 1)]
        self.calls += 1
        if self.calls == len(self.snapshots) - 1 and self.scope is not None:
            self.scope.cancel()  # takes effect at the progress loop's next sleep
        return snap


async def run_script(progress: Progress, script: Script) -> None:
    async with anyio.create_task_group() as tg:
        script.scope = tg.cancel_scope
        tg.start_soon(progress.run)
    progress.final()


async def test_plain_lines_follow_the_fake_clock() -> None:
    """Off a terminal: a line per interval with counts, smoothed rates and ETA; then a last line."""
    console, out = plain_console()
    clock = FakeClock(start=100.0)
    script = Script(
        [
            Snapshot(total=1000),
            Snapshot(total=1000, done=98, failed=2, requests=120, throttled=1, elapsed_s=10),
            Snapshot(total=1000, done=295, failed=5, requests=360, throttled=12, elapsed_s=20),
            Snapshot(total=1000, done=1234, failed=5, requests=400, throttled=12, elapsed_s=25.5),
        ]
    )
    progress = Progress(
        script, console=console, plain_interval=10.0, clock=clock, timestamp=lambda: "12:00:01"
    )
    assert not progress.live
    await run_script(progress, script)
    # 10 items/s first, then 20/s smoothed with tau 20 s over 10 s: 10 + (1 - e^-0.5) * 10
    # = 13.93/s, 700 left -> 50.2 s, shown rounded up. Requests: 12/s, then 12 + (1 - e^-2) * 12
    # = 22.4/s, then 4/s for the last 10 s: 22.4 + (1 - e^-2) * (4 - 22.4) = 6.5/s.
    assert out.getvalue().splitlines() == [
        "[12:00:01] 98/1,000 done · 2 to fix · 12.0 req/s · 1 throttled · ETA 1m30s",
        "[12:00:01] 295/1,000 done · 5 to fix · 22.4 req/s · 12 throttled · ETA 51s",
        "[12:00:01] 1,234/1,000 done · 5 to fix · 6.5 req/s · 12 throttled · elapsed 25.5s",
    ]
    assert clock.now() == 130.0
    assert clock.slept == [10.0, 10.0, 10.0]


async def test_no_line_before_the_interval_has_passed() -> None:
    """With a clock that only moves when told, nothing is printed until plain_interval elapses."""
    console, out = plain_console()
    clock = FakeClock(auto_advance=False)
    snap = Snapshot(total=None, done=5, skipped=3, requests=7)
    progress = Progress(lambda: snap, console=console, plain_interval=10.0, clock=clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(progress.run)
        while clock.sleepers == 0:
            await anyio.lowlevel.checkpoint()
        clock.advance(9.5)
        await anyio.lowlevel.checkpoint()
        assert progress.lines == 0
        clock.advance(0.5)
        while progress.lines == 0:
            await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    (line,) = out.getvalue().splitlines()
    assert line.endswith("] 5 done · 0 to fix · 3 already done · 0.0 req/s · 0 throttled")


def test_final_without_run_prints_one_line() -> None:
    """final() leaves exactly one line even if the run ended before progress started."""
    console, out = plain_console()
    progress = Progress(
        lambda: Snapshot(total=3, done=3, elapsed_s=4.5), console=console, timestamp=lambda: "T"
    )
    progress.final()
    progress.close()
    assert out.getvalue() == "[T] 3/3 done · 0 to fix · 0.0 req/s · 0 throttled · elapsed 4.5s\n"


def test_rate_meter_smooths_and_survives_stalls() -> None:
    """The rate starts at the first movement, decays during a stall and ignores zero intervals."""
    meter = RateMeter(tau=10.0)
    assert meter.update(0.0, 0) is None
    assert meter.update(5.0, 0) is None  # nothing moved yet: no estimate rather than 0
    assert meter.update(10.0, 50) == pytest.approx(10.0)
    assert meter.update(10.0, 80) == pytest.approx(10.0)
    stalled = meter.update(20.0, 50)
    assert stalled is not None and 0 < stalled < 10.0


def test_format_eta() -> None:
    """ETAs are whole seconds rounded up, then minutes and hours."""
    assert format_eta(0) == "0s"
    assert format_eta(50.2) == "51s"
    assert format_eta(372) == "6m12s"
    assert format_eta(7500) == "2h05m"


async def test_rich_live_display_renders_on_a_terminal() -> None:
    """On a terminal the live bar refreshes ~4x per second and ends on the final figures."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    clock = FakeClock()
    script = Script(
        [
            Snapshot(total=20000),
            Snapshot(total=20000, done=100, failed=3, requests=110, rate=50, throttled=12),
            Snapshot(total=20000, done=200, failed=3, requests=220, rate=50, throttled=12),
            Snapshot(total=20000, done=300, failed=3, requests=330, throttled=12, elapsed_s=9),
        ]
    )
    progress = Progress(script, console=console, clock=clock)
    assert progress.live
    await run_script(progress, script)
    text = out.getvalue()
    # 103 items and 110 requests in the first 0.25 s: 412 items/s, 19,897 left -> 48.3 s.
    assert "100/20,000 done · 3 to fix · 440.0 req/s (limit 50) · 12 throttled · ETA 49s" in text
    assert "300/20,000 done · 3 to fix · 440.0 req/s · 12 throttled · elapsed 9.0s" in text
    assert clock.slept == [0.25, 0.25, 0.25]
    assert progress.lines == 0


def test_rich_without_total_pulses() -> None:
    """An unknown total renders a pulsing bar and the in-flight count instead of an ETA."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    progress = Progress(lambda: Snapshot(done=7, in_flight=4), console=console, clock=FakeClock())
    console.print(progress.renderable(*progress.sample()))
    assert "7 done · 0 to fix · 0.0 req/s · 0 throttled · 4 in flight" in out.getvalue()


def test_narrow_terminal_puts_the_rates_under_the_bar() -> None:
    """At 80 columns the bar and counts fill one line and the rates the next, none wrapped."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, color_system=None)
    snap = Snapshot(total=400, done=193, failed=7, requests=300, rate=100, retries=7)
    progress = Progress(lambda: snap, console=console, clock=FakeClock())
    console.print(progress.renderable(snap, 90.5, 16.0))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" 193/400 done · 7 to fix")
    assert lines[1] == "  90.5 req/s (limit 100) · 0 throttled · 7 retries · ETA 16s"
    assert all(len(line) <= 80 for line in lines)
