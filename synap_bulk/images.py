"""Before-images: what each write of a run needs to be reversed, kept in the job's ledger.

A task records an image *before* it sends the write (durably, like the in-flight mark), so a
run killed at any point leaves an image for every write that may have reached the server:

- ``create``: the type and path of the resource, what was written, and how to find it again
  (``match``) when the run died before the server answered with its id (:meth:`created`).
- ``patch``: the previous values of exactly the attributes the PATCH changes, and the new ones.
- ``add-member`` / ``remove-member`` (a group's users), ``assign`` / ``unassign`` (an attempt's
  markers): the relationship and whether the link existed before the run. A link that existed
  before is never removed by an undo; one whose state before is unknown is kept too.
- ``request``: a ``request`` row's rendered ``undo:`` template (or none: not reversible).

Images are keyed by ``(run, ref)`` where ``ref`` names the written thing; the first image of a
run wins, so a write retried after an ambiguous failure keeps the values from before the first
attempt. ``synap_bulk.undo`` reads them back, newest first.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec
from msgspec import Struct

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = [
    "BeforeImage",
    "ImageBook",
    "ImageOp",
    "LedgerImages",
    "NullImages",
    "images_of",
    "runs_with_images",
]

ImageOp = Literal["create", "patch", "add-member", "remove-member", "assign", "unassign", "request"]


class BeforeImage(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One write of a run, with what reversing it needs (see the module docstring)."""

    op: ImageOp
    #: The written thing, unique within the run: ``users/42``, ``user-groups/7/users/42``,
    #: ``create:<item key>``.
    ref: str
    #: The collection path of the resource (``users``), or of the relationship's owner.
    path: str = ""
    resource_type: str = ""
    resource_id: str = ""
    #: Relationship writes: the relationship's name and the linked resource.
    relationship: str = ""
    member_type: str = ""
    member_id: str = ""
    existed_before: bool | None = None
    #: Attribute values before the write (patch) and the values written (patch, create).
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    #: How to find a created resource without its id: {"filter", "attribute", "value"}.
    match: dict[str, str] = {}
    #: A request row's reverse request: {"method", "path", "body"}; empty: not reversible.
    undo: dict[str, Any] = {}
    #: Filled when read back: the ledger's order, the run and the item that wrote it.
    seq: int = 0
    run: int = 0
    item_key: str = ""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(BeforeImage).decode


class ImageBook(Protocol):
    """Where a task records its before-images (the engine hands it one: ``bind_images``)."""

    async def before(self, item_key: str, images: Sequence[BeforeImage]) -> None:
        """Record images of writes about to be sent; returns once they are durable."""
        ...

    async def created(self, ref: str, resource_id: str, undo: dict[str, Any] | None = None) -> None:
        """The server answered: keep the new resource's id (and a reverse request rendered
        from the response) with its image."""
        ...


class NullImages:
    """Records nothing (``plan``, tests without a ledger)."""

    async def before(self, item_key: str, images: Sequence[BeforeImage]) -> None:
        return None

    async def created(self, ref: str, resource_id: str, undo: dict[str, Any] | None = None) -> None:
        return None


class LedgerImages:
    """Images in the job's ledger, under the run in progress."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def before(self, item_key: str, images: Sequence[BeforeImage]) -> None:
        if not images:
            return
        run = self._ledger.run_id
        rows = [(run, item_key, im.ref, _encode(im).decode()) for im in images]

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO before_images (run, item_key, ref, image) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )

        await self._ledger.transact(write)

    async def created(self, ref: str, resource_id: str, undo: dict[str, Any] | None = None) -> None:
        # Nothing is sent after this that depends on it, so it is not waited for: it commits
        # with the item's outcome (or earlier). A run killed before that reconciles the item,
        # which records the id again. One UPDATE with json_set, not a read, decode and rewrite.
        run = self._ledger.run_id
        if undo is None:
            sql = "UPDATE before_images SET image = json_set(image, '$.resource_id', ?) "
            args: tuple[Any, ...] = (resource_id, run, ref)
        else:
            sql = (
                "UPDATE before_images SET image = "
                "json_set(image, '$.resource_id', ?, '$.undo', json(?)) "
            )
            args = (resource_id, _encode(undo).decode(), run, ref)
        sql += "WHERE run = ? AND ref = ?"

        def write(db: sqlite3.Connection) -> None:
            db.execute(sql, args)

        self._ledger.defer(write)


def book_for(ledger: Any) -> ImageBook:
    """The image book of an engine's ledger (a real ledger records; anything else does not)."""
    from .ledger import Ledger

    return LedgerImages(ledger) if isinstance(ledger, Ledger) else NullImages()


async def images_of(ledger: Ledger, runs: Sequence[int]) -> list[BeforeImage]:
    """The images of the given runs, in the order they were recorded."""
    wanted = list(runs)

    def read(db: sqlite3.Connection) -> list[BeforeImage]:
        marks = ",".join("?" * len(wanted))
        cur = db.execute(
            f"SELECT seq, run, item_key, image FROM before_images WHERE run IN ({marks}) "
            "ORDER BY seq",
            wanted,
        )
        return [
            msgspec.structs.replace(_decode(image), seq=seq, run=run, item_key=key)
            for seq, run, key, image in cur
        ]

    return await ledger.transact(read) if wanted else []


async def runs_with_images(ledger: Ledger) -> dict[int, int]:
    """How many images each run recorded, by run id."""

    def read(db: sqlite3.Connection) -> dict[int, int]:
        cur = db.execute("SELECT run, COUNT(*) FROM before_images GROUP BY run")
        return {int(r): int(n) for r, n in cur}

    return await ledger.transact(read)
