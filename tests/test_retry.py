"""Retry policy: which failures retry, full-jitter backoff, and the sliding retry budget."""

from __future__ import annotations

import random

import msgspec
import pytest

from synap_bulk.clock import FakeClock
from synap_bulk.errors import (
    ApiError,
    BadRequest,
    ConnectError,
    ConnectionDropped,
    MalformedResponse,
    NotFound,
    RateLimited,
    RequestTimeout,
    ServerError,
    SynapBulkError,
    Unauthorized,
)
from synap_bulk.retry import RetryBudget, RetryPolicy, backoff, is_retryable


def api(cls: type[ApiError], status: int) -> ApiError:
    return cls(method="GET", path="/v3/users", status=status)


def test_backoff_is_full_jitter_below_a_doubling_capped_ceiling() -> None:
    """Each wait lies in [0, min(cap, base * 2^(attempt-1))] and actually spreads over it."""
    policy = RetryPolicy(base=0.5, cap=4.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (40, 4.0)]:
        waits = [backoff(attempt, policy, rng) for _ in range(300)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert min(waits) < ceiling * 0.1 and max(waits) > ceiling * 0.9


def test_backoff_is_a_pure_function_of_its_random_source() -> None:
    """The same seed gives the same waits: nothing else feeds the computation."""
    policy = RetryPolicy()
    a = [backoff(n, policy, random.Random(3)) for n in range(1, 8)]
    b = [backoff(n, policy, random.Random(3)) for n in range(1, 8)]
    assert a == b


def test_policy_is_a_frozen_struct() -> None:
    """A policy cannot be changed after it is made, and round-trips as data."""
    policy = RetryPolicy(max_attempts=3)
    with pytest.raises(AttributeError):
        policy.max_attempts = 9  # type: ignore[misc]
    assert msgspec.convert(msgspec.to_builtins(policy), RetryPolicy) == policy


@pytest.mark.parametrize(
    ("error", "method", "idempotent", "expected"),
    [
        (api(RateLimited, 429), "POST", None, True),
        (api(ServerError, 500), "GET", None, True),
        (api(ServerError, 502), "DELETE", None, True),
        (api(ServerError, 503), "PATCH", None, True),
        (api(ServerError, 504), "GET", None, True),
        (api(ServerError, 500), "POST", None, False),
        (api(ServerError, 500), "POST", True, True),
        (api(ServerError, 500), "PATCH", False, False),
        (api(ServerError, 501), "GET", None, False),
        (api(BadRequest, 400), "GET", None, False),
        (api(NotFound, 404), "GET", True, False),
        (api(Unauthorized, 401), "GET", True, False),
        (ConnectError("refused"), "POST", None, True),
        (ConnectionDropped("reset"), "POST", None, False),
        (ConnectionDropped("reset"), "POST", True, True),
        (RequestTimeout("slow"), "GET", None, True),
        (RequestTimeout("slow"), "POST", None, False),
        (MalformedResponse("bad"), "GET", None, False),
    ],
)
def test_which_failures_are_retried(
    error: SynapBulkError, method: str, idempotent: bool | None, expected: bool
) -> None:
    """429, listed 5xx and transport errors retry; other 4xx never; POST only when marked safe."""
    assert is_retryable(error, method, idempotent, RetryPolicy()) is expected


def test_budget_allows_a_minimum_then_a_share_of_requests() -> None:
    """With few requests the minimum applies; with many, retries stay under the ratio."""
    clock = FakeClock()
    budget = RetryBudget(RetryPolicy(budget_ratio=0.1, budget_min_retries=3), clock)
    for _ in range(10):
        budget.record_request()
    assert [budget.try_retry() for _ in range(4)] == [True, True, True, False]
    for _ in range(90):
        budget.record_request()
    assert budget.window_counts == (100, 3)
    granted = sum(budget.try_retry() for _ in range(20))
    assert granted == 7  # 10% of 100 requests in the window


def test_budget_window_slides() -> None:
    """Retries older than the window stop counting against the budget."""
    clock = FakeClock()
    budget = RetryBudget(RetryPolicy(budget_window=5.0, budget_min_retries=2), clock)
    budget.record_request()
    assert budget.try_retry() and budget.try_retry() and not budget.try_retry()
    clock.advance(5.0)
    assert budget.window_counts == (0, 0)
    assert budget.try_retry()


def test_budget_says_when_a_refused_retry_will_be_allowed() -> None:
    """retry_at is now while retries remain, else the moment enough old buckets leave."""
    clock = FakeClock(start=100.0)
    budget = RetryBudget(RetryPolicy(budget_min_retries=2, budget_ratio=0.0), clock)
    assert budget.retry_at() == 100.0
    assert budget.try_retry()
    clock.advance(3.0)
    assert budget.try_retry() and not budget.try_retry()
    assert budget.retry_at() == 110.0  # the retry of second 100 leaves the 10 s window
    clock.advance(7.0)
    assert budget.retry_at() == 110.0 and budget.try_retry()


def test_budget_with_no_minimum_and_no_traffic_can_never_retry() -> None:
    """With a zero minimum and nothing sent, waiting cannot help: retry_at is infinite."""
    clock = FakeClock()
    budget = RetryBudget(RetryPolicy(budget_min_retries=0, budget_ratio=0.1), clock)
    assert not budget.try_retry()
    assert budget.retry_at() == float("inf")
