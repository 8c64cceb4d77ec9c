"""How demanding the sandbox is: counters, the per-token rate limit, seeded faults and latency.

Nothing here touches aiohttp: the app asks these objects what to do and reports what it did, so
the rate limit and the fault schedule are unit-testable with an injected clock and no server.
Every random choice of request number ``seq`` comes from ``random.Random`` seeded with
``(seed, seq)``, so the same seed and the same request sequence give the same faults, jitter and
trace ids, whatever happened to other requests.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable

from msgspec import Struct

from .config import FAULT_KINDS, SandboxConfig

__all__ = [
    "DROPPED",
    "WRITE_FAULTS",
    "Counters",
    "Draw",
    "RateDecision",
    "RateLimiter",
    "SandboxStats",
    "draw",
    "pick_fault",
]

#: ``by_status`` key of requests answered by a dropped connection (no status line at all).
DROPPED = 0

#: Fault kinds that apply the write first; on a read they are never picked.
WRITE_FAULTS = frozenset({"commit-then-500", "commit-then-drop"})
_READ_FAULTS = tuple(k for k in FAULT_KINDS if k not in WRITE_FAULTS)


class SandboxStats(Struct, kw_only=True):
    """A snapshot of what the sandbox saw; ``/_sandbox/stats`` returns the same JSON.

    ``requests``, ``by_status``, ``by_route`` and ``by_token`` count /v3 requests only (the
    control routes and export-file downloads have their own counters), so
    ``requests == sum(by_status.values()) == sum(by_route.values())``. ``by_status[0]`` counts
    dropped connections. ``creates_by_key`` maps a natural key (a user's lowercased email; other
    types as ``"<Type>:<key>"``) to the number of successful creates, so ``max(...) == 1`` proves
    "no duplicates" from the server's side.
    """

    requests: int = 0
    by_status: dict[int, int] = {}
    by_route: dict[str, int] = {}
    by_token: dict[str, int] = {}
    throttled: int = 0
    faults: dict[str, int] = {}
    #: writes that were applied and then answered by a fault (commit-then-*, truncated writes)
    committed_then_failed: int = 0
    resources: dict[str, int] = {}
    duplicate_creates: int = 0
    creates_by_key: dict[str, int] = {}
    #: token label -> number of 429s (each announced a Retry-After window)
    retry_after_announced: dict[str, int] = {}
    #: requests that arrived inside a Retry-After window announced to their token (after the
    #: grace period for requests already on the wire)
    requests_inside_retry_after: int = 0
    inside_retry_after_by_token: dict[str, int] = {}
    in_flight: int = 0
    max_in_flight: int = 0
    control_requests: int = 0
    file_downloads: int = 0


class Counters:
    """The live, mutable counters behind :class:`SandboxStats` (cheap to bump on the hot path)."""

    __slots__ = (
        "by_route",
        "by_status",
        "by_token",
        "committed_then_failed",
        "control_requests",
        "creates_by_key",
        "duplicate_creates",
        "faults",
        "file_downloads",
        "in_flight",
        "inside_by_token",
        "max_in_flight",
        "requests",
        "retry_after_announced",
        "throttled",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.by_route: dict[str, int] = {}
        self.by_token: dict[str, int] = {}
        self.throttled = 0
        self.faults: dict[str, int] = {}
        self.committed_then_failed = 0
        self.duplicate_creates = 0
        self.creates_by_key: dict[str, int] = {}
        self.retry_after_announced: dict[str, int] = {}
        self.inside_by_token: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.control_requests = 0
        self.file_downloads = 0

    def created(self, key: str) -> None:
        self.creates_by_key[key] = self.creates_by_key.get(key, 0) + 1

    def fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def snapshot(self, resources: dict[str, int]) -> SandboxStats:
        return SandboxStats(
            requests=self.requests,
            by_status=dict(self.by_status),
            by_route=dict(self.by_route),
            by_token=dict(self.by_token),
            throttled=self.throttled,
            faults=dict(self.faults),
            committed_then_failed=self.committed_then_failed,
            resources=resources,
            duplicate_creates=self.duplicate_creates,
            creates_by_key=dict(self.creates_by_key),
            retry_after_announced=dict(self.retry_after_announced),
            requests_inside_retry_after=sum(self.inside_by_token.values()),
            inside_retry_after_by_token=dict(self.inside_by_token),
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            control_requests=self.control_requests,
            file_downloads=self.file_downloads,
        )


class RateDecision(Struct, frozen=True):
    """The limiter's answer: allowed or not, and what the X-RateLimit-*/Retry-After say."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  #: whole seconds until the bucket is full again
    retry_after_s: int = 0  #: whole seconds (ceil, >= 1) when refused
    retry_after: str = ""  #: the header value (seconds or HTTP-date)


class _Bucket:
    __slots__ = ("last", "tokens", "windows")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now
        #: announced Retry-After windows still open: (announced at, until)
        self.windows: list[tuple[float, float]] = []


class RateLimiter:
    """A token bucket per token label, with a record of the Retry-After windows it announced.

    ``clock`` is monotonic seconds (``time.monotonic`` by default; tests pass a fake); ``wall``
    is epoch seconds, used only for HTTP-date Retry-After values.
    """

    def __init__(
        self, counters: Counters, clock: Callable[[], float], wall: Callable[[], float]
    ) -> None:
        self.counters = counters
        self.clock = clock
        self.wall = wall
        self._buckets: dict[str, _Bucket] = {}

    def reset(self) -> None:
        self._buckets.clear()

    def check(self, label: str, config: SandboxConfig) -> RateDecision:
        """Take one token for ``label``'s request, or refuse and announce a Retry-After."""
        now = self.clock()
        rate = config.rate
        size = config.bucket_size
        bucket = self._buckets.get(label)
        if bucket is None:
            bucket = self._buckets[label] = _Bucket(size, now)
        else:
            elapsed = max(0.0, now - bucket.last)
            # min() even without elapsed time: a live config change may have shrunk the bucket.
            bucket.tokens = min(size, bucket.tokens + elapsed * rate)
            bucket.last = now
        if bucket.windows:
            self._note_inside(label, bucket, now, config)
        limit = int(size)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return RateDecision(
                allowed=True,
                limit=limit,
                remaining=int(bucket.tokens),
                reset_s=math.ceil((size - bucket.tokens) / rate),
            )
        wait = (1.0 - bucket.tokens) / rate
        seconds = max(1, math.ceil(wait))
        if config.limiter == "blind":  # announces nothing: no window to be inside of
            self.counters.throttled += 1
            return RateDecision(allowed=False, limit=limit, remaining=0, reset_s=0)
        if config.retry_after == "http-date":
            wall_now = self.wall()
            until_wall = math.ceil(wall_now + seconds)
            header = email.utils.formatdate(until_wall, usegmt=True)
            until = now + (until_wall - wall_now)
        else:
            header = str(seconds)
            until = now + seconds
        bucket.windows.append((now, until))
        c = self.counters
        c.throttled += 1
        c.retry_after_announced[label] = c.retry_after_announced.get(label, 0) + 1
        return RateDecision(
            allowed=False,
            limit=limit,
            remaining=0,
            reset_s=math.ceil((size - bucket.tokens) / rate),
            retry_after_s=seconds,
            retry_after=header,
        )

    def _note_inside(self, label: str, bucket: _Bucket, now: float, config: SandboxConfig) -> None:
        grace = config.retry_after_grace_ms / 1000.0
        bucket.windows = [w for w in bucket.windows if w[1] > now]
        if any(start + grace <= now for start, _ in bucket.windows):
            c = self.counters
            c.inside_by_token[label] = c.inside_by_token.get(label, 0) + 1


class Draw(Struct, frozen=True):
    """The seeded random draws of one request (used or not, always drawn in the same order)."""

    fault: float
    kind: float
    jitter: float
    trace_id: str


def draw(seed: int, seq: int) -> Draw:
    """The draws of request number ``seq``: a pure function of ``(seed, seq)``."""
    rng = random.Random(seed * 4_294_967_311 + seq)
    return Draw(
        fault=rng.random(),
        kind=rng.random(),
        jitter=rng.random(),
        trace_id=f"{rng.getrandbits(64):016x}",
    )


def pick_fault(d: Draw, config: SandboxConfig, write: bool) -> str | None:
    """The fault kind for a request with draws ``d``, or None; commit-then-* only on writes."""
    if config.fault_rate <= 0.0 or d.fault >= config.fault_rate:
        return None
    kinds = FAULT_KINDS if write else _READ_FAULTS
    weights = [(k, config.faults.get(k, 0.0)) for k in kinds]
    total = sum(w for _, w in weights)
    if total <= 0.0:
        return None
    point = d.kind * total
    for kind, weight in weights:
        if point < weight:
            return kind
        point -= weight
    return next(k for k, w in reversed(weights) if w > 0)
