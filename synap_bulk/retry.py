"""Which failures are retried, how long to wait, and when to stop.

The policy is data (a frozen Struct) and the wait is a pure function of (attempt, policy, random
source), so both are tested without sleeping. The retry budget keeps retries a small share of
recent traffic (the Google SRE "retry budget"), so a sick server is not hammered by every
concurrent task retrying at once: a retry the budget refuses now waits until the window allows
it (:meth:`RetryBudget.retry_at`); it fails only when that is past the request's deadline.
"""

from __future__ import annotations

import random
from collections import deque

from msgspec import Struct

from .clock import Clock
from .errors import ApiError, SynapBulkError, TransportError, Unauthorized

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "RetryBudget",
    "RetryPolicy",
    "backoff",
    "is_retryable",
]

#: Statuses worth another try: throttled, or a server fault the docs call transient.
RETRY_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})

#: Methods that may be repeated without changing the outcome (JSON:API PATCH and relationship
#: writes have set semantics, so they are idempotent too).
IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})


class RetryPolicy(Struct, frozen=True, kw_only=True):
    """How a request is retried. Times in seconds; ``deadline`` bounds one request in total."""

    #: Tries of one request for server faults and transport errors (the first one included).
    max_attempts: int = 5
    #: Extra tries allowed for 429 answers: the server asked us to wait, it is not a fault, and
    #: the shared pause already spaces them.
    max_throttled: int = 20
    #: Backoff of the first retry, doubled each retry up to ``cap`` (full jitter below it).
    base: float = 0.2
    cap: float = 20.0
    #: No retry starts once this many seconds have passed since the first try.
    deadline: float = 120.0
    #: Retries may be at most this share of requests over the sliding window...
    budget_ratio: float = 0.15
    budget_window: float = 10.0
    #: ...but this many retries per window are always allowed (a quiet client can still retry).
    budget_min_retries: int = 10
    statuses: frozenset[int] = RETRY_STATUSES


def backoff(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1 = first retry)."""
    exp = policy.base * (2.0 ** min(max(attempt - 1, 0), 60))
    return rng.uniform(0.0, min(policy.cap, exp))


def is_retryable(
    error: SynapBulkError, method: str, idempotent: bool | None, policy: RetryPolicy
) -> bool:
    """Whether ``error`` may be retried for this request.

    A 429 was refused before any work and a :class:`~synap_bulk.errors.ConnectError` never left,
    so both are safe for any method; anything else whose outcome is unknown is retried only when
    the request is idempotent (by method, or because the caller said so).
    """
    if isinstance(error, Unauthorized):
        return False
    safe = idempotent if idempotent is not None else method in IDEMPOTENT_METHODS
    if isinstance(error, ApiError):
        if error.status not in policy.statuses:
            return False
        return error.status == 429 or safe
    if isinstance(error, TransportError):
        return error.never_sent or safe
    return False


class RetryBudget:
    """Counts requests and retries over a sliding window of one-second buckets."""

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self._ratio = policy.budget_ratio
        self._min = policy.budget_min_retries
        self._window = max(1, int(policy.budget_window))
        self._clock = clock
        # (second, requests, retries), oldest first.
        self._buckets: deque[list[int]] = deque()
        self._requests = 0
        self._retries = 0

    def _bucket(self) -> list[int]:
        sec = int(self._clock.now())
        buckets = self._buckets
        while buckets and buckets[0][0] <= sec - self._window:
            old = buckets.popleft()
            self._requests -= old[1]
            self._retries -= old[2]
        if not buckets or buckets[-1][0] != sec:
            buckets.append([sec, 0, 0])
        return buckets[-1]

    def record_request(self) -> None:
        """Count one request sent (first tries and retries alike)."""
        self._bucket()[1] += 1
        self._requests += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget, or say no when retries are already too many."""
        bucket = self._bucket()
        allowed = max(float(self._min), self._ratio * self._requests)
        if self._retries + 1 > allowed:
            return False
        bucket[2] += 1
        self._retries += 1
        return True

    def retry_at(self) -> float:
        """The earliest time at which :meth:`try_retry` can say yes (now if it would already),
        as old buckets leave the window; ``inf`` when waiting can never help."""
        bucket = self._bucket()
        requests, retries = self._requests, self._retries
        if retries + 1 <= max(float(self._min), self._ratio * requests):
            return self._clock.now()
        for old in self._buckets:
            if old is bucket:
                break
            requests -= old[1]
            retries -= old[2]
            if retries + 1 <= max(float(self._min), self._ratio * requests):
                return float(old[0] + self._window)
        # Only the current second is left; once it leaves too, the window is empty.
        return float(bucket[0] + self._window) if self._min >= 1 else float("inf")

    @property
    def window_counts(self) -> tuple[int, int]:
        """(requests, retries) in the current window."""
        self._bucket()
        return self._requests, self._retries
