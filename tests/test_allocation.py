"""Property tests of synap_bulk.allocation: every constraint holds for every strategy."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synap_bulk.allocation import (
    STRATEGIES,
    Allocation,
    AttemptSlot,
    MarkerInfo,
    Strategy,
    allocate,
    id_sort_key,
)

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def problems(draw: st.DrawFn, *, constrained: bool = True) -> dict[str, Any]:
    """A random pool, attempts (some candidates are also markers), loads and constraints."""
    n_markers = draw(st.integers(0, 8))
    marker_ids = [f"m{i}" for i in range(n_markers)]
    n_attempts = draw(st.integers(0, 25))
    # Candidate ids overlap the marker ids now and then: nobody may mark their own attempt.
    candidate_pool = [f"c{i}" for i in range(10)] + (marker_ids if constrained else [])
    markers = [
        MarkerInfo(
            marker_id=mid,
            label=f"{mid}@example.edu",
            current_load=draw(st.integers(0, 5)) if constrained else 0,
            pool=draw(st.booleans()) or not constrained,
        )
        for mid in marker_ids
    ]
    attempts = []
    for i in range(n_attempts):
        cand = draw(st.sampled_from(candidate_pool))
        already: frozenset[str] = frozenset()
        allowed: frozenset[str] | None = None
        if constrained and marker_ids:
            already = frozenset(draw(st.lists(st.sampled_from(marker_ids), max_size=2)))
            if draw(st.booleans()):
                allowed = frozenset(draw(st.lists(st.sampled_from(marker_ids), max_size=8)))
        attempts.append(
            AttemptSlot(attempt_id=str(i), candidate_id=cand, already=already, allowed=allowed)
        )
    exclusions: set[tuple[str, str]] = set()
    if constrained and marker_ids:
        pairs = st.tuples(st.sampled_from(marker_ids), st.sampled_from(candidate_pool))
        exclusions = set(draw(st.lists(pairs, max_size=20)))
    return {
        "attempts": draw(st.permutations(attempts)),
        "markers": draw(st.permutations(markers)),
        "strategy": draw(st.sampled_from(STRATEGIES)),
        "per_attempt": draw(st.integers(1, 3)),
        "max_per_marker": draw(st.none() | st.integers(0, 8)) if constrained else None,
        "exclusions": exclusions,
        "seed": draw(st.integers(0, 2**32)),
    }


def _run(p: dict[str, Any]) -> Allocation:
    return allocate(
        p["attempts"],
        p["markers"],
        strategy=p["strategy"],
        per_attempt=p["per_attempt"],
        max_per_marker=p["max_per_marker"],
        exclusions=p["exclusions"],
        seed=p["seed"],
    )


@SETTINGS
@given(problems())
def test_every_constraint_is_honoured(p: dict[str, Any]) -> None:
    """No exclusion, own attempt, duplicate, non-pool marker or max_per_marker is ever violated."""
    result = _run(p)
    slots = {a.attempt_id: a for a in p["attempts"]}
    markers = {m.marker_id: m for m in p["markers"]}
    assert len(set(result.assignments)) == len(result.assignments)
    new = Counter(mid for _, mid in result.assignments)
    for attempt_id, mid in result.assignments:
        slot = slots[attempt_id]
        assert markers[mid].pool
        assert mid not in slot.already
        assert mid != slot.candidate_id
        assert (mid, slot.candidate_id) not in p["exclusions"]
        assert slot.allowed is None or mid in slot.allowed
    for mid, m in markers.items():
        assert result.load_before[mid] == m.current_load
        assert result.load_after[mid] == m.current_load + new[mid]
        if p["max_per_marker"] is not None and new[mid]:
            assert result.load_after[mid] <= p["max_per_marker"]


@SETTINGS
@given(problems())
def test_no_attempt_is_lost(p: dict[str, Any]) -> None:
    """Each attempt ends with exactly per_attempt markers, or none new and a reported reason."""
    result = _run(p)
    got = result.by_attempt()
    short = {u.attempt_id: u for u in result.unsatisfied}
    for slot in p["attempts"]:
        need = max(0, p["per_attempt"] - len(slot.already))
        if slot.attempt_id in short:
            u = short[slot.attempt_id]
            assert slot.attempt_id not in got
            assert u.needed == need > 0
            assert u.reason.startswith("needs ")
        else:
            assert len(got.get(slot.attempt_id, [])) == need


@SETTINGS
@given(problems(), st.randoms(use_true_random=False))
def test_same_seed_same_allocation(p: dict[str, Any], shuffler: Any) -> None:
    """The allocation depends on the content and the seed only, not on the input order."""
    first = _run(p)
    again = dict(p)
    again["attempts"] = list(p["attempts"])
    again["markers"] = list(p["markers"])
    shuffler.shuffle(again["attempts"])
    shuffler.shuffle(again["markers"])
    assert _run(again) == first


@SETTINGS
@given(problems(constrained=False))
def test_balanced_without_constraints_evens_the_load(p: dict[str, Any]) -> None:
    """With no loads, exclusions or limits, balanced leaves max-min load <= 1."""
    p["strategy"] = "balanced"
    result = _run(p)
    loads = list(result.load_after.values())
    if loads:
        assert max(loads) - min(loads) <= 1


@SETTINGS
@given(problems())
def test_balanced_never_widens_the_spread(p: dict[str, Any]) -> None:
    """Without exclusions or exam pools, balanced never widens the max-min spread beyond 1."""
    p["strategy"] = "balanced"
    p["exclusions"] = set()
    p["max_per_marker"] = None
    p["markers"] = [
        MarkerInfo(marker_id=m.marker_id, current_load=m.current_load) for m in p["markers"]
    ]
    p["attempts"] = [
        AttemptSlot(attempt_id=a.attempt_id, candidate_id=f"cand-{a.attempt_id}")
        for a in p["attempts"]
    ]
    result = _run(p)
    if result.load_before:
        before = max(result.load_before.values()) - min(result.load_before.values())
        after = max(result.load_after.values()) - min(result.load_after.values())
        assert after <= max(before, 1)


def _markers(n: int) -> list[MarkerInfo]:
    return [MarkerInfo(marker_id=f"m{i}", label=f"m{i}@x") for i in range(n)]


def _attempts(n: int) -> list[AttemptSlot]:
    return [AttemptSlot(attempt_id=str(i), candidate_id=f"c{i}") for i in range(1, n + 1)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_double_marking_gives_two_distinct_markers(strategy: Strategy) -> None:
    """per_attempt=2 gives every attempt two different markers."""
    result = allocate(_attempts(10), _markers(3), strategy=strategy, per_attempt=2, seed=7)
    got = result.by_attempt()
    assert len(got) == 10
    assert all(len(set(ms)) == 2 for ms in got.values())
    assert not result.unsatisfied


def test_round_robin_cycles_through_every_marker() -> None:
    """Round-robin hands out attempts in a fixed cycle: each marker once before any twice."""
    result = allocate(_attempts(8), _markers(4), strategy="round-robin", seed=3)
    order = [mid for _, mid in result.assignments]
    assert sorted(order[:4]) == ["m0", "m1", "m2", "m3"]
    assert order[4:] == order[:4]


def test_round_robin_start_depends_on_the_seed() -> None:
    """Different seeds start the cycle at different markers (for some pair of seeds)."""
    firsts = {
        allocate(_attempts(1), _markers(5), strategy="round-robin", seed=s).assignments[0][1]
        for s in range(20)
    }
    assert len(firsts) > 1


def test_balanced_fills_the_least_loaded_first() -> None:
    """Balanced counts the load already on the server: the idle marker gets the work."""
    markers = [
        MarkerInfo(marker_id="busy", current_load=5),
        MarkerInfo(marker_id="idle", current_load=0),
    ]
    result = allocate(_attempts(4), markers, strategy="balanced", seed=1)
    assert [mid for _, mid in result.assignments] == ["idle"] * 4
    assert result.load_after == {"busy": 5, "idle": 4}


def test_already_assigned_markers_count_towards_per_attempt() -> None:
    """An attempt that already has one of two markers gets exactly one more, not the same one."""
    slot = AttemptSlot(attempt_id="1", candidate_id="c", already=frozenset({"m0"}))
    result = allocate([slot], _markers(3), strategy="balanced", per_attempt=2, seed=0)
    assert len(result.assignments) == 1
    assert result.assignments[0][1] != "m0"


def test_unsatisfied_reason_names_the_binding_constraints() -> None:
    """The reason counts the markers excluded and those at their limit."""
    markers = [
        MarkerInfo(marker_id="a"),
        MarkerInfo(marker_id="b"),
        MarkerInfo(marker_id="c", current_load=1),
        MarkerInfo(marker_id="d"),
    ]
    slot = AttemptSlot(attempt_id="9", candidate_id="cand")
    result = allocate(
        [slot],
        markers,
        strategy="balanced",
        per_attempt=2,
        max_per_marker=1,
        exclusions={("a", "cand"), ("b", "cand")},
    )
    assert result.assignments == []
    [u] = result.unsatisfied
    assert (u.attempt_id, u.needed) == ("9", 2)
    assert u.reason == "needs 2 more markers, only 1 eligible (2 excluded, 1 at max_per_marker (1))"


def test_empty_pool_is_reported() -> None:
    """With no markers at all, every attempt is reported, none silently dropped."""
    result = allocate(_attempts(2), [], strategy="random")
    assert [u.reason for u in result.unsatisfied] == [
        "needs 1 marker, but the pool has no markers"
    ] * 2


def test_bad_arguments_are_refused() -> None:
    """Nonsense settings raise instead of producing a quiet, wrong allocation."""
    with pytest.raises(ValueError, match="per_attempt"):
        allocate([], [], strategy="balanced", per_attempt=0)
    with pytest.raises(ValueError, match="unknown strategy"):
        allocate([], [], strategy="fair")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="listed twice"):
        allocate(_attempts(1) * 2, [], strategy="balanced")


def test_ids_sort_numerically() -> None:
    """Numeric ids sort as numbers, so attempt 10 comes after attempt 9."""
    assert sorted(["10", "9", "b", "a"], key=id_sort_key) == ["9", "10", "a", "b"]
