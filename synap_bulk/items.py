"""The shared vocabulary of work: what an item is, how it may be repeated, how it ended.

Storage (``ledger.py``), reports, the engine and every task speak these types, so none of them
needs to import another's module. ``Safety`` is promise 1 in README ("What it promises"):

- ``IDEMPOTENT``: repeat freely (PATCH, relationship sets).
- ``RECONCILABLE``: a create whose result can be looked up by a natural key. Before sending, the
  engine makes the item's in-flight mark durable; an item found in flight on resume, or whose
  attempt ended ambiguously (timeout, 5xx, dropped connection), is looked up before anything is
  re-sent.
- ``UNSAFE``: neither. The in-flight mark is durable before sending; an item found in flight on
  resume is reported for review and never re-sent blindly.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from msgspec import Struct

__all__ = [
    "SUPERSEDED",
    "CsvStyle",
    "InvalidRow",
    "Item",
    "ItemError",
    "Outcome",
    "PlanRow",
    "RunContext",
    "Safety",
    "StreamProgress",
    "StreamResult",
]


class Safety(enum.Enum):
    IDEMPOTENT = "idempotent"
    RECONCILABLE = "reconcilable"
    UNSAFE = "unsafe"


#: The ledger status of a row replaced by its fixed version fed back (``run --source``): it is
#: neither done nor to fix, and a later run of the original input skips it.
SUPERSEDED = "superseded"


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
    #: What would change, for a person: old -> new values, names beside ids.
    detail: str = ""
    remote_id: str = ""
    #: Who or what the item is, for a person (a user's name and email; an attempt's exam and
    #: candidate), beside the key and remote id.
    label: str = ""


class CsvStyle(Struct, frozen=True, kw_only=True):
    """How the input CSV was written, so result files feed straight back as a source."""

    delimiter: str = ","
    bom: bool = False


class RunContext(Struct, frozen=True, kw_only=True):
    """Which run of the job this is: its number in the ledger and when it started (UTC)."""

    run_id: int
    started_at: datetime


class StreamProgress(Struct, frozen=True, kw_only=True):
    """Where a stream task is, for the progress bar: rows so far of a total (if known).

    ``note`` is a phase a person should hear of once (e.g. "exam X: downloading"); the runner
    prints it when it changes.
    """

    done: int = 0
    total: int | None = None
    note: str = ""


class StreamResult(Struct, frozen=True, kw_only=True):
    """How a stream task's run ended: completed, or stopped at a page boundary (resumable).

    ``counts`` holds this task's action counts (e.g. ``exported``); ``message`` is the one line
    that says what was written where; ``details`` goes to the summary's ``task`` section.
    """

    status: Literal["completed", "stopped"]
    counts: Mapping[str, int] = {}
    message: str = ""
    details: Mapping[str, Any] = {}
