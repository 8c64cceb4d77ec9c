"""Injected time: the limiter, the retry loop and the engine read the clock through this.

Tests use :class:`FakeClock` so that nothing waits on the wall clock.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Monotonic seconds and a way to wait for them."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``anyio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when told to (or, with ``auto_advance``, when slept on).

    With ``auto_advance=True`` (the default) ``sleep(s)`` moves time forward by ``s`` at once and
    yields to the event loop, so a retry loop or limiter runs to completion without waiting and
    the test reads back ``now()`` and ``slept``. With ``auto_advance=False`` sleepers wait until
    :meth:`advance` moves time past their deadline.
    """

    def __init__(self, start: float = 0.0, *, auto_advance: bool = True) -> None:
        self._now = start
        self.auto_advance = auto_advance
        self.slept: list[float] = []
        self._waiters: list[tuple[float, anyio.Event]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        if self.auto_advance:
            self._now += seconds
            self._wake()
            await anyio.lowlevel.checkpoint()
            return
        deadline = self._now + seconds
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._waiters.append((deadline, event))
        await event.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        self._now += seconds
        self._wake()

    @property
    def sleepers(self) -> int:
        return len(self._waiters)

    def _wake(self) -> None:
        due = [(d, e) for d, e in self._waiters if d <= self._now]
        self._waiters = [(d, e) for d, e in self._waiters if d > self._now]
        for _, event in due:
            event.set()
