"""The two shapes of task the runner drives, declared in full.

A task knows the Synap resources it touches; it knows nothing of concurrency, storage, progress
or signals. The runner (``runner.py``) reads only what these protocols declare, so a new task
that forgets a member is a type error, not a silently lost safety check.

- :class:`ItemTask`: a set of items with stable keys (users to import, attempts to assign,
  rows to send). The engine streams them, skips what the ledger says is done, runs the rest
  through :meth:`ItemTask.execute` and honours :attr:`ItemTask.safety`
  (:class:`~synap_bulk.items.Safety`).
- :class:`StreamTask`: pages to a sink with a cursor (an export). It runs itself page by page,
  keeping its cursors in a :class:`CursorStore`, and stops cleanly at a page boundary when asked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ..items import (
    CsvStyle,
    InvalidRow,
    Item,
    Outcome,
    PlanRow,
    RunContext,
    Safety,
    StreamProgress,
    StreamResult,
)

if TYPE_CHECKING:
    import anyio
    from rich.console import RenderableType

    from ..client import SynapClient
    from ..sources import CsvRow

__all__ = ["CursorStore", "ItemTask", "RowsByLine", "StreamTask", "Task"]


class ItemTask(Protocol):
    """A bulk task over keyed items. ``kind`` names it in job files."""

    shape: Literal["items"]
    kind: str
    safety: Safety

    @property
    def unit(self) -> str:
        """What one item is, in the counts a person reads ("row", "attempt"); plural + "s"."""
        ...

    def input_hash(self) -> str:
        """A digest of the input files: when it changes, a resume is refused ('' = no input)."""
        ...

    @property
    def input_columns(self) -> Sequence[str]:
        """The columns of the input rows, in order (the result files' first columns)."""
        ...

    @property
    def csv_style(self) -> CsvStyle:
        """How result CSVs are written (the input's delimiter and BOM)."""
        ...

    @property
    def total(self) -> int | None:
        """How many items there are, once :meth:`prepare` knows (None: unknown)."""
        ...

    @property
    def plan_actions(self) -> Sequence[str]:
        """Plan actions shown even when no item takes them (e.g. "0 conflict")."""
        ...

    async def prepare(self, client: SynapClient, memory: CursorStore) -> None:
        """Read what the task needs from the server before items flow (read-only on the server).

        ``memory`` is the job's cursor store: what the task decided on a first run (e.g. an
        allocation) is kept there, durably once ``set_cursor`` returns, so that a resume finishes
        the same decision instead of making a new one. Under ``plan`` it reads the stored values
        but keeps nothing written to it."""
        ...

    def items(self) -> AsyncIterator[Item | InvalidRow]:
        """Stream the work, in input order; invalid rows are yielded, not raised."""
        ...

    def check_rows(self) -> AsyncIterator[Item | InvalidRow]:
        """The input's rows checked with no server (what ``validate`` reports), in input order:
        the checks of :meth:`items` that need no server; those that do (a group's name, a
        marker's email) are left to ``plan`` and ``run``. Nothing, when the items come from the
        server (e.g. assign-markers by strategy)."""
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

    def absent_means_done(self, item: Item) -> str:
        """The action to record when the item's target is gone (404) after an attempt whose
        outcome was unknown, e.g. ``deleted`` for a DELETE; '' when a 404 is a failure."""
        ...

    def render_plan(self) -> RenderableType | None:
        """Something to show above the plan counts (e.g. an allocation table), or None."""
        ...

    def summary(self) -> dict[str, Any]:
        """Task-specific figures for the report (e.g. per-marker counts)."""
        ...


class CursorStore(Protocol):
    """Where a task keeps named values across runs of its job (the job's ledger): a stream
    task's cursors, an item task's decisions (:meth:`ItemTask.prepare`)."""

    async def get_cursor(self, name: str) -> str | None: ...

    async def set_cursor(self, name: str, value: str) -> None: ...


class StreamTask(Protocol):
    """A task that streams pages into a sink with a cursor. ``kind`` names it in job files."""

    shape: Literal["stream"]
    kind: str

    def input_hash(self) -> str:
        """A digest of the input files ('' when the task reads none)."""
        ...

    async def run(
        self,
        client: SynapClient,
        cursors: CursorStore,
        *,
        stop: anyio.Event,
        progress: Callable[[StreamProgress], None],
        run: RunContext,
    ) -> StreamResult:
        """Run or resume; return ``stopped`` at the first page boundary after ``stop`` is set.

        ``run`` names this run (e.g. for an output file named after it)."""
        ...

    async def plan(self, client: SynapClient, cursors: CursorStore | None) -> list[str]:
        """What a run would do, as lines to print; reads the server, writes nothing."""
        ...


Task = ItemTask | StreamTask


@runtime_checkable
class RowsByLine(Protocol):
    """An item task whose items are its input's records, one item per record, each with the
    record's line and values as read. The success file is then written from the ledger's done
    records (which keep the line) joined with the input, with no item rendered a second time."""

    def source_rows(self) -> Iterable[CsvRow]:
        """The input's records in line order (a fresh pass each call)."""
        ...
