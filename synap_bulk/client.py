"""SynapClient: one session, auth, typed JSON:API calls, pagination, and the shared feedback loop.

Every request goes through :meth:`SynapClient.request`: rate control (:mod:`.ratecontrol`) decides
when it may leave, the transport (:mod:`.transport`) sends it, and :mod:`.retry` decides whether a
failure is tried again. Answers >= 400 become :mod:`.errors` ApiErrors that carry the method, the
absolute path (never the query string, never a header, never the token) and the server's JSON:API
error objects; a body that is not JSON:API (an HTML page from a proxy, a truncated or empty body)
still gives a readable error with a short excerpt.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, overload
from urllib.parse import quote, urlencode, urlsplit

import msgspec
from msgspec import Struct

from . import durable, pagination
from ._version import __version__
from .clock import Clock, SystemClock
from .errors import (
    ApiError,
    InsecureURL,
    MalformedResponse,
    MissingToken,
    RateLimited,
    RetryBudgetExhausted,
    SynapBulkError,
    TransportError,
    api_error_for,
)
from .identity import Identity, _read_token
from .identity import TokenSource as TokenSource
from .jsonapi import (
    MEDIA_TYPE,
    Document,
    ErrorObject,
    ErrorSource,
    ListDocument,
    NewResource,
    RelationshipDocument,
    ResourceIdentifier,
    ResourcePatch,
    decode,
    decode_errors,
    encode,
)
from .latency import _Latency
from .pagination import PageCursor, PaginationLoop
from .pagination import _PageGuard as _PageGuard
from .profile import DEFAULT_PROFILE, ApiProfile
from .ratecontrol import RateController, RateSettings, parse_retry_after
from .redact import redact, redact_value
from .resources import Portal, User
from .retry import RetryBudget, RetryPolicy, backoff, is_retryable
from .transport import (
    DEFAULT_MAX_BODY_BYTES,
    AiohttpTransport,
    RawResponse,
    ResponseTooLarge,
    Timeouts,
    Transport,
)
from .urls import check_base_url

__all__ = [
    "ClientStatistics",
    "Identity",
    "InsecureURL",
    "MissingToken",
    "PageCursor",
    "PaginationLoop",
    "Response",
    "SynapClient",
    "Timeouts",
    "UnexpectedRedirect",
]

T = TypeVar("T")

_EXCERPT = 160
#: Added to a wait for the retry budget so that the bucket has surely left the window.
_BUDGET_SLACK = 0.001


class UnexpectedRedirect(ApiError):
    """A 3xx answer: never followed (the token stays home) and never a success.

    For a write it is a definite answer (the server did not carry out the request as asked), so
    it is not retried. ``location`` is the redirect's path when it stays on the API's origin;
    another origin is not named (``elsewhere`` is True): its URL may carry secrets of its own.
    """

    def __init__(
        self,
        *,
        method: str,
        path: str,
        status: int,
        location: str | None = None,
        elsewhere: bool = False,
    ) -> None:
        self.location = location
        self.elsewhere = elsewhere
        super().__init__(method=method, path=path, status=status)

    def _message(self) -> str:
        head = f"{self.status} {self.reason} for {self.method} {self.path}: redirect not followed"
        if self.location is not None:
            head = f"{head} (Location: {self.location} on the same origin)"
        elif self.elsewhere:
            head = f"{head} (Location on another origin)"
        return head


class Response(Struct):
    """A successful answer: status, headers, raw body, and which request it answers."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    method: str
    path: str


class ClientStatistics(Struct, frozen=True):
    """A snapshot of the client's counters. ``current_rate`` is 0.0 when nothing paces sends."""

    requests: int
    by_status: dict[int, int]
    retries: int
    throttled: int
    pauses: int
    transport_errors: int
    current_rate: float
    in_flight: int
    latency_ms_p50: float
    latency_ms_p95: float
    latency_ms_p99: float


_TAG = re.compile(rb"<[^>]*>")
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


def _redact_error(err: ErrorObject, secret: str) -> ErrorObject:
    """A copy of a server's error object with the token (in any form) cut out of every text."""

    def r(text: str | None) -> str | None:
        return None if text is None else redact(text, secret)

    src = err.source
    return ErrorObject(
        status=r(err.status),
        code=r(err.code),
        title=r(err.title),
        detail=r(err.detail),
        source=None
        if src is None
        else ErrorSource(pointer=r(src.pointer), parameter=r(src.parameter), header=r(src.header)),
        meta=None if err.meta is None else redact_value(err.meta, secret),
        id=r(err.id),
        links=None if err.links is None else redact_value(err.links, secret),
    )


def _excerpt(body: bytes, secret: str) -> str:
    """A short readable piece of a non-JSON:API body (an HTML page's title, else its text)."""
    if not body:
        return "(empty body)"
    head = body[:4096]
    m = _TITLE.search(head)
    raw = m.group(1) if m else _TAG.sub(b" ", head)
    text = _SPACE.sub(" ", raw.decode("utf-8", errors="replace")).strip() or "(blank body)"
    text = redact(text, secret)
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…"


class SynapClient:
    """The one client every job uses; an async context manager around one HTTP session.

    ``rate`` is a ceiling in requests per second, ``None`` (no ceiling: slow down only when the
    server throttles) or ``"auto"`` (find the server's limit). ``concurrency`` caps requests in
    flight. The token comes from ``token``, else ``token_file``, else ``SYNAP_TOKEN``
    (:attr:`token_source` says which).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        rate: float | Literal["auto"] | None = None,
        concurrency: int = 16,
        profile: ApiProfile = DEFAULT_PROFILE,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        subject_user: str | None = None,
        clock: Clock | None = None,
        transport: Transport | None = None,
        *,
        rate_settings: RateSettings | None = None,
        rng: random.Random | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.base_url = check_base_url(base_url)
        parts = urlsplit(self.base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        self._token, self.token_source = _read_token(token, token_file)
        self.profile = profile
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.clock: Clock = clock or SystemClock()
        self.concurrency = concurrency
        #: The largest answer (and, of a streamed file, the longest line) read into memory.
        self.max_body_bytes = max_body_bytes
        #: The largest page size the server gives, once a listing found it (see
        #: :func:`synap_bulk.pagination.pages`); later listings ask for no more.
        self.page_size_cap: int | None = None
        self._rng = rng or random.Random()
        self._transport: Transport | None = transport
        self._own_transport = transport is None
        self.rate = RateController(
            rate,
            concurrency=concurrency,
            clock=self.clock,
            settings=rate_settings,
            rng=self._rng,
            remaining_header=profile.ratelimit_remaining_header,
            reset_header=profile.ratelimit_reset_header,
            limit_header=profile.ratelimit_limit_header,
            retry_after_header=profile.retry_after_header,
        )
        self._budget = RetryBudget(self.retry, self.clock)
        base = {
            "Authorization": f"Bearer {self._token}",
            "Accept": MEDIA_TYPE,
            "User-Agent": f"synap_bulk/{__version__}",
        }
        if subject_user:
            base[profile.subject_user_header] = subject_user
        self._headers_get = base
        self._headers_body = {**base, "Content-Type": MEDIA_TYPE}
        self._types: dict[tuple[Any, Any], Any] = {}
        self._requests = 0
        self._by_status: dict[int, int] = {}
        self._retries = 0
        self._throttled = 0
        self._transport_errors = 0
        self._latency = _Latency()

    def __repr__(self) -> str:
        return (
            f"SynapClient(base_url={self.base_url!r}, token=<redacted>, "
            f"rate={self.rate.rate!r}, concurrency={self.concurrency})"
        )

    __str__ = __repr__

    async def __aenter__(self) -> SynapClient:
        if self._transport is None:
            self._transport = AiohttpTransport(
                limit=max(self.concurrency, 1) + 4, max_body_bytes=self.max_body_bytes
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session if this client opened it."""
        if self._transport is not None and self._own_transport:
            await self._transport.aclose()
            self._transport = None

    # -- statistics ------------------------------------------------------------------------

    def statistics(self) -> ClientStatistics:
        """Counters and latency percentiles since the client was made."""
        lat = self._latency
        return ClientStatistics(
            requests=self._requests,
            by_status=dict(self._by_status),
            retries=self._retries,
            throttled=self._throttled,
            pauses=self.rate.pauses,
            transport_errors=self._transport_errors,
            current_rate=self.rate.rate or 0.0,
            in_flight=self.rate.in_flight,
            latency_ms_p50=lat.percentile(0.50),
            latency_ms_p95=lat.percentile(0.95),
            latency_ms_p99=lat.percentile(0.99),
        )

    def latency_buckets(self) -> list[tuple[float, float, int]]:
        """The latency histogram since the client was made: (low ms, high ms, count) per
        non-empty bucket (the run report draws it)."""
        return self._latency.buckets()

    # -- the raw request -------------------------------------------------------------------

    def _target(self, path: str, params: Mapping[str, Any] | None) -> tuple[str, str]:
        """(URL to send, absolute path for messages) of a relative path or a same-origin URL."""
        if path.startswith(("http://", "https://")):
            parts = urlsplit(path)
            if f"{parts.scheme}://{parts.netloc}" != self._origin:
                raise InsecureURL(
                    f"refusing to send the token to another origin ({parts.scheme}://"
                    f"{parts.hostname}); the client talks to {self._origin} only"
                )
            url, where = path, parts.path
        else:
            rel = path.lstrip("/")
            where = f"{self._base_path}/{rel}"
            url = f"{self._origin}{where}"
        if params:
            sep = "&" if "?" in url else "?"
            url = f"{url}{sep}{urlencode(params, safe='[],:')}"
        return url, where

    def _redirect_error(self, method: str, where: str, raw: RawResponse) -> UnexpectedRedirect:
        location, elsewhere = None, False
        loc = raw.headers.get("Location")
        if loc:
            parts = urlsplit(loc)
            origin = f"{parts.scheme}://{parts.netloc}".lower()
            if (not parts.scheme and not parts.netloc) or origin == self._origin.lower():
                location = parts.path or "/"  # never the query: its values may be secret
            else:
                elsewhere = True
        return UnexpectedRedirect(
            method=method, path=where, status=raw.status, location=location, elsewhere=elsewhere
        )

    def _api_error(self, method: str, where: str, raw: RawResponse) -> ApiError:
        if 300 <= raw.status < 400:
            return self._redirect_error(method, where, raw)
        errors = decode_errors(raw.body)
        if errors:
            # Servers echo what they got; none of it may carry the token into a report.
            errors = [_redact_error(err, self._token) for err in errors]
        trace = None
        for err in errors or ():
            trace = err.trace_id
            if trace:
                break
        retry_after = parse_retry_after(
            raw.headers.get(self.profile.retry_after_header), time.time()
        )
        return api_error_for(raw.status)(
            method=method,
            path=where,
            status=raw.status,
            errors=errors or (),
            retry_after=retry_after,
            trace_id=trace,
            body_excerpt=None if errors else _excerpt(raw.body, self._token),
        )

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        idempotent: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request with rate control and retries; return the 2xx answer.

        Anything else raises: a 3xx is :class:`UnexpectedRedirect` (never followed, never
        retried), a status >= 400 its :mod:`.errors` ApiError.

        ``body`` is bytes (sent as is) or a document to encode. POST is retried after an
        uncertain failure only when ``idempotent=True``; ``idempotent=False`` stops retries of
        uncertain failures for any method. ``headers`` are added to this request only (a
        per-row Subject-User); they never replace Authorization.
        """
        method = method.upper()
        url, where = self._target(path, params)
        extra = headers
        if body is None:
            data: bytes | None = None
            headers = self._headers_get
        else:
            data = body if isinstance(body, bytes) else encode(body)
            headers = self._headers_body
        if extra:
            headers = {**headers, **{k: v for k, v in extra.items() if k != "Authorization"}}
        transport = self._transport
        if transport is None:
            raise RuntimeError("use 'async with SynapClient(...)' before sending requests")
        rate, clock, policy = self.rate, self.clock, self.retry
        await durable.barrier()  # the item's in-flight mark is on disk before it sends
        started = clock.now()
        faults = 0
        throttles = 0
        unknown = False  # an earlier attempt may have taken effect
        while True:
            sent_at = await rate.acquire()
            self._budget.record_request()
            self._requests += 1
            error: SynapBulkError
            try:
                raw = await transport.send(method, url, headers, data, self.timeouts)
            except TransportError as exc:
                rate.release()
                self._transport_errors += 1
                if not exc.method:
                    exc.method, exc.path = method, where
                error = exc
            except BaseException:
                rate.release()
                raise
            else:
                rate.release()
                status = raw.status
                self._latency.record((clock.now() - sent_at) * 1000.0)
                self._by_status[status] = self._by_status.get(status, 0) + 1
                rate.observe(sent_at, status, raw.headers)
                if 200 <= status < 300:
                    return Response(status, raw.headers, raw.body, method, where)
                error = self._api_error(method, where, raw)
            if not is_retryable(error, method, idempotent, policy):
                if unknown and isinstance(error, ApiError):
                    error.after_unknown = True
                raise error
            if not isinstance(error, RateLimited) and not (
                isinstance(error, TransportError) and error.never_sent
            ):
                unknown = True
            wait = 0.0
            if isinstance(error, RateLimited):
                self._throttled += 1
                throttles += 1
                if throttles > policy.max_throttled:
                    raise error
                # The shared pause (in rate.acquire) is the wait; the deadline still applies.
                resume = rate.paused_until
            else:
                faults += 1
                if faults >= policy.max_attempts:
                    raise error
                # An exhausted budget spaces retries out: wait until the window allows one.
                while not self._budget.try_retry():
                    at = self._budget.retry_at()
                    if at - started > policy.deadline:
                        raise RetryBudgetExhausted(error) from error
                    await clock.sleep(max(0.0, at - clock.now()) + _BUDGET_SLACK)
                wait = backoff(faults, policy, self._rng)
                if isinstance(error, ApiError) and error.retry_after:
                    wait = max(wait, error.retry_after)
                resume = clock.now() + wait
            if resume - started > policy.deadline:
                raise error
            self._retries += 1
            if wait > 0:
                await clock.sleep(wait)

    # -- typed helpers ---------------------------------------------------------------------

    def _type(self, outer: Any, tp: Any) -> Any:
        key = (outer, tp)
        found = self._types.get(key)
        if found is None:
            found = self._types[key] = outer[tp]
        return found

    def _decode(self, resp: Response, tp: Any) -> Any:
        if not resp.body:
            raise MalformedResponse(
                "empty body where a JSON:API document was expected",
                method=resp.method,
                path=resp.path,
                status=resp.status,
            )
        try:
            return decode(resp.body, tp)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MalformedResponse(
                "response is not the expected JSON:API document: " + redact(str(exc), self._token),
                method=resp.method,
                path=resp.path,
                status=resp.status,
            ) from None

    async def get(self, path: str, id: str, tp: type[T]) -> T:
        """One resource by id, decoded as ``tp`` (e.g. ``User``)."""
        resp = await self.request("GET", f"{path}/{quote(id, safe='')}")
        doc: Document[T] = self._decode(resp, self._type(Document, tp))
        return doc.data

    async def identity(self) -> Identity:
        """Who this client's token acts as: the portal, and the user where the profile has a
        route for it (the Subject-User when one is set). Read-only; a bad token raises the
        server's 401 (or the 404 a misconfigured token may get) like any request."""
        p = self.profile
        resp = await self.request("GET", p.portal_current_path)
        portal: Portal = self._decode(resp, self._type(Document, Portal)).data
        ident = Identity(portal_id=portal.id, portal_name=portal.attributes.name or "")
        if not p.current_user_path:
            return ident
        resp = await self.request("GET", p.current_user_path)
        user: User = self._decode(resp, self._type(Document, User)).data
        return Identity(
            portal_id=ident.portal_id,
            portal_name=ident.portal_name,
            user_id=user.id,
            user_name=user.attributes.name or "",
            user_email=user.attributes.emailAddress or "",
        )

    async def get_page(
        self, path: str, params: Mapping[str, Any] | None, tp: type[T]
    ) -> ListDocument[T]:
        """One page of a collection as it comes (no pagination)."""
        resp = await self.request("GET", path, params)
        page: ListDocument[T] = self._decode(resp, self._type(ListDocument, tp))
        return page

    async def create(
        self, path: str, resource: NewResource, tp: type[T], idempotent: bool = False
    ) -> T:
        """POST a new resource; retried after an uncertain failure only if ``idempotent``."""
        resp = await self.request("POST", path, body={"data": resource}, idempotent=idempotent)
        doc: Document[T] = self._decode(resp, self._type(Document, tp))
        return doc.data

    async def update(self, path: str, patch: ResourcePatch, tp: type[T]) -> T | None:
        """PATCH the members given in ``patch``; None when the server answers 204."""
        resp = await self.request(
            "PATCH", f"{path}/{quote(patch.id, safe='')}", body={"data": patch}
        )
        if resp.status == 204 or not resp.body:
            return None
        doc: Document[T] = self._decode(resp, self._type(Document, tp))
        return doc.data

    async def delete(self, path: str, id: str) -> None:
        """DELETE one resource."""
        await self.request("DELETE", f"{path}/{quote(id, safe='')}")

    def _rel(self, path: str, id: str, relationship: str) -> str:
        return f"{path}/{quote(id, safe='')}/relationships/{relationship}"

    async def add_members(
        self, path: str, id: str, relationship: str, members: Sequence[ResourceIdentifier]
    ) -> None:
        """POST to a to-many relationship: add members (set semantics, so retried)."""
        doc = RelationshipDocument(data=list(members))
        await self.request("POST", self._rel(path, id, relationship), body=doc, idempotent=True)

    async def remove_members(
        self, path: str, id: str, relationship: str, members: Sequence[ResourceIdentifier]
    ) -> None:
        """DELETE from a to-many relationship: remove members."""
        doc = RelationshipDocument(data=list(members))
        await self.request("DELETE", self._rel(path, id, relationship), body=doc)

    async def replace_members(
        self, path: str, id: str, relationship: str, members: Sequence[ResourceIdentifier]
    ) -> None:
        """PATCH a to-many relationship: make its members exactly ``members``."""
        doc = RelationshipDocument(data=list(members))
        await self.request("PATCH", self._rel(path, id, relationship), body=doc)

    async def get_members(self, path: str, id: str, relationship: str) -> list[ResourceIdentifier]:
        """The linkage of a relationship (empty list for an empty to-one)."""
        resp = await self.request("GET", self._rel(path, id, relationship))
        doc: RelationshipDocument = self._decode(resp, RelationshipDocument)
        if doc.data is None:
            return []
        if isinstance(doc.data, ResourceIdentifier):
            return [doc.data]
        return list(doc.data)

    # -- pagination (:mod:`.pagination`) ----------------------------------------------------

    @overload
    def pages(
        self,
        path: str,
        tp: type[T],
        /,
        *,
        params: Mapping[str, Any] | None = None,
        start: PageCursor | None = None,
        parallel: int = 1,
        page_size: int | None = None,
    ) -> AsyncGenerator[tuple[PageCursor | None, ListDocument[T]], None]: ...

    @overload
    def pages(
        self,
        path: str,
        params: Mapping[str, Any] | None,
        tp: type[T],
        /,
        start: PageCursor | None = None,
        parallel: int = 1,
        page_size: int | None = None,
    ) -> AsyncGenerator[tuple[PageCursor | None, ListDocument[T]], None]: ...

    def pages(
        self,
        path: str,
        *args: Any,
        params: Mapping[str, Any] | None = None,
        start: PageCursor | None = None,
        parallel: int = 1,
        page_size: int | None = None,
    ) -> AsyncGenerator[tuple[PageCursor | None, ListDocument[Any]], None]:
        """Pages in order, each with the cursor to resume *after* it (None after the last one):
        ``client.pages("users", User)``, or with query ``params=``.

        With ``parallel > 1`` and a ``meta.total`` on the first page, the remaining pages are
        fetched ``parallel`` at a time (by page number or offset) and still yielded in order.
        The older positional form ``pages(path, params, tp, start, parallel, page_size)`` works
        as before.
        """
        params, tp, rest = _listing_args("pages", args, params)
        start, parallel, page_size = _positional(rest, (start, parallel, page_size))
        return pagination.pages(self, path, params, tp, start, parallel, page_size)

    @overload
    def paginate(
        self,
        path: str,
        tp: type[T],
        /,
        *,
        params: Mapping[str, Any] | None = None,
        page_size: int | None = None,
        parallel: int = 1,
    ) -> AsyncGenerator[T, None]: ...

    @overload
    def paginate(
        self,
        path: str,
        params: Mapping[str, Any] | None,
        tp: type[T],
        /,
        page_size: int | None = None,
        parallel: int = 1,
    ) -> AsyncGenerator[T, None]: ...

    def paginate(
        self,
        path: str,
        *args: Any,
        params: Mapping[str, Any] | None = None,
        page_size: int | None = None,
        parallel: int = 1,
    ) -> AsyncGenerator[Any, None]:
        """Every resource of a listing, in order, following ``links.next``:
        ``client.paginate("users", User)``, with ``params={"filter[...]": ...}`` for a query,
        ``page_size`` (default: the profile's) and ``parallel`` page reads (default 1).

        The older positional form ``paginate(path, params, tp, page_size, parallel)`` works as
        before.
        """
        params, tp, rest = _listing_args("paginate", args, params)
        page_size, parallel = _positional(rest, (page_size, parallel))
        return pagination.paginate(self, path, params, tp, page_size, parallel)

    # -- files -----------------------------------------------------------------------------

    async def stream_lines(self, url: str) -> AsyncGenerator[bytes, None]:
        """The lines of a (large) file, streamed; the token goes only to the API's own origin."""
        transport = self._transport
        if transport is None:
            raise RuntimeError("use 'async with SynapClient(...)' before sending requests")
        parts = urlsplit(url)
        if not parts.scheme:
            url, where = self._target(url, None)
            parts = urlsplit(url)
        where = parts.path
        same = f"{parts.scheme}://{parts.netloc}" == self._origin
        headers = self._headers_get if same else {"Accept": "*/*"}
        sent_at = await self.rate.acquire()
        self._requests += 1
        try:
            async with transport.stream("GET", url, headers, self.timeouts) as resp:
                self._by_status[resp.status] = self._by_status.get(resp.status, 0) + 1
                self.rate.observe(sent_at, resp.status, resp.headers)
                if not 200 <= resp.status < 300:
                    body = b""
                    async for chunk in resp.chunks:
                        body += chunk
                        if len(body) > 65536:
                            break
                    raise self._api_error(
                        "GET", where, RawResponse(resp.status, resp.headers, body)
                    )
                # The unfinished line's chunks are kept apart and joined once, when its newline
                # comes: appending each chunk to one bytes object would copy the line again at
                # every chunk (quadratic in a long line).
                pending: list[bytes] = []
                size = 0
                async for chunk in resp.chunks:
                    if b"\n" not in chunk:
                        pending.append(chunk)
                        size += len(chunk)
                        if size > self.max_body_bytes:  # one endless line
                            raise ResponseTooLarge(
                                self.max_body_bytes, method="GET", path=where, status=resp.status
                            )
                        continue
                    if pending:
                        pending.append(chunk)
                        chunk = b"".join(pending)
                    *lines, rest = chunk.split(b"\n")
                    for line in lines:
                        yield line
                    pending, size = ([rest], len(rest)) if rest else ([], 0)
                if pending:
                    yield b"".join(pending)
        finally:
            self.rate.release()


def _listing_args(
    name: str, args: tuple[Any, ...], params: Mapping[str, Any] | None
) -> tuple[Mapping[str, Any] | None, type[Any], tuple[Any, ...]]:
    """``(tp,)`` or the older ``(params, tp, *rest)``: the params, the type and the rest."""
    if len(args) == 1:
        return params, args[0], ()
    if len(args) >= 2 and params is None:
        return args[0], args[1], args[2:]
    raise TypeError(f"{name}() takes (path, tp, *, params=...) or (path, params, tp)")


def _positional(rest: tuple[Any, ...], given: tuple[Any, ...]) -> tuple[Any, ...]:
    """The older form's trailing positional arguments over the keyword ones."""
    if len(rest) > len(given):
        raise TypeError(f"too many positional arguments ({len(rest)} after the type)")
    return (*rest, *given[len(rest) :])
