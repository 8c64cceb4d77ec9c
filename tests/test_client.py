"""SynapClient against a handler transport on a fake clock: auth, errors, retries, pagination."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.lowlevel
import msgspec
import pytest

from synap_bulk.client import (
    InsecureURL,
    MissingToken,
    PageCursor,
    SynapClient,
    UnexpectedRedirect,
)
from synap_bulk.clock import FakeClock
from synap_bulk.errors import (
    BadRequest,
    ConnectError,
    ConnectionDropped,
    MalformedResponse,
    NotFound,
    RateLimited,
    RetryBudgetExhausted,
    ServerError,
    Unauthorized,
)
from synap_bulk.jsonapi import (
    MEDIA_TYPE,
    NewResource,
    ResourceIdentifier,
    ResourcePatch,
    encode,
    error_document,
)
from synap_bulk.profile import ApiProfile
from synap_bulk.resources import User
from synap_bulk.retry import RetryPolicy
from synap_bulk.transport import HandlerTransport, RawResponse

TOKEN = "p:very-secret-token"
BASE = "http://127.0.0.1:9/v3"

Handler = Callable[[str, str, Mapping[str, str], bytes | None], Awaitable[RawResponse]]


def user(uid: str, name: str = "Ann") -> dict[str, Any]:
    return {"type": "User", "id": uid, "attributes": {"name": name}}


def ok(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> RawResponse:
    return RawResponse(status, headers or {}, msgspec.json.encode(doc))


def fail(status: int, headers: dict[str, str] | None = None, **kw: Any) -> RawResponse:
    doc = error_document(status, kw.pop("title", "failed"), **kw)
    return RawResponse(status, headers or {}, encode(doc))


def make(handler: Handler, **kw: Any) -> tuple[SynapClient, HandlerTransport, FakeClock]:
    clock = kw.pop("clock", None) or FakeClock()
    transport = HandlerTransport(handler)
    client = SynapClient(
        kw.pop("base_url", BASE),
        token=kw.pop("token", TOKEN),
        clock=clock,
        transport=transport,
        rng=random.Random(1),
        **kw,
    )
    return client, transport, clock


def script(*answers: RawResponse | Exception) -> Handler:
    """A handler that plays the given answers in order (the last one repeats)."""
    queue = list(answers)

    async def handler(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawResponse:
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler


# -- construction, auth, secrets ------------------------------------------------------------


async def test_headers_carry_bearer_token_media_type_and_subject_user() -> None:
    """Requests carry the bearer token and media types; Subject-User uses the profile's name."""
    profile = ApiProfile(subject_user_header="X-Act-As")
    client, transport, _ = make(
        script(ok({"data": user("1")})), profile=profile, subject_user="u42"
    )
    async with client:
        await client.get("users", "1", User)
        await client.update("users", ResourcePatch(type="User", id="1"), User)
    (_, _, get_headers, get_body), (_, _, patch_headers, patch_body) = transport.requests
    assert get_headers["Authorization"] == f"Bearer {TOKEN}"
    assert get_headers["Accept"] == MEDIA_TYPE and "Content-Type" not in get_headers
    assert get_headers["X-Act-As"] == "u42"
    assert patch_headers["Content-Type"] == MEDIA_TYPE
    assert get_body is None and patch_body == b'{"data":{"type":"User","id":"1"}}'


def test_token_from_argument_then_file_then_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The token comes from the argument, else the file, else SYNAP_TOKEN, without whitespace:
    what the job names explicitly wins over a variable left in the environment, and the
    client says where its token came from."""
    file = tmp_path / "token"
    file.write_text("  p:from-file \n")
    monkeypatch.setenv("SYNAP_TOKEN", " p:from-env\n")
    c = SynapClient(BASE, token_file=file)
    assert (c._token, c.token_source) == ("p:from-file", "job token_file")
    c = SynapClient(BASE, token="p:arg", token_file=file)
    assert (c._token, c.token_source) == ("p:arg", "job token")
    c = SynapClient(BASE)
    assert (c._token, c.token_source) == ("p:from-env", "SYNAP_TOKEN")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(MissingToken, match="is empty"):
        SynapClient(BASE, token_file=empty)


def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token anywhere (or an unreadable file) says where a token may come from."""
    monkeypatch.delenv("SYNAP_TOKEN", raising=False)
    with pytest.raises(MissingToken, match="SYNAP_TOKEN"):
        SynapClient(BASE)
    with pytest.raises(MissingToken, match="cannot read the token file"):
        SynapClient(BASE, token_file=tmp_path / "nope")


@pytest.mark.parametrize(
    "url", ["http://api.synap.ac/v3", "http://10.0.0.1/v3", "ftp://localhost/v3", "nonsense"]
)
def test_plain_http_is_refused_except_to_localhost(url: str) -> None:
    """The token never travels in clear text to a non-local host."""
    with pytest.raises(InsecureURL):
        SynapClient(url, token=TOKEN)


@pytest.mark.parametrize(
    "url",
    ["http://localhost:8080/v3", "http://127.0.0.1/v3/", "http://[::1]:1/v3", "https://x.io/v3"],
)
def test_https_and_local_http_are_accepted(url: str) -> None:
    """https anywhere and plain http to the loopback are fine."""
    assert SynapClient(url, token=TOKEN).base_url == url.rstrip("/")


async def test_token_appears_in_no_output(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """repr/str of the client and of every error, logs and printed output never hold the token."""
    caplog.set_level(logging.DEBUG)
    html = RawResponse(502, {}, f"<html><body>bad gateway {TOKEN}</body></html>".encode())
    client, _, _ = make(script(html), retry=RetryPolicy(max_attempts=2))
    texts = [repr(client), str(client)]
    async with client:
        with pytest.raises(ServerError) as info:
            await client.get("users", "1", User)
        texts += [str(info.value), repr(info.value), repr(client.statistics())]
        print(*texts)
        logging.getLogger("synap_bulk").error("failed: %s", info.value)
    out = capsys.readouterr()
    for text in [*texts, out.out, out.err, caplog.text]:
        assert TOKEN not in text and "very-secret" not in text
    assert "<redacted>" in repr(client)


# -- decoding and errors --------------------------------------------------------------------


async def test_get_decodes_a_typed_resource() -> None:
    """A resource comes back as the Struct asked for, from the right URL."""
    client, transport, _ = make(script(ok({"data": user("7", "Bea")})))
    async with client:
        got = await client.get("users", "7", User)
    assert got.id == "7" and got.attributes.name == "Bea"
    assert transport.requests[0][1] == "http://127.0.0.1:9/v3/users/7"


async def test_no_request_leaves_before_the_held_ledger_write_is_committed() -> None:
    """The durability barrier: a request sent while the item's in-flight mark is held waits
    for that commit, and a failed commit stops it (nothing is sent)."""
    import asyncio

    from synap_bulk import durable
    from synap_bulk.ledger import CheckpointError

    client, transport, _ = make(script(ok({"data": user("7", "Bea")})))
    loop = asyncio.get_running_loop()
    async with client:
        committed = loop.create_future()
        token = durable.hold(committed)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.get, "users", "7", User)
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                assert transport.requests == []  # still waiting for the commit
                committed.set_result(None)
            assert len(transport.requests) == 1
            failed = loop.create_future()
            failed.set_exception(CheckpointError("ledger.sqlite: disk I/O error"))
            durable.hold(failed)
            with pytest.raises(CheckpointError, match="disk I/O"):
                await client.get("users", "7", User)
            assert len(transport.requests) == 1
        finally:
            durable.release(token)
        await client.get("users", "7", User)  # the hold is over: no barrier
    assert len(transport.requests) == 2


@pytest.mark.parametrize(
    "body", [b'{"data": {"type": "User"}}', b'{"data": [', b"<html>ok</html>", b""]
)
async def test_a_2xx_that_is_not_the_document_is_malformed(body: bytes) -> None:
    """A success whose body is not the expected document is MalformedResponse with context."""
    client, _, _ = make(script(RawResponse(200, {}, body)))
    async with client:
        with pytest.raises(MalformedResponse) as info:
            await client.get("users", "7", User)
    assert info.value.path == "/v3/users/7" and info.value.status == 200
    assert "GET /v3/users/7" in str(info.value)


async def test_validation_error_carries_pointer_and_is_not_retried() -> None:
    """A 400 prints the server's detail and pointer and is sent once."""
    answer = fail(
        400, title="taken", detail="email already registered", pointer="/data/attributes/email"
    )
    client, transport, _ = make(script(answer))
    async with client:
        with pytest.raises(BadRequest) as info:
            await client.create("user-registrations", NewResource(type="UserRegistration"), User)
    assert str(info.value) == (
        "400 Bad Request for POST /v3/user-registrations: email already registered "
        "(source: /data/attributes/email)"
    )
    assert info.value.first_pointer == "/data/attributes/email"
    assert len(transport.requests) == 1


async def test_401_raises_at_once() -> None:
    """Unauthorized is fatal: one request, no retry, whatever the method."""
    client, transport, _ = make(script(fail(401, title="bad token")))
    async with client:
        with pytest.raises(Unauthorized):
            await client.request("GET", "users", idempotent=True)
    assert len(transport.requests) == 1


async def test_server_error_keeps_trace_id_and_last_error_is_raised_unchanged() -> None:
    """After max attempts the very last ServerError comes through, with its traceId."""
    answers = [fail(500, meta={"traceId": f"t{i}"}) for i in range(1, 4)]
    client, transport, clock = make(script(*answers), retry=RetryPolicy(max_attempts=3))
    async with client:
        with pytest.raises(ServerError) as info:
            await client.get("users", "1", User)
    assert info.value.trace_id == "t3" and "[traceId t3]" in str(info.value)
    assert len(transport.requests) == 3
    stats = client.statistics()
    assert stats.retries == 2 and stats.by_status == {500: 3}
    assert len(clock.slept) == 2  # a backoff before each retry


@pytest.mark.parametrize(
    ("body", "excerpt"),
    [
        (b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", "502 Bad"),
        (b'{"errors": [{"status": "502", "tit', '{"errors"'),
        (b"", "(empty body)"),
    ],
)
async def test_non_jsonapi_error_bodies_still_give_a_clear_error(body: bytes, excerpt: str) -> None:
    """HTML, truncated JSON and empty error bodies become typed errors with a short excerpt."""
    client, _, _ = make(script(RawResponse(502, {}, body)), retry=RetryPolicy(max_attempts=1))
    async with client:
        with pytest.raises(ServerError) as info:
            await client.request("GET", "users")
    assert info.value.status == 502 and info.value.errors == ()
    assert info.value.body_excerpt is not None and excerpt in info.value.body_excerpt
    assert str(info.value).startswith("502 Bad Gateway for GET /v3/users: non-JSON:API body")


async def test_errors_name_the_path_but_not_the_query() -> None:
    """Query values (emails, filters) stay out of error messages."""
    client, _, _ = make(script(fail(404, title="missing")))
    async with client:
        with pytest.raises(NotFound) as info:
            await client.request("GET", "users", params={"filter[emailAddress]": "a@b.c"})
    assert info.value.path == "/v3/users" and "a@b.c" not in str(info.value)


# -- retries ---------------------------------------------------------------------------------


async def test_post_is_not_retried_after_an_uncertain_failure() -> None:
    """A non-idempotent POST that got a 503 or a dropped connection is sent once."""
    for answer in (fail(503), ConnectionDropped("reset")):
        client, transport, _ = make(script(answer, ok({"data": user("1")}, 201)))
        async with client:
            with pytest.raises((ServerError, ConnectionDropped)):
                await client.request("POST", "user-registrations", body={"data": {}})
        assert len(transport.requests) == 1


async def test_post_marked_idempotent_is_retried() -> None:
    """The caller may mark a POST safe; then a 503 is retried."""
    client, transport, _ = make(script(fail(503), ok({"data": user("1")}, 201)))
    async with client:
        resp = await client.request("POST", "things", body={"data": {}}, idempotent=True)
    assert resp.status == 201 and len(transport.requests) == 2


async def test_never_sent_is_always_safe_to_retry() -> None:
    """A ConnectError (the request never left) is retried even for a POST."""
    client, transport, _ = make(script(ConnectError("refused"), ok({"data": user("1")}, 201)))
    async with client:
        created = await client.create("user-registrations", NewResource(type="U"), User)
    assert created.id == "1" and len(transport.requests) == 2
    assert client.statistics().transport_errors == 1


async def test_429_waits_out_retry_after_for_everyone() -> None:
    """A 429 pauses until Retry-After, the retry leaves after it, and it all is counted."""
    client, _, clock = make(
        script(fail(429, {"Retry-After": "3"}), ok({"data": user("1")})), rate=100.0
    )
    async with client:
        await client.get("users", "1", User)
    assert clock.now() >= 3.0
    stats = client.statistics()
    assert (stats.throttled, stats.pauses, stats.retries) == (1, 1, 1)
    assert stats.current_rate == pytest.approx(70.0)


async def test_429_with_garbage_retry_after_never_loops_tightly() -> None:
    """Garbage Retry-After still waits a computed, growing pause between tries."""
    answers = [fail(429, {"Retry-After": "soon"})] * 4 + [ok({"data": user("1")})]
    client, _, clock = make(script(*answers))
    async with client:
        await client.get("users", "1", User)
    assert client.statistics().pauses == 4
    assert clock.now() >= 0.25 + 0.5 + 1.0 + 2.0


async def test_too_many_429s_raise_rate_limited_with_retry_after() -> None:
    """When throttling never ends, the last RateLimited comes through with its Retry-After."""
    client, _, _ = make(script(fail(429, {"Retry-After": "1"})), retry=RetryPolicy(max_throttled=3))
    async with client:
        with pytest.raises(RateLimited) as info:
            await client.request("GET", "users")
    assert info.value.retry_after == 1.0
    assert client.statistics().throttled == 4


async def test_budget_refusal_wraps_the_last_error() -> None:
    """When the budget cannot allow a retry within the deadline, RetryBudgetExhausted carries
    the last error."""
    policy = RetryPolicy(budget_min_retries=1, budget_ratio=0.0, max_attempts=10, deadline=5.0)
    client, transport, _ = make(script(fail(500)), retry=policy)
    async with client:
        with pytest.raises(RetryBudgetExhausted) as info:
            await client.request("GET", "users")
    assert isinstance(info.value.last, ServerError)
    assert len(transport.requests) == 2  # the first try and the one retry allowed


async def test_an_exhausted_budget_waits_for_the_window_instead_of_failing() -> None:
    """A refused retry waits until the window allows it; only max_attempts ends the request."""
    policy = RetryPolicy(budget_min_retries=1, budget_ratio=0.0, max_attempts=4)
    client, transport, clock = make(script(fail(503)), retry=policy)
    async with client:
        with pytest.raises(ServerError):
            await client.request("GET", "users")
    assert len(transport.requests) == 4
    assert clock.now() >= 20.0  # two retries had to wait for a bucket to leave the window


async def test_a_listing_with_every_other_attempt_failing_completes_with_waits() -> None:
    """50 pages where every other attempt is a 503 all arrive, spaced out by the budget."""
    policy = RetryPolicy()
    attempts = 0
    worst = 0.0

    async def handler(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawResponse:
        nonlocal attempts, worst
        attempts += 1
        requests, retries = client._budget.window_counts  # the budget's own sliding window
        worst = max(worst, retries - max(policy.budget_min_retries, policy.budget_ratio * requests))
        if attempts % 2:
            return fail(503)
        number = int(parse_qs(urlsplit(url).query)["page[number]"][0])
        nxt = f"{BASE}/users?page[number]={number + 1}&page[size]=2" if number < 50 else None
        rows = [user(f"{number}-0"), user(f"{number}-1")]
        return ok({"data": rows, "meta": {"total": 100}, "links": {"next": nxt}})

    client, transport, clock = make(handler, retry=policy)
    async with client:
        ids = [u.id async for u in client.paginate("users", None, User, page_size=2)]
    assert len(ids) == 100 and len(transport.requests) == 100
    assert client.statistics().retries == 50
    assert worst <= 0  # retries never exceeded the budget's share of the window
    assert max(clock.slept) > 1.0  # some retries waited for the window, beyond any backoff


async def test_deadline_stops_retrying() -> None:
    """No retry starts past the policy's total deadline."""
    policy = RetryPolicy(max_attempts=100, base=10.0, cap=10.0, deadline=15.0)
    client, transport, clock = make(script(fail(503)), retry=policy)
    async with client:
        with pytest.raises(ServerError):
            await client.request("GET", "users")
    assert clock.now() <= 15.0 and len(transport.requests) < 100


async def test_concurrent_429s_share_one_pause() -> None:
    """Many requests throttled in the same round cause one pause and one cut."""
    seen = 0
    gate = anyio.Event()

    async def handler(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawResponse:
        nonlocal seen
        seen += 1
        if seen <= 8:
            if seen == 8:
                gate.set()
            await gate.wait()
            return fail(429, {"Retry-After": "2"})
        return ok({"data": user("1")})

    clock = FakeClock(auto_advance=False)
    client, _, _ = make(handler, rate=100.0, concurrency=8, clock=clock)
    done = 0

    async def one() -> None:
        nonlocal done
        await client.get("users", "1", User)
        done += 1

    async with client, anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(one)
        while done < 8:  # time moves only when every task is parked
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            clock.advance(0.05)
    stats = client.statistics()
    assert stats.pauses == 1 and stats.throttled == 8
    # One cut to 70 recovering by CUBIC (eight cuts would have left it near 100 x 0.7^8 = 6).
    assert 90.0 < stats.current_rate < 100.0
    assert clock.now() >= 2.0


# -- pagination ------------------------------------------------------------------------------


def paged(total: int, *, links: bool = True, with_total: bool = True) -> Handler:
    """A collection of ``total`` users served by page[number]/page[size]."""

    async def handler(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawResponse:
        q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        number, size = int(q["page[number]"]), int(q["page[size]"])
        for _ in range(3):  # let other page fetches start meanwhile
            await anyio.lowlevel.checkpoint()
        rows = [user(str(i)) for i in range((number - 1) * size, min(total, number * size))]
        doc: dict[str, Any] = {"data": rows}
        if with_total:
            doc["meta"] = {"total": total}
        if links:
            last = number * size >= total
            nxt = f"{BASE}/users?page[number]={number + 1}&page[size]={size}"
            doc["links"] = {"next": None if last else nxt}
        return ok(doc)

    return handler


async def test_paginate_follows_links_next() -> None:
    """Every resource of every page, in order, following links.next."""
    client, transport, _ = make(paged(25))
    async with client:
        ids = [u.id async for u in client.paginate("users", {"x": "1"}, User, page_size=10)]
    assert ids == [str(i) for i in range(25)]
    assert len(transport.requests) == 3
    assert "x=1" in transport.requests[0][1] and "page[size]=10" in transport.requests[0][1]


async def test_paginate_without_links_goes_on_until_a_short_page() -> None:
    """A server that gives no links at all is paged by number until a short page."""
    client, _, _ = make(paged(20, links=False, with_total=False))
    async with client:
        ids = [u.id async for u in client.paginate("users", None, User, page_size=10)]
    assert ids == [str(i) for i in range(20)]


async def test_parallel_pages_are_concurrent_but_in_order() -> None:
    """With a total, pages are fetched several at a time and yielded in order with cursors."""
    client, transport, _ = make(paged(95), concurrency=8)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, client.statistics().in_flight)
            await anyio.lowlevel.checkpoint()

    async with client, anyio.create_task_group() as tg:
        tg.start_soon(watch)
        got = [
            (cursor, [r.id for r in doc.data])
            async for cursor, doc in client.pages("users", None, User, parallel=4, page_size=10)
        ]
        tg.cancel_scope.cancel()
    assert [ids for _, ids in got] == [
        [str(i) for i in range(p * 10, min(95, p * 10 + 10))] for p in range(10)
    ]
    assert [c.number if c else None for c, _ in got] == [2, 3, 4, 5, 6, 7, 8, 9, 10, None]
    assert len(transport.requests) == 10
    assert peak >= 2


async def test_pages_resume_from_a_stored_cursor() -> None:
    """A cursor saved as plain data resumes the listing at the page after the last one done."""
    client, transport, _ = make(paged(50))
    async with client:
        cursors = []
        async for cursor, _ in client.pages("users", None, User, page_size=10):
            cursors.append(cursor)
            if len(cursors) == 2:
                break
        stored = msgspec.json.encode(cursors[-1])
        start = msgspec.json.decode(stored, type=PageCursor)
        rest = [doc.data[0].id async for _, doc in client.pages("users", None, User, start=start)]
    assert rest == ["20", "30", "40"]
    assert "page[number]=3" in transport.requests[2][1]


async def test_breaking_out_of_parallel_pages_cancels_the_rest() -> None:
    """Leaving the loop early leaves no page fetch running."""
    client, _, _ = make(paged(200))
    async with client:
        async for _ in client.paginate("users", None, User, page_size=10, parallel=4):
            break
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert client.statistics().in_flight == 0


# -- relationships, files, statistics --------------------------------------------------------


async def test_relationship_members_use_the_right_verbs_and_bodies() -> None:
    """add/remove/replace send POST/DELETE/PATCH of linkage; get_members reads linkage back."""
    linkage = {"data": [{"type": "User", "id": "5"}]}
    client, transport, _ = make(script(RawResponse(204, {}, b""), ok(linkage)))
    members = [ResourceIdentifier(type="User", id="5")]
    async with client:
        await client.add_members("user-groups", "g1", "users", members)
        await client.remove_members("user-groups", "g1", "users", members)
        await client.replace_members("user-groups", "g1", "users", members)
        got = await client.get_members("attempts", "a1", "moderating-markers")
    methods = [(m, urlsplit(u).path) for m, u, _, _ in transport.requests]
    assert methods == [
        ("POST", "/v3/user-groups/g1/relationships/users"),
        ("DELETE", "/v3/user-groups/g1/relationships/users"),
        ("PATCH", "/v3/user-groups/g1/relationships/users"),
        ("GET", "/v3/attempts/a1/relationships/moderating-markers"),
    ]
    assert transport.requests[0][3] == b'{"data":[{"type":"User","id":"5"}]}'
    assert got == members


async def test_stream_lines_reassembles_lines_and_keeps_the_token_home() -> None:
    """Lines split across chunks come out whole; another origin gets no Authorization header."""
    body = b'{"id": "1"}\n{"id": "2"}\n{"id": "3"}'
    client, transport, _ = make(script(RawResponse(200, {}, body)))
    async with client:
        here = [line async for line in client.stream_lines(f"{BASE}/files/x.ndjson")]
        there = [line async for line in client.stream_lines("https://files.example/x.ndjson")]
    assert here == there == [b'{"id": "1"}', b'{"id": "2"}', b'{"id": "3"}']
    assert "Authorization" in transport.requests[0][2]
    assert "Authorization" not in transport.requests[1][2]


async def test_statistics_report_latency_percentiles() -> None:
    """Latency percentiles come from the injected clock and are ordered p50 <= p95 <= p99."""
    clock = FakeClock()
    calls = 0

    async def handler(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawResponse:
        nonlocal calls
        calls += 1
        await clock.sleep(0.010 if calls % 20 else 0.200)
        return ok({"data": user("1")})

    client, _, _ = make(handler, clock=clock)
    async with client:
        for _ in range(100):
            await client.get("users", "1", User)
    s = client.statistics()
    assert s.requests == 100 and s.by_status == {200: 100} and s.in_flight == 0
    assert s.latency_ms_p50 == pytest.approx(10.0, rel=0.05)
    assert s.latency_ms_p99 == pytest.approx(200.0, rel=0.05)
    assert s.latency_ms_p50 <= s.latency_ms_p95 <= s.latency_ms_p99


async def test_absolute_urls_to_another_origin_are_refused() -> None:
    """A links.next pointing elsewhere would leak the token; the client refuses it."""
    client, transport, _ = make(script(ok({"data": []})))
    async with client:
        with pytest.raises(InsecureURL):
            await client.request("GET", "https://evil.example/v3/users")
    assert transport.requests == []


# -- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirected_post_is_a_typed_error_not_retried(status: int) -> None:
    """A POST answered with a redirect is UnexpectedRedirect, sent once, even when idempotent."""
    moved = RawResponse(status, {"Location": f"https://evil.example/steal?t={TOKEN}"}, b"")
    client, transport, _ = make(script(moved, ok({"data": user("1")})))
    async with client:
        with pytest.raises(UnexpectedRedirect) as info:
            await client.create(
                "user-registrations", NewResource(type="UserRegistration"), User, idempotent=True
            )
    assert len(transport.requests) == 1
    text = str(info.value)
    assert f"{status} " in text and "POST /v3/user-registrations" in text
    assert "redirect not followed" in text and "another origin" in text
    assert "evil.example" not in text and TOKEN not in text and info.value.location is None


async def test_a_redirected_get_is_a_typed_error_naming_a_same_origin_location() -> None:
    """A GET answered 301 raises UnexpectedRedirect naming the same-origin Location's path only."""
    moved = RawResponse(301, {"Location": f"{BASE}/people/1?secret=x"}, b"")
    client, transport, _ = make(script(moved))
    async with client:
        with pytest.raises(UnexpectedRedirect) as info:
            await client.get("users", "1", User)
    assert len(transport.requests) == 1
    assert info.value.status == 301 and info.value.location == "/v3/people/1"
    assert str(info.value) == (
        "301 Moved Permanently for GET /v3/users/1: redirect not followed "
        "(Location: /v3/people/1 on the same origin)"
    )


async def test_a_redirected_file_download_is_not_followed() -> None:
    """stream_lines treats a 3xx as an error rather than reading the redirect body as lines."""
    client, _, _ = make(script(RawResponse(302, {"Location": "/elsewhere"}, b"moved")))
    async with client:
        with pytest.raises(UnexpectedRedirect):
            [line async for line in client.stream_lines(f"{BASE}/files/x.ndjson")]
