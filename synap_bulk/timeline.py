"""A run's figures second by second, for the run report's charts (``runs/<n>/timeline.json``).

:class:`Timeline` runs beside the progress bar in the run's task group and reads the same
snapshot function (the engine and the client own the counters; this only reads them) once a
:attr:`~Timeline.interval`: done, to fix, already done, requests, 429s, the applied rate limit,
retries and requests in flight, each as its running total (rates are the report's deltas);
the first seconds more often, so that a run of a few seconds draws a curve too.
When the run ends, :meth:`Timeline.save` writes them with the client's latency histogram. Time
goes through the injected :class:`~synap_bulk.clock.Clock`, so tests drive it with a
``FakeClock``. A very long run keeps bounded memory: past :data:`MAX_SAMPLES` every other
sample is dropped and the interval doubles.

The file holds counts and timings only: no row, no error text, never the token.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
from msgspec import Struct
from rich.console import Console

from .clock import Clock, SystemClock
from .progress import Snapshot

__all__ = ["COLUMNS", "MAX_SAMPLES", "TIMELINE_FILE", "Timeline", "TimelineFile", "read_timeline"]

TIMELINE_FILE = "timeline.json"
#: What each sample holds, in order: seconds since the run started, then running totals (and
#: ``rate``, the rate limit applied then, 0 when nothing paces sends; ``in_flight`` now).
COLUMNS = (
    "t",
    "done",
    "failed",
    "skipped",
    "requests",
    "throttled",
    "rate",
    "retries",
    "in_flight",
)
#: Samples kept before thinning (two hours at one a second).
MAX_SAMPLES = 7200


class TimelineFile(Struct, kw_only=True):
    """``timeline.json``: samples as rows of :data:`COLUMNS`, and the latency histogram as
    (low ms, high ms, count) per non-empty bucket."""

    version: int = 1
    #: The task's shape: ``items`` (done counts items) or ``stream`` (done counts rows).
    shape: str = "items"
    interval_s: float = 1.0
    columns: list[str] = msgspec.field(default_factory=lambda: list(COLUMNS))
    samples: list[list[float]] = []
    latency_ms: list[tuple[float, float, int]] = []

    def series(self, name: str) -> list[float]:
        """One column's values over time (zeros when the file predates that column)."""
        if name not in self.columns:
            return [0.0] * len(self.samples)
        i = self.columns.index(name)
        return [float(row[i]) if i < len(row) else 0.0 for row in self.samples]


class Timeline:
    """Samples ``snapshot`` every ``interval`` seconds until cancelled; :meth:`save` writes it."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        shape: str = "items",
        clock: Clock | None = None,
        interval: float = 1.0,
        first_interval: float = 0.2,
        first_seconds: float = 5.0,
        max_samples: int = MAX_SAMPLES,
    ) -> None:
        self._get = snapshot
        self.shape = shape
        self._clock: Clock = clock or SystemClock()
        self.interval = interval
        self.first_interval = first_interval
        self.first_seconds = first_seconds
        self.max_samples = max(2, max_samples)
        self.samples: list[list[float]] = []
        self._start: float | None = None

    def sample(self) -> None:
        """Read the counters now and keep them (the first sample is time 0)."""
        now = self._clock.now()
        if self._start is None:
            self._start = now
        s = self._get()
        row: list[float] = [
            round(now - self._start, 3),
            s.done,
            s.failed,
            s.skipped,
            s.requests,
            s.throttled,
            round(s.rate, 3),
            s.retries,
            s.in_flight,
        ]
        if self.samples and self.samples[-1][0] == row[0]:
            self.samples[-1] = row  # the same instant read twice: keep the later counts
        else:
            self.samples.append(row)
        if len(self.samples) > self.max_samples:
            last = self.samples[-1]
            self.samples = self.samples[::2]
            if self.samples[-1] is not last:
                self.samples.append(last)
            self.interval *= 2

    async def run(self) -> None:
        """Sample until cancelled (start it in the run's task group): every
        ``first_interval`` for the first ``first_seconds`` (a short run still draws a curve),
        then every ``interval``."""
        while True:
            self.sample()
            early = self.samples[-1][0] < self.first_seconds
            await self._clock.sleep(self.first_interval if early else self.interval)

    def data(self, latency: Sequence[tuple[float, float, int]] = ()) -> TimelineFile:
        """What :meth:`save` writes, with a last sample taken now (the run's end)."""
        self.sample()
        return TimelineFile(
            shape=self.shape,
            interval_s=self.interval,
            samples=[list(r) for r in self.samples],
            latency_ms=[(round(lo, 3), round(hi, 3), int(n)) for lo, hi, n in latency],
        )

    def save(
        self,
        run_dir: Path,
        latency: Sequence[tuple[float, float, int]] = (),
        console: Console | None = None,
    ) -> Path | None:
        """Write ``timeline.json`` into the run's folder (atomically); a disk error is a
        warning, not the end of the run: the report then says it has no timeline."""
        path = run_dir / TIMELINE_FILE
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(self.data(latency)) + b"\n")
            os.replace(tmp, path)
        except OSError as exc:
            if console is not None:
                console.print(f"warning: cannot write {path}: {exc.strerror}", markup=False)
            return None
        return path


def read_timeline(path: Path) -> TimelineFile | None:
    """The timeline file at ``path``, or None when there is none (a run that ended before its
    first request) or it cannot be read."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=TimelineFile)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
