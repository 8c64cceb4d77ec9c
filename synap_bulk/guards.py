"""Guards against the destructive run: limits on deletes, removals and unassignments, and the
first write to a portal confirmed on a terminal.

A task that can destroy (group-sync, an undo, a request job of DELETEs) says, once it is
prepared and before its first write, what it would destroy (:class:`Destructive`). Beyond a
limit of the job's ``guard:`` (or its defaults, :class:`~synap_bulk.spec_undo.GuardSpec`) the
run stops there, with the counts, unless ``--yes``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from msgspec import Struct

from .identity import Identity
from .spec_undo import GuardSpec

__all__ = ["Destructive", "confirm_first_write", "is_sandbox_url", "refusal"]


class Destructive(Struct, kw_only=True):
    """What a run would destroy: deletes, removals by group ('user-groups/7') with each group's
    current size, and marker unassignments."""

    deletes: int = 0
    removals: dict[str, int] = {}
    sizes: dict[str, int] = {}
    unassignments: int = 0

    def describe(self) -> str:
        parts = [f"delete {self.deletes:,}"] if self.deletes else []
        for group, n in sorted(self.removals.items()):
            size = self.sizes.get(group)
            of = f" of {size:,} ({n / size:.0%})" if size else ""
            parts.append(f"remove {n:,}{of} members of {group}")
        if self.unassignments:
            parts.append(f"unassign {self.unassignments:,} markers")
        return ", ".join(parts) or "nothing destructive"


def refusal(found: Destructive, guard: GuardSpec, *, command: str) -> str:
    """'' when ``found`` is within the limits; else why the run stops, with the counts and
    how to go on (``command`` with --yes)."""
    over: list[str] = []
    if found.deletes > guard.max_deletes:
        over.append(f"{found.deletes:,} deletes > max_deletes {guard.max_deletes:,}")
    total = sum(found.removals.values())
    if guard.max_removals is not None and total > guard.max_removals:
        over.append(f"{total:,} removals > max_removals {guard.max_removals:,}")
    for group, n in sorted(found.removals.items()):
        size = found.sizes.get(group, 0)
        if size and n / size > guard.max_removals_share:
            over.append(
                f"{n:,} of {size:,} members of {group} ({n / size:.0%}) > max_removals_share "
                f"{guard.max_removals_share:g}"
            )
    if found.unassignments > guard.max_unassignments:
        over.append(
            f"{found.unassignments:,} unassignments > max_unassignments {guard.max_unassignments:,}"
        )
    if not over:
        return ""
    return (
        f"guard: stopped before the first destructive write: the plan would "
        f"{found.describe()} ({'; '.join(over)}); review the plan, then run {command} --yes "
        "(or raise the job's guard: limits)"
    )


def is_sandbox_url(base_url: str) -> bool:
    """The embedded sandbox, or a server on this machine (a standalone sandbox)."""
    if base_url == "sandbox":
        return True
    host = urlsplit(base_url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1")


def confirm_first_write(
    ident: Identity,
    counts: Mapping[str, int],
    *,
    ask: Callable[[str], str] = input,
    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> bool:
    """Show who the token acts as and what the plan would do; True when the person agrees."""
    shown = ", ".join(f"{n:,} {a}" for a, n in counts.items() if n) or "nothing"
    say(f"This job has never written to portal {ident.portal_name or ident.portal_id}.")
    say(f"Acting as {ident.describe()}")
    say(f"The plan: {shown}")
    answer = ask("Write to this portal? [y/N] ").strip().lower()
    return answer in ("y", "yes")
