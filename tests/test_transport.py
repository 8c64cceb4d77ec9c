"""The transport seam: aiohttp failures become our transport errors, in one place."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import pytest

from synap_bulk.client import SynapClient
from synap_bulk.errors import ConnectError, ConnectionDropped, RequestTimeout, TransportError
from synap_bulk.transport import (
    AiohttpTransport,
    HandlerTransport,
    RawResponse,
    ResponseTooLarge,
    Timeouts,
    translate,
)

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Serve], Awaitable[str]]]:
    """Start a bare TCP server answering with bytes we choose; yields a starter returning a URL."""
    servers: list[asyncio.Server] = []

    async def start(serve: Serve) -> str:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v3/users?secret=1"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def test_complete_answer_comes_back_whole(
    raw_server: Callable[[Serve], Awaitable[str]],
) -> None:
    """A normal answer gives status, case-insensitive headers and the body."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Thing: a\r\n\r\n{}")
        await writer.drain()
        writer.close()

    url = await raw_server(serve)
    transport = AiohttpTransport()
    try:
        raw = await transport.send("GET", url, {}, None, Timeouts())
    finally:
        await transport.aclose()
    assert (raw.status, raw.body, raw.headers["x-thing"]) == (200, b"{}", "a")


async def test_truncated_body_is_connection_dropped(
    raw_server: Callable[[Serve], Awaitable[str]],
) -> None:
    """A body shorter than its Content-Length is ConnectionDropped, naming the path only."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"data": [')
        await writer.drain()
        writer.close()

    url = await raw_server(serve)
    transport = AiohttpTransport()
    try:
        with pytest.raises(ConnectionDropped) as info:
            await transport.send("GET", url, {}, None, Timeouts())
    finally:
        await transport.aclose()
    assert str(info.value).endswith("for GET /v3/users")
    assert "secret" not in str(info.value)
    assert not info.value.never_sent


async def test_server_disconnect_is_connection_dropped(
    raw_server: Callable[[Serve], Awaitable[str]],
) -> None:
    """The server closing without answering is ConnectionDropped (outcome unknown)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    url = await raw_server(serve)
    transport = AiohttpTransport()
    try:
        with pytest.raises(ConnectionDropped):
            await transport.send("POST", url, {}, b"{}", Timeouts())
    finally:
        await transport.aclose()


async def test_refused_connection_is_connect_error_never_sent() -> None:
    """Nobody listening is ConnectError, flagged as never sent (safe to resend any method)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = AiohttpTransport()
    try:
        with pytest.raises(ConnectError) as info:
            await transport.send("POST", f"http://127.0.0.1:{port}/v3/x", {}, b"{}", Timeouts())
    finally:
        await transport.aclose()
    assert info.value.never_sent
    assert info.value.method == "POST" and info.value.path == "/v3/x"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), RequestTimeout),
        (aiohttp.ServerTimeoutError("read"), RequestTimeout),
        (aiohttp.ConnectionTimeoutError("connect"), ConnectError),
        (aiohttp.ServerDisconnectedError(), ConnectionDropped),
        (aiohttp.ClientPayloadError("cut"), ConnectionDropped),
        (aiohttp.ClientOSError(104, "reset"), ConnectionDropped),
        (ConnectionResetError(), ConnectionDropped),
    ],
)
def test_translate_maps_each_failure(exc: BaseException, expected: type[TransportError]) -> None:
    """Every aiohttp/asyncio failure maps to exactly one of our transport errors."""
    err = translate(exc, "GET", "http://127.0.0.1/v3/users?filter[emailAddress]=a@b")
    assert type(err) is expected
    assert err.path == "/v3/users" and "a@b" not in str(err)


async def test_handler_transport_records_and_streams() -> None:
    """The unit-test transport records requests and streams the body in small chunks."""

    async def handler(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawResponse:
        return RawResponse(200, {}, b"0123456789abcdef")

    transport = HandlerTransport(handler)
    raw = await transport.send("GET", "http://x/v3/a", {"A": "1"}, None, Timeouts())
    assert raw.body == b"0123456789abcdef"
    async with transport.stream("GET", "http://x/v3/b", {}, Timeouts()) as resp:
        chunks = [c async for c in resp.chunks]
    assert len(chunks) > 1 and b"".join(chunks) == raw.body
    assert [r[1] for r in transport.requests] == ["http://x/v3/a", "http://x/v3/b"]
    await transport.aclose()
    assert transport.closed


@pytest.mark.parametrize("streamed", [False, True])
async def test_redirects_are_never_followed(
    raw_server: Callable[[Serve], Awaitable[str]], streamed: bool
) -> None:
    """A 302 comes back as it is: the second origin never sees the request or its token."""
    hits: list[bytes] = []

    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    target = await raw_server(elsewhere)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        head = f"HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()
        writer.close()

    url = await raw_server(serve)
    transport = AiohttpTransport()
    headers = {"Authorization": "Bearer t0ken"}
    try:
        if streamed:
            async with transport.stream("GET", url, headers, Timeouts()) as resp:
                status = resp.status
        else:
            status = (await transport.send("POST", url, headers, b"{}", Timeouts())).status
    finally:
        await transport.aclose()
    assert status == 302 and hits == []


def _chunked(total: int, piece: int = 512) -> bytes:
    """A chunked-encoding body of ``total`` bytes of JSON-ish filler."""
    out = b""
    for i in range(0, total, piece):
        n = min(piece, total - i)
        out += f"{n:x}\r\n".encode() + b"x" * n + b"\r\n"
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(5000),
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
        % (len(gzip.compress(b"x" * 50_000)), gzip.compress(b"x" * 50_000)),
    ],
    ids=["content-length", "chunked", "gzip-bomb"],
)
async def test_an_answer_past_the_size_cap_is_refused(
    raw_server: Callable[[Serve], Awaitable[str]], answer: bytes
) -> None:
    """A body over max_body_bytes (declared, chunked or decompressed) is ResponseTooLarge."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    url = await raw_server(serve)
    transport = AiohttpTransport(max_body_bytes=1000)
    try:
        with pytest.raises(ResponseTooLarge) as info:
            await transport.send("GET", url, {}, None, Timeouts())
    finally:
        await transport.aclose()
    assert info.value.cap == 1000 and "1000 bytes" in str(info.value)
    assert info.value.path == "/v3/users" and "secret" not in str(info.value)


async def test_an_answer_at_the_cap_is_read_whole(
    raw_server: Callable[[Serve], Awaitable[str]],
) -> None:
    """A chunked body exactly at the cap still comes back complete."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(1000))
        await writer.drain()
        writer.close()

    url = await raw_server(serve)
    transport = AiohttpTransport(max_body_bytes=1000)
    try:
        raw = await transport.send("GET", url, {}, None, Timeouts())
    finally:
        await transport.aclose()
    assert raw.body == b"x" * 1000


async def test_the_client_does_not_retry_an_oversized_answer(
    raw_server: Callable[[Serve], Awaitable[str]],
) -> None:
    """SynapClient(max_body_bytes=...) sends an oversized GET once and raises ResponseTooLarge."""
    hits = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        hits += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"x" * 4096)
        await writer.drain()
        writer.close()

    url = await raw_server(serve)
    base = url.split("/users")[0]
    async with SynapClient(base, token="t0ken-t0ken", max_body_bytes=1024) as client:
        with pytest.raises(ResponseTooLarge):
            await client.request("GET", "users")
        assert client.statistics().in_flight == 0
    assert hits == 1
