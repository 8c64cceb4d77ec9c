"""Who marks what: fair, reproducible, constrained allocation of markers to attempts.

Pure functions over plain data (no I/O), so the same inputs and seed always give the same
allocation, ``plan`` and ``run`` agree, and property tests can check every constraint. The
constraints hold for every strategy:

- a marker is never given an attempt of a candidate excluded for them (a tutor and their own
  students), nor an attempt of their own;
- never twice on one attempt (markers already on it count towards ``per_attempt``);
- never beyond ``max_per_marker``, counting the assignments already on the server;
- only markers of the pool (and of the attempt's exam pool, when it has one) are chosen.

An attempt gets all the markers it still needs or none: one that cannot be served in full is
reported in :attr:`Allocation.unsatisfied` with the constraint that bound it, so no attempt is
silently left short.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Collection, Iterable, Sequence
from typing import Literal

from msgspec import Struct

__all__ = [
    "STRATEGIES",
    "Allocation",
    "AttemptSlot",
    "MarkerInfo",
    "Strategy",
    "Unsatisfied",
    "allocate",
    "id_sort_key",
]

Strategy = Literal["round-robin", "balanced", "random"]
STRATEGIES: tuple[Strategy, ...] = ("round-robin", "balanced", "random")


class AttemptSlot(Struct, frozen=True, kw_only=True):
    """An attempt to be given markers for one role."""

    attempt_id: str
    candidate_id: str
    #: Markers already on the attempt for this role: they count towards ``per_attempt``.
    already: frozenset[str] = frozenset()
    #: The markers of this attempt's exam pool; None when every pool marker may mark it.
    allowed: frozenset[str] | None = None


class MarkerInfo(Struct, frozen=True, kw_only=True):
    """A marker: id, label for people (email), load already on the server, pool membership."""

    marker_id: str
    label: str = ""
    #: Assignments already on the server (for this role, over the attempts in scope).
    current_load: int = 0
    #: False when the marker is not in the role's pool: such a marker is never chosen.
    pool: bool = True


class Unsatisfied(Struct, frozen=True):
    """An attempt that could not get all its markers, how many it lacks, and why."""

    attempt_id: str
    needed: int
    reason: str


class Allocation(Struct, frozen=True, kw_only=True):
    """The result: new (attempt, marker) pairs, the attempts left short, loads before/after."""

    assignments: list[tuple[str, str]]
    unsatisfied: list[Unsatisfied]
    load_before: dict[str, int]
    load_after: dict[str, int]

    def by_attempt(self) -> dict[str, list[str]]:
        """New markers per attempt, in the order they were chosen."""
        out: dict[str, list[str]] = {}
        for attempt_id, marker_id in self.assignments:
            out.setdefault(attempt_id, []).append(marker_id)
        return out


def id_sort_key(value: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the others as text: a stable order for any id."""
    if value.isdigit():
        return (0, int(value), value)
    return (1, 0, value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def allocate(
    attempts: Sequence[AttemptSlot],
    markers: Sequence[MarkerInfo],
    *,
    strategy: Strategy,
    per_attempt: int = 1,
    max_per_marker: int | None = None,
    exclusions: Collection[tuple[str, str]] = frozenset(),
    seed: int = 0,
) -> Allocation:
    """Give each attempt markers until it has ``per_attempt`` of them; see the module docstring.

    ``balanced`` picks the markers with the fewest assignments (server load plus this run's)
    first, ties broken by a seeded order, and so leaves max-min load <= 1 when nothing
    constrains it. ``round-robin`` walks the markers cyclically from a seeded start, skipping
    the ineligible. ``random`` draws among the eligible with a seeded generator. Inputs are
    sorted by id first, so the result depends only on their content and the seed.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
    if per_attempt < 1:
        raise ValueError("per_attempt must be at least 1")
    if max_per_marker is not None and max_per_marker < 0:
        raise ValueError("max_per_marker must not be negative")

    slots = sorted(attempts, key=lambda a: id_sort_key(a.attempt_id))
    seen_attempts: set[str] = set()
    for slot in slots:
        if slot.attempt_id in seen_attempts:
            raise ValueError(f"attempt {slot.attempt_id} is listed twice")
        seen_attempts.add(slot.attempt_id)
    by_id: dict[str, MarkerInfo] = {}
    for m in markers:
        if m.marker_id in by_id:
            raise ValueError(f"marker {m.marker_id} is listed twice")
        by_id[m.marker_id] = m
    ordered = [by_id[k] for k in sorted(by_id, key=id_sort_key)]
    pool = [m.marker_id for m in ordered if m.pool]

    rng = random.Random(seed)
    # A seeded order of the pool: the tie-break of "balanced" and the cycle of "round-robin".
    cycle = list(pool)
    rng.shuffle(cycle)
    rank = {mid: i for i, mid in enumerate(cycle)}

    load = {m.marker_id: m.current_load for m in ordered}
    load_before = dict(load)
    excluded = frozenset(exclusions)
    by_candidate: dict[str, set[str]] = {}
    for mid, cid in excluded:
        by_candidate.setdefault(cid, set()).add(mid)
    no_one: frozenset[str] = frozenset()
    cap = max_per_marker
    assignments: list[tuple[str, str]] = []
    unsatisfied: list[Unsatisfied] = []
    cursor = 0
    n_cycle = len(cycle)
    # "balanced" keeps the pool sorted by (load, seeded rank) and re-files a marker when chosen.
    queue = sorted((load[mid], rank[mid], mid) for mid in pool)

    for slot in slots:
        already = slot.already
        need = per_attempt - len(already)
        if need <= 0:
            continue
        cand = slot.candidate_id
        allowed = slot.allowed
        barred = by_candidate.get(cand, no_one)
        chosen: list[str] = []
        if strategy == "balanced":
            for entry in queue:
                mid = entry[2]
                if cap is not None and entry[0] >= cap:
                    break  # sorted by load: everyone after is at the limit too
                if (
                    mid in already
                    or mid == cand
                    or mid in barred
                    or (allowed is not None and mid not in allowed)
                ):
                    continue
                chosen.append(mid)
                if len(chosen) == need:
                    break
        elif strategy == "random":
            eligible = [
                mid
                for mid in pool
                if mid not in already
                and mid != cand
                and mid not in barred
                and (allowed is None or mid in allowed)
                and (cap is None or load[mid] < cap)
            ]
            if len(eligible) >= need:
                chosen = rng.sample(eligible, need)
        else:
            for step in range(n_cycle):
                mid = cycle[(cursor + step) % n_cycle]
                if (
                    mid in already
                    or mid == cand
                    or mid in barred
                    or (allowed is not None and mid not in allowed)
                    or (cap is not None and load[mid] >= cap)
                ):
                    continue
                chosen.append(mid)
                if len(chosen) == need:
                    cursor = (cursor + step + 1) % n_cycle
                    break
        if len(chosen) < need:
            reason = _why(slot, need, pool, load, excluded, max_per_marker)
            unsatisfied.append(Unsatisfied(slot.attempt_id, need, reason))
            continue
        for mid in chosen:
            if strategy == "balanced":
                queue.remove((load[mid], rank[mid], mid))
                bisect.insort(queue, (load[mid] + 1, rank[mid], mid))
            load[mid] += 1
            assignments.append((slot.attempt_id, mid))

    return Allocation(
        assignments=assignments,
        unsatisfied=unsatisfied,
        load_before=load_before,
        load_after=load,
    )


def _why(
    slot: AttemptSlot,
    need: int,
    pool: Iterable[str],
    load: dict[str, int],
    excluded: frozenset[tuple[str, str]],
    max_per_marker: int | None,
) -> str:
    """Name the constraints that left ``slot`` short, counting each pool marker once."""
    members = list(pool)
    if not members:
        return f"needs {_plural(need, 'marker')}, but the pool has no markers"
    counts = {"already": 0, "own": 0, "outside": 0, "excluded": 0, "full": 0}
    eligible = 0
    for mid in members:
        if mid in slot.already:
            counts["already"] += 1
        elif mid == slot.candidate_id:
            counts["own"] += 1
        elif slot.allowed is not None and mid not in slot.allowed:
            counts["outside"] += 1
        elif (mid, slot.candidate_id) in excluded:
            counts["excluded"] += 1
        elif max_per_marker is not None and load[mid] >= max_per_marker:
            counts["full"] += 1
        else:
            eligible += 1
    parts = []
    if counts["excluded"]:
        parts.append(f"{counts['excluded']} excluded")
    if counts["full"]:
        parts.append(f"{counts['full']} at max_per_marker ({max_per_marker})")
    if counts["already"]:
        parts.append(f"{counts['already']} already on the attempt")
    if counts["outside"]:
        parts.append(f"{counts['outside']} not in the exam's pool")
    if counts["own"]:
        parts.append("1 is the candidate")
    head = f"needs {_plural(need, 'more marker')}, only {eligible} eligible"
    if eligible == 0:
        head = f"needs {_plural(need, 'more marker')}, no eligible marker"
    return f"{head} ({', '.join(parts)})" if parts else head
