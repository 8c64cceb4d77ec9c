"""What the runner and the engine need of a task (the vocabulary lives in ``items.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from ..items import InvalidRow, Item, Outcome, PlanRow, Safety

if TYPE_CHECKING:
    from ..client import SynapClient

__all__ = ["Task"]


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
