"""Request latency: a log-bucketed histogram with percentiles, for the client's statistics."""

from __future__ import annotations

import bisect
import math


class _Latency:
    """A log-bucketed histogram (about 4% resolution): O(1) to record, bounded memory."""

    _PER_OCTAVE = 16

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.total = 0

    def record(self, ms: float) -> None:
        i = int(math.log2(ms + 1.0) * self._PER_OCTAVE)
        self._counts[i] = self._counts.get(i, 0) + 1
        self.total += 1

    def percentile(self, q: float) -> float:
        if not self.total:
            return 0.0
        keys = sorted(self._counts)
        cum: list[int] = []
        acc = 0
        for k in keys:
            acc += self._counts[k]
            cum.append(acc)
        i = bisect.bisect_left(cum, q * self.total)
        k = keys[min(i, len(keys) - 1)]
        # The middle of the bucket, back in milliseconds.
        return float(2.0 ** ((k + 0.5) / self._PER_OCTAVE) - 1.0)

    def buckets(self) -> list[tuple[float, float, int]]:
        """Every non-empty bucket as (low ms, high ms, count), lowest first (for charts)."""
        k = self._PER_OCTAVE
        return [
            (2.0 ** (i / k) - 1.0, 2.0 ** ((i + 1) / k) - 1.0, n)
            for i, n in sorted(self._counts.items())
        ]
