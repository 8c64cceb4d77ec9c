"""Guards against the destructive run: limits on deletes, removals and unassignments, and the
first write to a portal confirmed on a terminal.

A task that can destroy (group-sync, an undo, a request job of DELETEs) says, once it is
prepared and before its first write, what it would destroy (:class:`Destructive`). Beyond a
limit of the job's ``guard:`` (or its defaults, :class:`~synap_bulk.spec_undo.GuardSpec`) the
run stops there, with the counts, unless ``--yes``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from msgspec import Struct

from .identity import Identity
from .spec_undo import GuardSpec
from .urls import is_local

if TYPE_CHECKING:
    from .client import SynapClient
    from .tasks.base import Task

__all__ = [
    "Destructive",
    "check_guard",
    "confirm_first_write",
    "first_write_refused",
    "interactive",
    "is_sandbox_url",
    "refusal",
]


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


async def check_guard(
    task: object, client: SynapClient, guard: GuardSpec, *, yes: bool, command: str
) -> str:
    """'' when the prepared task may go on; else why it stops (see :func:`refusal`). A task
    says what it would destroy with ``async destructive(client) -> Destructive``."""
    probe: Callable[[SynapClient], Awaitable[Destructive]] | None = getattr(
        task, "destructive", None
    )
    if probe is None or yes:
        return ""
    return refusal(await probe(client), guard, command=command)


def is_sandbox_url(base_url: str) -> bool:
    """The embedded sandbox, or a server on this machine (a standalone sandbox)."""
    return is_local(base_url)


def interactive() -> bool:
    """Whether a person is at the terminal to answer a question."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def ask(prompt: str) -> str:
    try:
        return input(prompt)
    except EOFError:
        return ""


async def first_write_refused(
    task: Task,
    client: SynapClient,
    ident: Identity,
    *,
    base_url: str,
    known_portal: str | None,
    concurrency: int,
    yes: bool,
) -> str:
    """On a terminal, before a job's first write to a portal that is not a sandbox: show the
    identity and the plan's counts and ask. '' to go on, else why not (nothing was written)."""
    if yes or known_portal or is_sandbox_url(base_url) or not interactive():
        return ""
    if task.shape != "items":
        return ""  # an export reads; it writes nothing to the portal
    from .engine import Engine, EngineConfig

    rows = await Engine(task, client, None, config=EngineConfig(concurrency=concurrency)).plan()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.action] = counts.get(row.action, 0) + 1
    if confirm_first_write(ident, counts, ask=ask):
        return ""
    return "not confirmed: nothing was written (run with --yes to skip the question)"


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
