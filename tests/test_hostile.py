"""The client against a hostile or broken server: echoed secrets, loops, huge answers, answers
that are not the document, and Retry-After values nobody should obey. (A whole run through a
hostile server is in ``test_hostile_server.py``; redirects in ``test_client.py``; an oversized
body and a truncated one on a real socket in ``test_transport.py``.)"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec
import pytest

from synap_bulk.client import PaginationLoop
from synap_bulk.errors import BadRequest, MalformedResponse, RateLimited, ServerError
from synap_bulk.jsonapi import MEDIA_TYPE
from synap_bulk.redact import REDACTED, redact
from synap_bulk.resources import User
from synap_bulk.retry import RetryPolicy
from synap_bulk.transport import RawResponse, ResponseTooLarge

from .test_client import BASE, TOKEN, Handler, fail, make, ok, script, user

LONG = "syn_live_4f9b2c7d1e8a6f3b0c5d9e2a7f1b4c8d"

# Every form of the token a server might echo back, and what must never be in the output.
B64_BEARER = base64.b64encode(f"Bearer {TOKEN}".encode()).decode()
B64_TOKEN = base64.b64encode(TOKEN.encode()).decode()
SLICE = TOKEN[3:15]
FORBIDDEN = [TOKEN, SLICE, B64_BEARER, B64_TOKEN, "very-sec", "secret-t"]


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {LONG}",
        f"token={LONG}&x=1",
        f"got {base64.b64encode(f'Bearer {LONG}'.encode()).decode()} from the proxy",
        f"basic {base64.b64encode(f'user:{LONG}'.encode()).decode()}",
        f"token ...{LONG[5:17]}... is invalid",
        f"urlsafe {base64.urlsafe_b64encode(b'xy' + LONG.encode()).decode()}",
    ],
)
def test_redact_cuts_every_form_of_the_secret(text: str) -> None:
    """The token, Bearer token, their base64 (any alignment) and 8+ char slices all go."""
    out = redact(text, LONG)
    assert REDACTED in out
    for i in range(len(LONG) - 7):
        assert LONG[i : i + 8] not in out
    b64 = base64.b64encode(LONG.encode()).decode()
    assert b64[4:12] not in out


def test_redact_leaves_other_text_alone() -> None:
    """Text without the secret comes back unchanged, short overlaps included."""
    text = "email already registered (syn_ not a token; 4f9b2c7)"
    assert redact(text, LONG) == text
    assert redact("", LONG) == "" and redact("abc", "") == "abc"


def test_redact_a_short_secret_whole() -> None:
    """A secret shorter than a fragment is still redacted where it appears whole."""
    assert redact("key=abc123 ok", "abc123") == f"key={REDACTED} ok"


@pytest.mark.parametrize(
    "echo",
    [
        f"bad header Authorization: Bearer {TOKEN}",
        f"bad header {B64_BEARER}",
        f"unknown key {B64_TOKEN}",
        f"token ...{SLICE}... revoked",
    ],
)
async def test_a_400_that_echoes_the_token_never_carries_it(echo: str) -> None:
    """Detail, title, code, source and meta of an echoing 400 reach the exception redacted."""
    answer = fail(
        400,
        title=echo,
        detail=echo,
        code=echo,
        pointer=f"/data/{echo}",
        parameter=echo,
        meta={"traceId": echo, "echo": [echo, {"k": echo}]},
    )
    client, _, _ = make(script(answer))
    async with client:
        with pytest.raises(BadRequest) as info:
            await client.get("users", "1", User)
    exc = info.value
    texts = [str(exc), repr(exc), str(exc.trace_id), *exc.details()]
    for err in exc.errors:
        assert err.source is not None
        texts += [str(err.detail), str(err.title), str(err.code), str(err.meta)]
        texts += [str(err.source.pointer), str(err.source.parameter)]
    for text in texts:
        for bad in FORBIDDEN:
            assert bad not in text, (bad, text)
    assert REDACTED in str(exc)


async def test_a_non_jsonapi_body_that_echoes_the_token_never_carries_it() -> None:
    """The excerpt of an HTML error page is redacted too (base64 and slices included)."""
    page = f"<html><body>echo {B64_BEARER} and {SLICE}</body></html>".encode()
    client, _, _ = make(script(RawResponse(400, {}, page)))
    async with client:
        with pytest.raises(BadRequest) as info:
            await client.get("users", "1", User)
    for bad in FORBIDDEN:
        assert bad not in str(info.value)
    assert info.value.body_excerpt is not None and REDACTED in info.value.body_excerpt


# -- pagination that would never end ---------------------------------------------------------


def looping(next_of: dict[int, str | None], *, total: int | None = None, size: int = 10) -> Handler:
    """Full pages by page[number]; ``next_of[n]`` is page n's links.next (missing: n + 1)."""

    async def handler(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawResponse:
        q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        number = int(q.get("page[number]", "1"))
        rows = [user(f"{number}-{i}") for i in range(size)]
        default = f"{BASE}/users?page[number]={number + 1}&page[size]={size}&filter[x]=s3cr3t"
        doc: dict[str, Any] = {"data": rows, "links": {"next": next_of.get(number, default)}}
        if total is not None:
            doc["meta"] = {"total": total}
        return ok(doc)

    return handler


async def test_a_self_referencing_next_is_a_loop_error_not_a_hang() -> None:
    """Page 2 whose links.next is page 2 again raises PaginationLoop after two requests."""
    again = f"{BASE}/users?page[number]=2&page[size]=10&filter[x]=s3cr3t"
    client, transport, _ = make(looping({2: again}))
    with anyio.fail_after(5):
        async with client:
            with pytest.raises(PaginationLoop) as info:
                [u async for u in client.paginate("users", None, User, page_size=10)]
    assert len(transport.requests) == 2
    text = str(info.value)
    assert "/v3/users?page[number]=2&page[size]=10" in text and "s3cr3t" not in text


async def test_a_next_back_to_an_earlier_page_in_another_spelling_is_a_loop() -> None:
    """A link back to page 1 with its parameters reordered is still recognised by position."""
    back = f"{BASE}/users?page[size]=10&page[number]=1"
    client, transport, _ = make(looping({3: back}))
    with anyio.fail_after(5):
        async with client:
            with pytest.raises(PaginationLoop):
                [u async for u in client.paginate("users", None, User, page_size=10)]
    assert len(transport.requests) == 3


async def test_parallel_pages_detect_a_loop_after_the_counted_pages() -> None:
    """The parallel path (by meta.total) also refuses a last page whose next leads back."""
    back = f"{BASE}/users?page[number]=1&page[size]=10"
    client, transport, _ = make(looping({3: back}, total=30))
    with anyio.fail_after(5):
        async with client:
            with pytest.raises(PaginationLoop):
                [u async for u in client.paginate("users", None, User, page_size=10, parallel=4)]
    assert len(transport.requests) == 3


async def test_the_same_page_under_ever_new_links_is_a_loop() -> None:
    """A server that answers every next link (all new) with page 1's resources again."""
    inner = looping({})

    async def same_rows(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawResponse:
        return await inner(method, url.replace("page[number]=", "page[was]="), headers, body)

    client, transport, _ = make(same_rows)
    with anyio.fail_after(5):
        async with client:
            with pytest.raises(PaginationLoop) as info:
                [u async for u in client.paginate("users", None, User, page_size=10)]
    assert len(transport.requests) == 2 and "repeats the previous page" in str(info.value)


async def test_more_pages_than_meta_total_allows_is_an_error() -> None:
    """Ever-new next links beyond ceil(total / size) + 1 pages raise instead of going on."""
    client, transport, _ = make(looping({}, total=25))
    with anyio.fail_after(5):
        async with client:
            with pytest.raises(PaginationLoop) as info:
                [u async for u in client.paginate("users", None, User, page_size=10)]
    assert len(transport.requests) == 5 and "meta.total=25" in str(info.value)


async def test_a_server_that_ignores_the_page_number_is_a_loop() -> None:
    """Without links, the same full page coming back for page 2 raises instead of looping."""
    rows = {"data": [user(str(i)) for i in range(10)]}
    client, transport, _ = make(script(ok(rows)))
    with anyio.fail_after(5):
        async with client:
            with pytest.raises(PaginationLoop):
                [u async for u in client.paginate("users", None, User, page_size=10)]
    assert len(transport.requests) == 2


async def test_a_server_page_size_below_the_asked_one_is_not_a_loop() -> None:
    """A server capping the page size at 5 (asked 10) is paged to the end within meta.total."""

    async def handler(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawResponse:
        number = int(parse_qs(urlsplit(url).query)["page[number]"][0])
        rows = [user(str(i)) for i in range((number - 1) * 5, min(23, number * 5))]
        nxt = None if number * 5 >= 23 else f"{BASE}/users?page[number]={number + 1}"
        return ok({"data": rows, "meta": {"total": 23}, "links": {"next": nxt}})

    client, _, _ = make(handler)
    async with client:
        ids = [u.id async for u in client.paginate("users", None, User, page_size=10)]
    assert ids == [str(i) for i in range(23)]


async def test_a_streamed_file_with_an_endless_line_stops_at_the_cap() -> None:
    """stream_lines refuses one line longer than max_body_bytes instead of buffering it all."""
    client, _, _ = make(script(RawResponse(200, {}, b"ok\n" + b"x" * 500)), max_body_bytes=100)
    got: list[bytes] = []
    async with client:
        with pytest.raises(ResponseTooLarge):
            async for line in client.stream_lines(f"{BASE}/files/x.ndjson"):
                got.append(line)
    assert got == [b"ok"]


# -- answers that are not the document, and Retry-After nobody should obey ---------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"meta": {"total": 3}}',  # a document without data
        b'{"data": {"type": "User", "id": "1"}}',  # data of the wrong type (one, not a list)
        b'{"data": "users"}',
        b'{"data": [{"type": "User", "attributes": {"name": "no id"}}]}',  # resources without id
        b'{"data": [{"id": "1", "attributes": {}}]}',  # nor type
        b'{"data": [{"type": "User", "id": "1"}], "links": {"next": 7}}',
        b'{"data": [',  # truncated JSON
        b"<html><body>200 OK</body></html>",
        b"",
    ],
)
async def test_a_listing_that_is_not_a_jsonapi_collection_is_malformed(body: bytes) -> None:
    """A 2xx page that is not a collection of identified resources is MalformedResponse, once."""
    client, transport, _ = make(script(RawResponse(200, {"Content-Type": "text/html"}, body)))
    async with client:
        with pytest.raises(MalformedResponse) as info:
            [u async for u in client.paginate("users", None, User, page_size=10)]
    assert info.value.status == 200 and "GET /v3/users" in str(info.value)
    assert len(transport.requests) == 1


async def test_the_wrong_content_type_on_a_good_document_is_read() -> None:
    """The Content-Type is not trusted either way: a JSON:API body labelled text/html decodes
    (the body decides), an HTML body labelled JSON:API is malformed."""
    good = msgspec.json.encode({"data": user("7", "Bea")})
    client, _, _ = make(script(RawResponse(200, {"Content-Type": "text/html"}, good)))
    async with client:
        assert (await client.get("users", "7", User)).attributes.name == "Bea"
    html = RawResponse(200, {"Content-Type": MEDIA_TYPE}, b"<html>7</html>")
    client, _, _ = make(script(html))
    async with client:
        with pytest.raises(MalformedResponse):
            await client.get("users", "7", User)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, b'{"meta": {"reason": "no errors member"}}', BadRequest),
        (400, b'{"errors": []}', BadRequest),
        (400, b'{"errors": "bad"}', BadRequest),
        (400, b'{"errors": [{"detail": 5}]}', BadRequest),
        (500, b"{}", ServerError),
        (503, b'{"errors": null}', ServerError),
    ],
)
async def test_an_error_document_without_errors_is_still_a_typed_error(
    status: int, body: bytes, error: type[Exception]
) -> None:
    client, _, _ = make(script(RawResponse(status, {}, body)), retry=RetryPolicy(max_attempts=2))
    async with client:
        with pytest.raises(error) as info:
            await client.request("GET", "users")
    assert f"{status} " in str(info.value) and "GET /v3/users" in str(info.value)


@pytest.mark.parametrize(
    "retry_after", ["1e9", "99999999999999999999", "-5", "-inf", "nan", "soon"]
)
async def test_a_429_retry_after_huge_negative_or_garbage_is_bounded(retry_after: str) -> None:
    """However absurd the Retry-After, the client waits at most its deadline in all, never
    a tight loop, and then raises the typed RateLimited."""
    policy = RetryPolicy(max_throttled=5, deadline=60.0)
    client, transport, clock = make(script(fail(429, {"Retry-After": retry_after})), retry=policy)
    with anyio.fail_after(5):
        async with client:
            with pytest.raises(RateLimited):
                await client.request("GET", "users")
    assert clock.now() <= policy.deadline
    assert 1 <= len(transport.requests) <= policy.max_throttled + 1
    if len(transport.requests) > 1:  # retried: each after a real pause, not at once
        assert clock.now() >= 0.25 * (len(transport.requests) - 1)


@pytest.mark.parametrize("retry_after", ["1e9", "-5", "garbage", ""])
async def test_a_503_retry_after_huge_negative_or_garbage_is_bounded(retry_after: str) -> None:
    """A 503's Retry-After lengthens the backoff only within the deadline; garbage is ignored."""
    policy = RetryPolicy(max_attempts=4, deadline=30.0)
    client, transport, clock = make(script(fail(503, {"Retry-After": retry_after})), retry=policy)
    with anyio.fail_after(5):
        async with client:
            with pytest.raises(ServerError):
                await client.request("GET", "users")
    assert clock.now() <= policy.deadline
    assert len(transport.requests) == (1 if retry_after == "1e9" else policy.max_attempts)


async def test_a_long_line_in_tiny_chunks_is_joined_once_not_per_chunk() -> None:
    """A 3 MiB line arriving in 7-byte chunks (about 450,000 of them) comes out whole, in a few
    seconds; appending chunk after chunk to one bytes object (as before) copies the line again
    each time, four times the work per doubling of the line, and does not end within the
    bound."""
    line = b"x" * (3 << 20)
    body = b"first\n" + line + b"\nlast"
    client, _, _ = make(script(RawResponse(200, {}, body)))
    with anyio.fail_after(60):
        async with client:
            got = [chunk async for chunk in client.stream_lines(f"{BASE}/files/x.ndjson")]
    assert got == [b"first", line, b"last"]
