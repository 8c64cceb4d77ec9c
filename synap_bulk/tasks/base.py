"""What the engine needs of a task, and what a task gives back.

A task knows the Synap resources it touches; it knows nothing of concurrency, storage or
progress. The engine streams its items, skips what the ledger says is done, runs the rest through
:meth:`Task.execute`, and honours :attr:`Task.safety` (DESIGN.md, promise 1):

- ``IDEMPOTENT``: repeat freely (PATCH, relationship sets).
- ``RECONCILABLE``: a create whose result can be looked up by a natural key. Before sending, the
  engine makes the item's in-flight mark durable; an item found in flight on resume, or whose
  attempt ended ambiguously (timeout, 5xx, dropped connection), is passed to
  :meth:`Task.reconcile` before anything is re-sent.
- ``UNSAFE``: neither. The in-flight mark is durable before sending; an item found in flight on
  resume is reported for review and never re-sent blindly.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from msgspec import Struct

if TYPE_CHECKING:
    from ..client import SynapClient

__all__ = [
    "InvalidRow",
    "Item",
    "ItemError",
    "Outcome",
    "PlanRow",
    "Safety",
    "Task",
]


class Safety(enum.Enum):
    IDEMPOTENT = "idempotent"
    RECONCILABLE = "reconcilable"
    UNSAFE = "unsafe"


class Item(Struct, frozen=True, kw_only=True):
    """One unit of work: a stable key, where it came from, and what the task needs."""

    key: str
    line: int = 0
    #: The input row exactly as read (column -> value), for failure/success files.
    row: Mapping[str, str] = {}
    #: Task-specific, already-validated data.
    payload: Mapping[str, Any] = {}


class ItemError(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Why an item failed, in the columns of the failures file."""

    status: str = ""  # HTTP status as text, or "invalid" for input errors, "in-doubt" for review
    code: str = ""
    field: str = ""  # a CSV column (source.pointer mapped back) or a job-file field
    detail: str = ""


class InvalidRow(Struct, frozen=True, kw_only=True):
    """An input row rejected before any request: goes straight to the failures file."""

    key: str
    line: int
    row: Mapping[str, str]
    error: ItemError


class Outcome(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The result of executing (or reconciling) one item."""

    status: Literal["done", "failed"]
    #: What happened: created, updated, unchanged, assigned, unassigned, exported, sent, ...
    action: str = ""
    remote_id: str = ""
    error: ItemError | None = None


class PlanRow(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What ``plan`` says the run would do with one item (read-only)."""

    key: str
    line: int
    action: str  # create | update | unchanged | invalid | conflict | ... (task-specific)
    detail: str = ""
    remote_id: str = ""


class Task(Protocol):
    """A bulk task. ``kind`` names it in job files."""

    kind: str
    safety: Safety

    async def prepare(self, client: SynapClient) -> None:
        """Read what the task needs from the server before items flow (read-only)."""
        ...

    def items(self) -> AsyncIterator[Item | InvalidRow]:
        """Stream the work, in input order; invalid rows are yielded, not raised."""
        ...

    async def plan(self, item: Item, client: SynapClient) -> PlanRow:
        """The intended action for one item, without writing anything."""
        ...

    async def execute(self, item: Item, client: SynapClient) -> Outcome:
        """Do the item's work. Raise ``errors.*`` for failures the engine classifies."""
        ...

    async def reconcile(self, item: Item, client: SynapClient) -> Outcome | None:
        """After an ambiguous attempt: the outcome if it took effect, None if it did not."""
        ...

    def column_for_pointer(self, pointer: str) -> str:
        """The input column a JSON:API ``source.pointer`` refers to ('' when none)."""
        ...

    def summary(self) -> dict[str, Any]:
        """Task-specific figures for the report (e.g. per-marker counts)."""
        ...
