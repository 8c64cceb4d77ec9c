"""Pagination: the page cursor, the guard against listings that never end, and the page loops.

:func:`pages` and :func:`paginate` need only a :class:`Pager` (the client's profile, its URL rule
and :meth:`~synap_bulk.client.SynapClient.get_page`), not the whole client; ``SynapClient.pages``
and ``SynapClient.paginate`` are these functions bound to the client.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from msgspec import Struct

from .errors import BadRequest, MalformedResponse
from .jsonapi import ListDocument
from .profile import ApiProfile
from .redact import redact

__all__ = [
    "PageCursor",
    "Pager",
    "PaginationLoop",
    "page_cursor",
    "page_params",
    "page_size_refused",
    "pages",
    "paginate",
]

T = TypeVar("T")


class Pager(Protocol):
    """What pagination needs of a client: its profile, token (to redact), URL rule and pages.

    ``page_size_cap`` is the largest page size the server was found to give (None: none found
    yet); pagination learns it and every later listing of the client uses it.
    """

    page_size_cap: int | None

    @property
    def profile(self) -> ApiProfile: ...

    @property
    def _token(self) -> str: ...

    def _target(self, path: str, params: Mapping[str, Any] | None) -> tuple[str, str]: ...

    async def get_page(
        self, path: str, params: Mapping[str, Any] | None, tp: type[T]
    ) -> ListDocument[T]: ...


class PaginationLoop(MalformedResponse):
    """A listing that would never end: ``links.next`` (or the page position) repeats a page
    already fetched, the same page comes back twice, or there are more pages than
    ``meta.total`` allows."""


class _PageGuard:
    """What one pagination has fetched, so that a server cannot keep it going forever."""

    def __init__(self, client: Pager, path: str) -> None:
        p = client.profile
        self._client = client
        self._path = path
        by_number = p.pagination == "page-number"
        self._pos_param = p.page_number_param if by_number else p.page_offset_param
        self._urls: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        self._positions: set[int] = set()
        self._fetched = 0
        self._skipped = 0
        self._largest = 0
        self._last_ids: tuple[Any, ...] = ()

    def _key(self, url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        parts = urlsplit(self._client._target(url, None)[0])
        return parts.path, tuple(sorted(parse_qsl(parts.query, keep_blank_values=True)))

    def _position(self, url: str) -> int | None:
        for k, v in parse_qsl(urlsplit(url).query):
            if k == self._pos_param:
                try:
                    return int(v)
                except ValueError:
                    return None
        return None

    def _show(self, url: str) -> str:
        """The link for a message: its path and page parameters only (filters may be secret)."""
        parts = urlsplit(url)
        keep = [(k, v) for k, v in parse_qsl(parts.query) if k.startswith("page[")]
        shown = parts.path + (f"?{urlencode(keep, safe='[]')}" if keep else "")
        return redact(shown, self._client._token)

    def _fail(self, message: str) -> PaginationLoop:
        return PaginationLoop(message, method="GET", path=self._path, status=200)

    def start(self, position: int | None, first: int, step: int) -> None:
        """Where this pagination starts: pages before it count against ``meta.total`` too."""
        if position is not None and step > 0:
            self._skipped = max(0, (position - first) // step)

    def fetched(self, url: str, doc: ListDocument[Any]) -> None:
        """Record a page fetched from ``url``; raise when it repeats or exceeds the total."""
        self._urls.add(self._key(url))
        pos = self._position(url)
        if pos is not None:
            self._positions.add(pos)
        self._fetched += 1
        self._largest = max(self._largest, len(doc.data))
        # The same page again: same length, same first and last resource (O(1) per page; the
        # whole page's ids cost ~10 % of an export's CPU, measured).
        data = doc.data
        ids: tuple[Any, ...] = ()
        if data:
            head, tail = data[0], data[-1]
            ids = (
                len(data),
                (getattr(head, "type", None), getattr(head, "id", None)),
                (getattr(tail, "type", None), getattr(tail, "id", None)),
            )
        if ids and ids == self._last_ids and (ids[1][1] is not None or ids[2][1] is not None):
            raise self._fail(f"the page at {self._show(url)} repeats the previous page")
        self._last_ids = ids
        total = doc.meta.get("total")
        if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
            bound = math.ceil(total / max(1, self._largest)) + 1
            if self._skipped + self._fetched > bound:
                raise self._fail(
                    f"more pages than meta.total={total} allows ({bound} of "
                    f"{max(1, self._largest)}); last link {self._show(url)}"
                )

    def check_next(self, url: str) -> None:
        """Raise when ``url`` (links.next) leads back to a page already fetched."""
        pos = self._position(url)
        if self._key(url) in self._urls or (pos is not None and pos in self._positions):
            raise self._fail(f"links.next repeats a page already fetched: {self._show(url)}")


class PageCursor(Struct, frozen=True, omit_defaults=True):
    """Where a listing continues: a page number (or offset) and/or the server's next URL.

    Plain data so that an export can store it (``msgspec.to_builtins``) and resume from it.
    """

    number: int | None = None
    offset: int | None = None
    url: str | None = None
    #: The page size in use, so that a resume cuts the listing at the same places.
    size: int | None = None


def page_params(
    profile: ApiProfile, params: Mapping[str, Any] | None, page_size: int | None, position: int
) -> tuple[dict[str, Any], int]:
    """Query parameters of the page at ``position`` (page number, or offset)."""
    p = profile
    out = dict(params or {})
    if p.pagination == "page-number":
        size = int(page_size or out.get(p.page_size_param) or p.page_size)
        out[p.page_size_param] = str(size)
        out[p.page_number_param] = str(position)
    else:
        size = int(page_size or out.get(p.page_limit_param) or p.page_size)
        out[p.page_limit_param] = str(size)
        out[p.page_offset_param] = str(position)
    return out, size


def page_size_refused(exc: BadRequest, profile: ApiProfile) -> bool:
    """Whether a 400 is about the page size (``source.parameter``, or the name in its text)."""
    names = (profile.page_size_param, profile.page_limit_param)
    for err in exc.errors:
        src = err.source
        if src is not None and src.parameter in names:
            return True
        text = f"{err.title or ''} {err.detail or ''}"
        if any(n in text for n in names):
            return True
    return False


def _hinted_size(exc: BadRequest, below: int) -> int | None:
    """The largest number under ``below`` that the 400's text names (``between 1 and 100``)."""
    found = [
        int(n)
        for err in exc.errors
        for n in re.findall(r"\d+", f"{err.title or ''} {err.detail or ''}")
        if 1 < int(n) < below
    ]
    return max(found) if found else None


def _size_in(url: str, profile: ApiProfile) -> int | None:
    """The page size a ``links.next`` URL asks for, if it says."""
    for k, v in parse_qsl(urlsplit(url).query):
        if k in (profile.page_size_param, profile.page_limit_param):
            try:
                return int(v)
            except ValueError:
                return None
    return None


async def _first_page(
    client: Pager,
    path: str,
    params: Mapping[str, Any] | None,
    tp: type[T],
    page_size: int | None,
    position: int,
    may_learn: bool,
) -> tuple[ListDocument[T], str, int]:
    """The page at ``position``; a 400 about its size is learned: the largest size accepted.

    The 400's text is tried first for the bound (``between 1 and 100``), then a bisection
    between the largest size accepted and the smallest refused (a few requests, once per run:
    the size found becomes ``client.page_size_cap``). Returns the page, its URL and its size.
    """
    qp, size = page_params(client.profile, params, page_size, position)
    try:
        return await client.get_page(path, qp, tp), client._target(path, qp)[0], size
    except BadRequest as exc:
        if not may_learn or size <= 1 or not page_size_refused(exc, client.profile):
            raise
        refused, first_error = size, exc
    ok: tuple[ListDocument[T], str, int] | None = None
    hint = _hinted_size(first_error, refused)
    while refused - (ok[2] if ok else 0) > 1:
        trial = hint if hint is not None else ((ok[2] if ok else 0) + refused) // 2
        qp, _ = page_params(client.profile, params, trial, position)
        try:
            ok = (await client.get_page(path, qp, tp), client._target(path, qp)[0], trial)
        except BadRequest as exc:
            if not page_size_refused(exc, client.profile):
                raise
            refused = trial
        else:
            if hint is not None:
                break  # the server named its bound and accepts it
        hint = None
    if ok is None:
        raise first_error
    client.page_size_cap = ok[2]
    return ok


def page_cursor(
    profile: ApiProfile, position: int | None, url: str | None, size: int
) -> PageCursor:
    """The cursor of the page at ``position`` (None: only the server's next URL is known)."""
    if position is None:
        return PageCursor(url=url, size=size)
    if profile.pagination == "page-number":
        return PageCursor(number=position, url=url, size=size)
    return PageCursor(offset=position, url=url, size=size)


async def pages(
    client: Pager,
    path: str,
    params: Mapping[str, Any] | None,
    tp: type[T],
    start: PageCursor | None = None,
    parallel: int = 1,
    page_size: int | None = None,
) -> AsyncGenerator[tuple[PageCursor | None, ListDocument[T]], None]:
    """Pages in order, each with the cursor to resume *after* it (None after the last one).

    With ``parallel > 1`` and a ``meta.total`` on the first page, the remaining pages are
    fetched ``parallel`` at a time (by page number or offset) and still yielded in order.
    """
    by_number = client.profile.pagination == "page-number"
    first = 1 if by_number else 0
    position: int | None = first
    if start is not None:
        position = start.number if by_number else start.offset
        if position is None and not start.url:
            position = first
        page_size = page_size or start.size
    _, size = page_params(client.profile, params, page_size, position or first)
    cap = client.page_size_cap
    # A page size may change only where the rows before a position do not depend on it: a fresh
    # listing, or offsets (a stored page number counts pages of the stored size).
    may_learn = not by_number or position == first
    if cap is not None and size > cap and may_learn:
        page_size = size = cap
    if position is None and start is not None and start.url:
        url = start.url
        doc = await client.get_page(url, None, tp)  # resume from a stored next URL
    else:
        doc, url, size = await _first_page(
            client, path, params, tp, page_size, position or first, may_learn
        )
        page_size = size
        nxt = doc.links.get("next")
        if may_learn and nxt and 0 < len(doc.data) < size:
            # Fewer than asked, with more to come: the server clamped the size. Its next link
            # says to what (else the page's length does); the rest of the run asks for that.
            got = _size_in(nxt, client.profile) or len(doc.data)
            if got < size:
                page_size = size = client.page_size_cap = got
    step = 1 if by_number else size
    guard = _PageGuard(client, path)
    guard.start(position, first, step)
    guard.fetched(url, doc)
    total = doc.meta.get("total")
    if position is not None and parallel > 1 and isinstance(total, int) and size > 0:
        last = first + max(0, math.ceil(total / size) - 1) * step
        if position < last:
            rest = _ordered(
                client, path, params, page_size, tp, position + step, last, step, parallel
            )
            async with aclosing(rest):
                yield page_cursor(client.profile, position + step, None, size), doc
                async for position, doc in rest:
                    qp, _ = page_params(client.profile, params, page_size, position)
                    guard.fetched(client._target(path, qp)[0], doc)
                    if position < last:
                        yield page_cursor(client.profile, position + step, None, size), doc
    # Follow links.next (also after the last counted page, in case the listing grew).
    while True:
        has_links = "next" in doc.links
        nxt = doc.links.get("next") if has_links else None
        # No links at all: keep going by position until a short page.
        by_position = not has_links and position is not None and len(doc.data) >= size > 0
        if not nxt and not by_position:
            yield None, doc
            return
        if nxt:
            guard.check_next(nxt)  # before the cursor is handed out: resuming would loop too
        position = None if position is None else position + step
        yield page_cursor(client.profile, position, nxt, size), doc
        if nxt:
            url = nxt
            doc = await client.get_page(nxt, None, tp)
        else:
            assert position is not None
            qp, _ = page_params(client.profile, params, page_size, position)
            url = client._target(path, qp)[0]
            doc = await client.get_page(path, qp, tp)
        guard.fetched(url, doc)


async def _ordered(
    client: Pager,
    path: str,
    params: Mapping[str, Any] | None,
    page_size: int | None,
    tp: type[T],
    begin: int,
    last: int,
    step: int,
    parallel: int = 4,
) -> AsyncGenerator[tuple[int, ListDocument[T]], None]:
    """Fetch pages ``begin..last`` with ``parallel`` in flight; yield them in order."""
    pending: deque[tuple[int, asyncio.Task[ListDocument[T]]]] = deque()
    position = begin
    try:
        while pending or position <= last:
            while position <= last and len(pending) < parallel:
                qp, _ = page_params(client.profile, params, page_size, position)
                task = asyncio.ensure_future(client.get_page(path, qp, tp))
                pending.append((position, task))
                position += step
            at, task = pending[0]
            doc = await task
            pending.popleft()
            yield at, doc
    finally:
        for _, task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*(t for _, t in pending), return_exceptions=True)


async def paginate(
    client: Pager,
    path: str,
    params: Mapping[str, Any] | None,
    tp: type[T],
    page_size: int | None = None,
    parallel: int = 1,
) -> AsyncGenerator[T, None]:
    """Every resource of a listing, in order, following ``links.next``."""
    async with aclosing(
        pages(client, path, params, tp, parallel=parallel, page_size=page_size)
    ) as listing:
        async for _, doc in listing:
            for item in doc.data:
                yield item
