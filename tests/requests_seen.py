"""An event that fires when the sandbox has seen N requests (no polling, no wall clock).

Pass ``RequestsSeen().sleep`` as the sandbox's latency sleep (with ``latency_ms > 0`` it is
awaited once per /v3 request); tests then ``await seen.reached(n)``.
"""

from __future__ import annotations

import anyio


class RequestsSeen:
    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[tuple[int, anyio.Event]] = []

    async def sleep(self, seconds: float) -> None:
        self.count += 1
        for n, event in self._waiters:
            if self.count >= n:
                event.set()
        self._waiters = [(n, e) for n, e in self._waiters if not e.is_set()]
        await anyio.sleep(seconds)

    async def reached(self, n: int) -> None:
        if self.count >= n:
            return
        event = anyio.Event()
        self._waiters.append((n, event))
        await event.wait()
