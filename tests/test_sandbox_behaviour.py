"""The sandbox's demanding behaviours: per-token rate limit with Retry-After (on an injected
clock), seeded faults (same seed, same faults), commit-then-fail, dropped and truncated
answers, seeded latency (on an injected sleep) and the counters that prove it all."""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from synap_bulk.clock import FakeClock
from synap_bulk.jsonapi import MEDIA_TYPE
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.sandbox.behaviour import draw, pick_fault


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # Note: aiohttp silently resends an idempotent request once when the server drops the
    # connection, so a dropped GET reaches the sandbox twice; assertions count server-side.
    async with aiohttp.ClientSession() as session:
        yield session


def small(**kw: Any) -> SandboxConfig:
    return SandboxConfig(users=10, groups=2, attempts_per_exam=5, markers=3, **kw)


async def get(
    http: aiohttp.ClientSession, sb: Sandbox, path: str, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token or sb.token}"}
    async with http.get(sb.url + path, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def outcome(http: aiohttp.ClientSession, sb: Sandbox, method: str, path: str,
                  body: Any = None) -> str:  # fmt: skip
    """What a client sees: the status, or the kind of transport failure."""
    headers = {"Authorization": f"Bearer {sb.token}", "Content-Type": MEDIA_TYPE}
    data = json.dumps(body).encode() if body is not None else None
    try:
        async with http.request(method, sb.url + path, headers=headers, data=data) as resp:
            await resp.read()
            return str(resp.status)
    except aiohttp.ClientPayloadError:
        return "truncated"
    except aiohttp.ClientConnectionError:
        return "dropped"


def registration(email: str) -> dict[str, Any]:
    return {
        "data": {
            "type": "UserRegistration",
            "attributes": {"name": "Ambiguous Outcome", "emailAddress": email},
        }
    }


# ----------------------------------------------------------------------------- rate limit


async def test_burst_beyond_the_limit_gets_429_and_honouring_retry_after_succeeds(
    http: aiohttp.ClientSession,
) -> None:
    """A burst past the bucket gets 429 + Retry-After; after waiting that long it succeeds and
    the sandbox saw no request inside the announced window."""
    clock = FakeClock(100.0)
    async with Sandbox(small(rate=2, burst=3), clock=clock.now) as sb:
        seen = [await get(http, sb, "/portals/current") for _ in range(4)]
        assert [s for s, _, _ in seen] == [200, 200, 200, 429]
        assert [h["X-RateLimit-Remaining"] for _, h, _ in seen] == ["2", "1", "0", "0"]
        assert all(h["X-RateLimit-Limit"] == "3" for _, h, _ in seen)
        _, headers, body = seen[-1]
        assert headers["Retry-After"] == "1" and headers["X-RateLimit-Reset"] == "2"
        error = json.loads(body)["errors"][0]
        assert error["status"] == "429" and error["code"] == "rate_limited"
        clock.advance(float(headers["Retry-After"]))
        assert (await get(http, sb, "/portals/current"))[0] == 200
        stats = sb.statistics()
        assert stats.throttled == 1 and stats.by_status == {200: 4, 429: 1}
        assert stats.retry_after_announced == {"token": 1}
        assert stats.requests_inside_retry_after == 0


async def test_requests_inside_an_announced_window_are_counted(
    http: aiohttp.ClientSession,
) -> None:
    """A request after the grace period but before Retry-After ends is counted per token;
    one still on the wire (inside the grace period) is not."""
    clock = FakeClock(0.0)
    async with Sandbox(small(rate=0.5, burst=1), clock=clock.now) as sb:
        assert (await get(http, sb, "/portals/current"))[0] == 200
        status, headers, _ = await get(http, sb, "/portals/current")
        assert status == 429 and headers["Retry-After"] == "2"
        clock.advance(0.01)  # within the 50 ms grace: already in flight
        assert (await get(http, sb, "/portals/current"))[0] == 429
        assert sb.statistics().requests_inside_retry_after == 0
        clock.advance(0.5)
        assert (await get(http, sb, "/portals/current"))[0] == 429
        stats = sb.statistics()
        assert stats.requests_inside_retry_after == 1
        assert stats.inside_retry_after_by_token == {"token": 1}
        clock.advance(3.0)
        assert (await get(http, sb, "/portals/current"))[0] == 200
        assert sb.statistics().requests_inside_retry_after == 1


async def test_each_token_has_its_own_bucket(http: aiohttp.ClientSession) -> None:
    """Two PATs of one portal are limited separately."""
    clock = FakeClock()
    async with Sandbox(small(rate=1, burst=1, extra_tokens=["p:b"]), clock=clock.now) as sb:
        assert (await get(http, sb, "/portals/current"))[0] == 200
        assert (await get(http, sb, "/portals/current"))[0] == 429
        assert (await get(http, sb, "/portals/current", token="p:b"))[0] == 200
        assert sb.statistics().retry_after_announced == {"token": 1}


async def test_retry_after_as_http_date_and_headers_off(http: aiohttp.ClientSession) -> None:
    """Retry-After can be an HTTP-date; X-RateLimit-* can be switched off (Retry-After stays)."""
    clock = FakeClock()
    wall = 1_767_571_200.25
    config = small(rate=1, burst=1, retry_after="http-date", ratelimit_headers=False)
    async with Sandbox(config, clock=clock.now, wall=lambda: wall) as sb:
        status, headers, _ = await get(http, sb, "/portals/current")
        assert status == 200 and not any(h.startswith("X-RateLimit") for h in headers)
        status, headers, _ = await get(http, sb, "/portals/current")
        assert status == 429 and not any(h.startswith("X-RateLimit") for h in headers)
        when = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp()
        assert when == 1_767_571_202.0  # ceil(wall + 1 s)
        clock.advance(when - wall)
        assert (await get(http, sb, "/portals/current"))[0] == 200
        assert sb.statistics().requests_inside_retry_after == 0


async def test_blind_limiter_answers_like_nginx_limit_req(http: aiohttp.ClientSession) -> None:
    """limiter=blind: the same bucket, but a 429 is an HTML page with nothing to go on (no
    Retry-After, no X-RateLimit-* on any answer), as nginx limit_req sends it."""
    clock = FakeClock()
    async with Sandbox(small(rate=2, burst=2, limiter="blind"), clock=clock.now) as sb:
        seen = [await get(http, sb, "/portals/current") for _ in range(3)]
        assert [s for s, _, _ in seen] == [200, 200, 429]
        for _, headers, _ in seen:
            assert not any(h.startswith("X-RateLimit") for h in headers)
        _, headers, body = seen[-1]
        assert "Retry-After" not in headers and headers["Content-Type"].startswith("text/html")
        assert b"429 Too Many Requests" in body and b"nginx" in body
        clock.advance(0.5)  # the bucket refills at 2/s as with limiter=api
        assert (await get(http, sb, "/portals/current"))[0] == 200
        stats = sb.statistics()
        assert stats.throttled == 1 and stats.retry_after_announced == {}
        assert stats.requests_inside_retry_after == 0  # nothing announced, nothing to respect


async def test_unlimited_sandbox_sends_no_ratelimit_headers(http: aiohttp.ClientSession) -> None:
    """rate=0 means unlimited, and there is nothing to announce."""
    async with Sandbox(small()) as sb:
        statuses = [await get(http, sb, "/portals/current") for _ in range(30)]
        assert {s for s, _, _ in statuses} == {200}
        assert not any(h.startswith("X-RateLimit") for h in statuses[0][1])


# ----------------------------------------------------------------------------- faults


async def fault_run(http: aiohttp.ClientSession, seed: int) -> tuple[list[str], dict[str, int]]:
    async with Sandbox(small(seed=seed, fault_rate=0.5)) as sb:
        uid = sb.store.student_ids[0]
        seen = [await outcome(http, sb, "GET", f"/users/{uid}") for _ in range(40)]
        stats = sb.statistics()
        assert stats.requests >= 40  # aiohttp resends a dropped GET once
        assert sum(stats.by_status.values()) == sum(stats.by_route.values()) == stats.requests
        # a truncated answer keeps its 200 status line; every other fault replaces the 200
        failed = stats.requests - stats.by_status[200]
        assert sum(stats.faults.values()) - stats.faults.get("truncate", 0) == failed
        return seen, stats.faults


async def test_same_seed_same_faults(http: aiohttp.ClientSession) -> None:
    """The same seed and request sequence give the same faults; another seed does not."""
    first, faults = await fault_run(http, 5)
    again, faults_again = await fault_run(http, 5)
    other, _ = await fault_run(http, 6)
    assert first == again and faults == faults_again
    assert first != other
    assert len(set(first)) >= 3
    assert not any(k.startswith("commit-then") for k in faults)  # reads never commit-then


def test_fault_schedule_is_a_pure_function_of_seed_and_sequence() -> None:
    """draw() depends only on (seed, seq); pick_fault honours rate, weights and reads."""
    assert draw(1, 17) == draw(1, 17) and draw(1, 17) != draw(1, 18)
    config = SandboxConfig(fault_rate=1.0, faults={"commit-then-drop": 1.0})
    assert pick_fault(draw(1, 1), config, write=True) == "commit-then-drop"
    assert pick_fault(draw(1, 1), config, write=False) is None
    never = SandboxConfig(fault_rate=0.0)
    assert all(pick_fault(draw(1, i), never, write=True) is None for i in range(100))
    half = SandboxConfig(fault_rate=0.5)
    hits = sum(pick_fault(draw(9, i), half, write=True) is not None for i in range(2000))
    assert 900 < hits < 1100


async def test_500_carries_a_trace_id_and_html502_is_html(http: aiohttp.ClientSession) -> None:
    """A 500 fault is a JSON:API error with meta.traceId; html502 looks like a proxy's page."""
    async with Sandbox(small(fault_rate=1.0, faults={"500": 1.0})) as sb:
        status, headers, body = await get(http, sb, "/portals/current")
        error = json.loads(body)["errors"][0]
        assert status == 500 and error["status"] == "500"
        assert len(error["meta"]["traceId"]) == 16
        sb.configure(faults={"html502": 1.0})
        status, headers, body = await get(http, sb, "/portals/current")
        assert status == 502 and headers["Content-Type"] == "text/html"
        assert body.startswith(b"<html>")
        sb.configure(faults={"503": 1.0})
        status, _, body = await get(http, sb, "/portals/current")
        assert status == 503 and "traceId" in json.loads(body)["errors"][0]["meta"]
        assert sb.statistics().faults == {"500": 1, "html502": 1, "503": 1}


async def test_drop_and_truncate(http: aiohttp.ClientSession) -> None:
    """A dropped connection gives the client a disconnect; a truncated body a payload error."""
    async with Sandbox(small(fault_rate=1.0, faults={"drop": 1.0})) as sb:
        # POST: aiohttp does not resend it, so one request meets one fault.
        assert await outcome(http, sb, "POST", "/user-groups", {"data": {}}) == "dropped"
        sb.configure(faults={"truncate": 1.0})
        assert await outcome(http, sb, "GET", "/users") == "truncated"
        sb.configure(fault_rate=0.0)
        assert await outcome(http, sb, "GET", "/users") == "200"
        stats = sb.statistics()
        assert stats.faults == {"drop": 1, "truncate": 1}
        assert stats.by_status == {0: 1, 200: 2}  # the truncated answer had its 200 status line
        assert stats.resources["UserGroup"] == len(sb.store.groups)


@pytest.mark.parametrize(("kind", "seen"), [("commit-then-500", "500"),
                                            ("commit-then-drop", "dropped"),
                                            ("truncate", "truncated")])  # fmt: skip
async def test_commit_then_fail_really_commits(
    http: aiohttp.ClientSession, kind: str, seen: str
) -> None:
    """The write is applied, then the client gets a 5xx, a dropped connection or a cut body;
    resending it naively is refused as a duplicate."""
    async with Sandbox(small(fault_rate=1.0, faults={kind: 1.0})) as sb:
        email = "ambiguous@example.org"
        assert await outcome(http, sb, "POST", "/user-registrations", registration(email)) == seen
        assert sb.store.user_by_email(email) is not None
        sb.configure(fault_rate=0.0)
        assert await outcome(http, sb, "POST", "/user-registrations", registration(email)) == "400"
        stats = sb.statistics()
        assert stats.creates_by_key == {email: 1}
        assert stats.duplicate_creates == 1
        assert stats.committed_then_failed == 1 and stats.faults == {kind: 1}


async def test_truncating_a_204_hangs_up_after_the_write(http: aiohttp.ClientSession) -> None:
    """A 204 has no body to cut, so a truncate fault hangs up instead; the join still applied."""
    async with Sandbox(small(fault_rate=1.0, faults={"truncate": 1.0})) as sb:
        gid = next(iter(sb.store.groups))
        uid = sb.store.marker_ids[0]
        body = {"data": [{"type": "User", "id": uid}]}
        path = f"/user-groups/{gid}/relationships/users"
        assert await outcome(http, sb, "POST", path, body) == "dropped"
        assert uid in sb.store.groups[gid].members
        stats = sb.statistics()
        assert stats.faults == {"truncate": 1} and stats.by_status == {0: 1}
        assert stats.committed_then_failed == 1


async def test_faults_spare_the_control_routes(http: aiohttp.ClientSession) -> None:
    """With every /v3 request failing, /_sandbox/stats still answers."""
    async with Sandbox(small(fault_rate=1.0, faults={"drop": 1.0})) as sb:
        headers = {"Authorization": f"Bearer {sb.token}"}
        async with http.get(sb.root + "/_sandbox/stats", headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["requests"] == 0


# ----------------------------------------------------------------------------- latency


async def latency_run(http: aiohttp.ClientSession, seed: int) -> list[float]:
    delays: list[float] = []

    async def record(seconds: float) -> None:
        delays.append(seconds)

    config = small(
        seed=seed,
        latency_ms=20,
        jitter_ms=10,
        route_latency_ms={"users.get": 5},
        group_join_latency_ms=100,
    )
    # A clock that stands still: the server's own work takes no time, so each sleep is the
    # whole configured latency (on the real clock it is the latency less that work).
    async with Sandbox(config, sleep=record, clock=lambda: 0.0) as sb:
        uid = sb.store.student_ids[0]
        gid = next(iter(sb.store.groups))
        await get(http, sb, f"/users/{uid}")
        await get(http, sb, "/users")
        body = json.dumps({"data": [{"type": "User", "id": uid}]}).encode()
        headers = {"Authorization": f"Bearer {sb.token}", "Content-Type": MEDIA_TYPE}
        path = f"{sb.url}/user-groups/{gid}/relationships/users"
        async with http.post(path, data=body, headers=headers) as resp:
            assert resp.status == 204
    return delays


async def test_latency_is_base_plus_seeded_jitter_plus_route_and_join(
    http: aiohttp.ClientSession,
) -> None:
    """Each request waits base + jitter, plus its route's extra, plus the join penalty."""
    delays = await latency_run(http, 3)
    assert 0.025 <= delays[0] < 0.035  # users.get: 20 + jitter + 5
    assert 0.020 <= delays[1] < 0.030  # users.list: 20 + jitter
    assert 0.120 <= delays[2] < 0.130  # group join: 20 + jitter + 100
    assert delays == await latency_run(http, 3)
    assert delays != await latency_run(http, 4)
    assert SandboxConfig(latency_ms=20).join_latency_ms == 80


async def test_in_flight_counters(http: aiohttp.ClientSession) -> None:
    """max_in_flight records how many requests the server held at once."""
    released = asyncio.Event()
    waiting = 0

    async def hold(seconds: float) -> None:
        nonlocal waiting
        waiting += 1
        if waiting == 5:
            released.set()
        await released.wait()

    async with Sandbox(small(latency_ms=1), sleep=hold) as sb:
        results = await asyncio.gather(*(get(http, sb, "/portals/current") for _ in range(5)))
        assert [s for s, _, _ in results] == [200] * 5
        stats = sb.statistics()
        assert stats.max_in_flight == 5 and stats.in_flight == 0
