"""The durability barrier: a ledger write that must be on disk before the item's next request.

The engine marks an item in flight before its first unsafe or reconcilable attempt. Waiting
for that commit on its own costs a round trip to the ledger's writer per item, and most tasks
then write a before-image (another commit) before they send anything. Instead the engine queues
the mark and *holds* its commit here; :class:`~synap_bulk.client.SynapClient` passes the
barrier before every request it sends in the item's context (the worker task, and any task it
starts). A before-image committed in the meantime carries the mark with it (the ledger commits
queued records before queued calls, in order), so the usual create waits for one commit, and
the promise is unchanged: no request of an item leaves before its in-flight mark is durable.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar, Token
from typing import Any

__all__ = ["barrier", "hold", "release"]

_PENDING: ContextVar[asyncio.Future[Any] | None] = ContextVar(
    "synap_bulk_durable_pending", default=None
)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A failed commit surfaces at the barrier or at the ledger's next call; never as asyncio's
    # "exception was never retrieved" when the item sent nothing after its mark.
    if not fut.cancelled():
        fut.exception()


def hold(fut: asyncio.Future[Any] | None) -> Token[asyncio.Future[Any] | None]:
    """Requests sent from this context (and tasks started from it) wait for ``fut`` first."""
    if fut is not None:
        fut.add_done_callback(_retrieve)
    return _PENDING.set(fut)


def release(token: Token[asyncio.Future[Any] | None]) -> None:
    """End the hold (the item is finished)."""
    _PENDING.reset(token)


async def barrier() -> None:
    """Return once the held write is committed; raise the ledger's error if it failed."""
    fut = _PENDING.get()
    if fut is None:
        return
    if not fut.done():
        await asyncio.shield(fut)
    fut.result()
