"""SynapClient against the in-process sandbox: faults, throttling, auth and secrets end to end."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from synap_bulk.client import SynapClient
from synap_bulk.errors import (
    BadRequest,
    ConnectionDropped,
    ServerError,
    Unauthorized,
)
from synap_bulk.jsonapi import AnyResource, NewResource, ResourceIdentifier, ResourcePatch
from synap_bulk.resources import User, UserGroup
from synap_bulk.retry import RetryPolicy
from synap_bulk.sandbox import Sandbox, SandboxConfig

SECRET = "p:s3cret-sandbox-token"

#: The fake epoch the sandbox's and the client's wall clocks start from (HTTP-date Retry-After).
EPOCH = 1_700_000_000.0


class SimClock:
    """A discrete-event clock shared by the sandbox and the client: nothing waits on real time.

    The network takes no fake time; fake time moves only once every declared actor (a worker
    task, see :meth:`actors`) is asleep on this clock, and then straight to the earliest
    deadline, since nobody could act before it. So a 429 answer is seen at the instant the
    server sent it and a retry lands exactly when its pause ends, never early (as an
    auto-advancing clock with concurrent sleepers would make it late and hide an early one).
    With no actors declared, a sleep moves time to its own deadline at once.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._actors = 0
        self._sleepers: list[tuple[float, anyio.Event]] = []
        self.slept: list[float] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        """Epoch seconds on the same fake time line (for HTTP-date Retry-After values)."""
        return EPOCH + self._now

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        if seconds == 0.0:
            await anyio.lowlevel.checkpoint()
            return
        entry = (self._now + seconds, anyio.Event())
        self._sleepers.append(entry)
        self._jump_if_idle()
        try:
            await entry[1].wait()
        finally:
            if entry in self._sleepers:  # cancelled before its deadline
                self._sleepers.remove(entry)

    @contextmanager
    def actors(self, n: int) -> Iterator[None]:
        """Declare ``n`` more tasks that act on their own; call :meth:`done` as each one ends."""
        self._actors += n
        try:
            yield
        finally:
            self._actors = 0
            self._jump_if_idle()

    def done(self) -> None:
        """One declared actor has finished: the others may now be all that time waits for."""
        self._actors -= 1
        self._jump_if_idle()

    def _jump_if_idle(self) -> None:
        if not self._sleepers or len(self._sleepers) < max(1, self._actors):
            return
        self._now = max(self._now, min(deadline for deadline, _ in self._sleepers))
        due = [e for e in self._sleepers if e[0] <= self._now]
        self._sleepers = [e for e in self._sleepers if e[0] > self._now]
        for _, event in due:
            event.set()


@pytest.fixture
def sim() -> SimClock:
    return SimClock()


@pytest.fixture
async def sb(sim: SimClock) -> AsyncIterator[Sandbox]:
    config = SandboxConfig(seed=3, users=60, token=SECRET)
    async with Sandbox(config, clock=sim.now, wall=sim.wall, sleep=sim.sleep) as sandbox:
        yield sandbox


def sim_client(sb: Sandbox, sim: SimClock, **kw: Any) -> SynapClient:
    """A client on the sandbox's fake time line (its clock, its wall clock, a seeded jitter)."""
    client = SynapClient(sb.url, token=sb.token, clock=sim, rng=random.Random(7), **kw)
    # SynapClient takes no wall clock: its rate controller reads Retry-After dates against
    # time.time() unless told otherwise, which would be off the fake time line.
    client.rate._wall = sim.wall
    return client


async def user_ids(sb: Sandbox) -> list[str]:
    async with SynapClient(sb.url, token=sb.token) as client:
        return [u.id async for u in client.paginate("users", None, AnyResource)]


async def test_1000_gets_under_faults_and_throttling_all_succeed(
    sb: Sandbox, sim: SimClock
) -> None:
    """10 % faults and a 50/s limit: every GET succeeds and none lands inside a Retry-After."""
    ids = await user_ids(sb)
    # No X-RateLimit-* headers: rate="auto" must find the limit through 429s alone.
    sb.configure(rate=50, burst=50, fault_rate=0.1, ratelimit_headers=False)
    base = sb.statistics()
    got = 0
    started = sim.now()
    async with sim_client(sb, sim, rate="auto", concurrency=16) as client:

        async def worker(k: int) -> None:
            nonlocal got
            try:
                for n in range(k, 1000, 16):
                    user = await client.get("users", ids[n % len(ids)], User)
                    assert user.id == ids[n % len(ids)]
                    got += 1
            finally:
                sim.done()

        with sim.actors(16):
            async with anyio.create_task_group() as tg:
                for k in range(16):
                    tg.start_soon(worker, k)
        mine = client.statistics()
    stats = sb.statistics()
    assert got == 1000
    # 1000 GETs plus retries through a 50/s bucket of 50 take well over 19 s of (fake) time.
    assert sim.now() - started > (1000 - 50) / 50
    assert stats.throttled - base.throttled > 0  # the limit was really hit...
    assert stats.requests_inside_retry_after == 0  # ...and every announced window respected
    assert sum(stats.faults.values()) > 50  # faults really happened and were retried
    # The client saw and counted every attempt the server saw (no hidden resends).
    assert mine.requests == stats.requests - base.requests
    assert mine.throttled == stats.throttled - base.throttled
    assert mine.retries == mine.throttled + sum(stats.faults.values())
    assert mine.pauses >= 1


async def test_http_date_retry_after_is_honoured(sb: Sandbox, sim: SimClock) -> None:
    """Retry-After as an HTTP date pauses the client just as well as seconds do."""
    ids = await user_ids(sb)
    sb.configure(rate=5, burst=2, retry_after="http-date", ratelimit_headers=False)
    started = sim.now()
    async with sim_client(sb, sim) as client:
        for n in range(4):  # two from the bucket, the third is throttled
            await client.get("users", ids[n], User)
        assert client.statistics().throttled >= 1
    stats = sb.statistics()
    assert stats.throttled >= 1 and stats.requests_inside_retry_after == 0
    assert sim.now() - started >= 1.0  # the date was a whole second ahead: the client waited


async def test_401_stops_at_the_first_request(sb: Sandbox) -> None:
    """A wrong token raises Unauthorized after exactly one request reached the server."""
    async with SynapClient(sb.url, token="p:wrong") as client:
        with pytest.raises(Unauthorized) as info:
            await client.get("users", "x", User)
    assert sb.statistics().requests == 1
    assert info.value.status == 401 and "GET /v3/users/x" in str(info.value)


async def test_html_502_becomes_a_typed_server_error(sb: Sandbox) -> None:
    """An nginx HTML 502 is a ServerError with a readable excerpt, after the retries."""
    sb.configure(fault_rate=1.0, faults={"html502": 1.0})
    async with SynapClient(sb.url, token=sb.token, retry=RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(ServerError) as info:
            await client.request("GET", "users")
    err = info.value
    assert err.status == 502 and err.errors == ()
    assert err.body_excerpt == "502 Bad Gateway"
    assert sb.statistics().requests == 2


async def test_truncated_body_becomes_connection_dropped(sb: Sandbox) -> None:
    """A body cut short of its Content-Length is ConnectionDropped, not a decode crash."""
    sb.configure(fault_rate=1.0, faults={"truncate": 1.0})
    async with SynapClient(sb.url, token=sb.token, retry=RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(ConnectionDropped) as info:
            await client.request("GET", "users")
    assert info.value.path == "/v3/users"
    assert client.statistics().transport_errors == 2


async def test_token_appears_in_no_captured_output(
    sb: Sandbox, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Failures of every kind print, log and repr without the token."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with SynapClient(sb.url, token=sb.token, retry=RetryPolicy(max_attempts=1)) as client:
        texts += [repr(client), str(client)]
        for faults in ({"html502": 1.0}, {"truncate": 1.0}, {"500": 1.0}, {"drop": 1.0}):
            sb.configure(fault_rate=1.0, faults=faults)
            try:
                await client.request("GET", "users", params={"filter[emailAddress]": "a@b.c"})
            except Exception as exc:  # every kind, whatever it is
                texts += [str(exc), repr(exc)]
                logging.getLogger("synap_bulk.test").exception("request failed")
        texts.append(repr(client.statistics()))
    print(*texts)
    out = capsys.readouterr()
    for text in [*texts, out.out, out.err, caplog.text]:
        assert SECRET not in text and "s3cret" not in text
    assert len(texts) >= 10


async def test_parallel_pagination_matches_sequential_and_resumes(sb: Sandbox) -> None:
    """Parallel pages give the same resources in the same order; a cursor resumes mid-way."""
    async with SynapClient(sb.url, token=sb.token, concurrency=8) as client:
        seq = [u.id async for u in client.paginate("users", None, AnyResource, page_size=7)]
        par = [
            u.id async for u in client.paginate("users", None, AnyResource, page_size=7, parallel=4)
        ]
        cursors = []
        async for cursor, _ in client.pages("users", None, AnyResource, page_size=7):
            cursors.append(cursor)
            if len(cursors) == 3:
                break
        rest = []
        async for _, doc in client.pages("users", None, AnyResource, start=cursors[-1]):
            rest += [r.id for r in doc.data]
    assert par == seq and len(seq) == sb.statistics().resources["User"]
    assert rest == seq[21:]


async def test_writes_end_to_end(sb: Sandbox) -> None:
    """Create, update, group membership and delete work against the sandbox's routes."""
    async with SynapClient(sb.url, token=sb.token) as client:
        reg = NewResource(
            type="UserRegistration",
            attributes={"name": "Zed Test", "emailAddress": "zed@example.org"},
        )
        created = await client.create("user-registrations", reg, AnyResource)
        with pytest.raises(BadRequest) as dup:
            await client.create("user-registrations", reg, AnyResource)
        assert dup.value.code == "taken"
        patch = ResourcePatch(type="User", id=created.id, attributes={"name": "Zed Tested"})
        updated = await client.update("users", patch, User)
        assert updated is not None and updated.attributes.name == "Zed Tested"
        group = (await client.get_page("user-groups", None, UserGroup)).data[0]
        member = [ResourceIdentifier(type="User", id=created.id)]
        await client.add_members("user-groups", group.id, "users", member)
        await client.add_members("user-groups", group.id, "users", member)  # a set: no change
        ids = await client.get_members("user-groups", group.id, "users")
        assert created.id in {r.id for r in ids}
        await client.remove_members("user-groups", group.id, "users", member)
        await client.delete("users", created.id)
    assert sb.statistics().creates_by_key.get("zed@example.org") == 1
