"""The runner's wiring policies."""

from __future__ import annotations

import pytest

from synap_bulk.items import Safety
from synap_bulk.runner import engine_workers


@pytest.mark.parametrize("safety", [Safety.IDEMPOTENT, Safety.RECONCILABLE])
def test_repeatable_tasks_run_four_workers_a_request_slot(safety: Safety) -> None:
    """Items waiting on a group batch or a backoff must not leave request slots idle."""
    assert engine_workers(16, safety) == 64
    assert engine_workers(1, safety) == 4


def test_unsafe_tasks_keep_few_items_marked_but_unsent() -> None:
    """An unsafe item marked in flight that never left is in doubt after a crash: few of them."""
    assert engine_workers(16, Safety.UNSAFE) == 20
    assert engine_workers(1, Safety.UNSAFE) == 3
