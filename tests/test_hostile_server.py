"""A whole import through a hostile server: never a crash, a hang, a lost row or a leaked token.

A small aiohttp proxy stands between the run and an in-process sandbox. It forwards every
request, except that a rule may answer some of them itself (a redirect, an HTML 502, an echo of
the Authorization header), or forward them and then spoil the answer (a 2xx create whose body is
not the document, a truncated body, a body that never finishes). After the hostile run, a run
with ``--retry-failed`` through the now-honest proxy must leave every row on the server exactly
once, the ledger must agree with the server, and no file the runs wrote, nor their console, may
hold the token in any form.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web
from rich.console import Console

from synap_bulk.ledger import Ledger
from synap_bulk.runner import EXIT_FAILED, EXIT_INVALID, EXIT_OK, ledger_path, run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job

ROWS = [(f"H{i}", f"Person{i}", f"person{i}@example.edu") for i in range(1, 7)]
TOKEN = "p:hostile-7f3c9a1b2d4e6f8091a2"
#: How many matching requests a rule spoils (later ones pass: the server "recovers").
SPOILED = 2

Forward = Callable[[], Awaitable[tuple[int, dict[str, str], bytes]]]
Rule = Callable[[web.Request, int, Forward], Awaitable[web.StreamResponse | None]]


class Proxy:
    """Forwards to ``upstream``; ``rule`` may answer instead. Links are rewritten to the proxy."""

    def __init__(self, upstream_root: str, rule: Rule) -> None:
        self.upstream = upstream_root
        self.rule = rule
        self.seen: dict[str, int] = {}
        self.never = anyio.Event()  # what a slow body waits for; set only at teardown
        self.root = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = f"{request.method} {request.path}"
        n = self.seen[route] = self.seen.get(route, 0) + 1
        body = await request.read()

        async def forward() -> tuple[int, dict[str, str], bytes]:
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("authorization", "content-type", "accept", "subject-user")
            }
            async with self.http.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body or None
            ) as r:
                data = (await r.read()).replace(self.upstream.encode(), self.root.encode())
                keep = ("content-type", "retry-after", "location")
                return r.status, {k: v for k, v in r.headers.items() if k.lower() in keep}, data

        answer = await self.rule(request, n, forward)
        if answer is not None:
            return answer
        status, headers, data = await forward()
        return web.Response(status=status, headers=headers, body=data)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.root = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as self.http:
            try:
                yield self
            finally:
                self.never.set()
                await runner.cleanup()


def _registrations(rule: Rule) -> Rule:
    """``rule`` applied to the first :data:`SPOILED` registrations; everything else passes."""

    async def only(request: web.Request, n: int, forward: Forward) -> web.StreamResponse | None:
        creating = request.method == "POST" and request.path.endswith("/user-registrations")
        if creating and n <= SPOILED:
            return await rule(request, n, forward)
        return None

    return only


async def _redirect_302(request: web.Request, n: int, forward: Forward) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": "https://evil.example/take"})


async def _redirect_307(request: web.Request, n: int, forward: Forward) -> web.StreamResponse:
    return web.Response(status=307, headers={"Location": f"{request.path}?again=1"})


async def _html_502(request: web.Request, n: int, forward: Forward) -> web.StreamResponse:
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    return web.Response(status=502, text=page, content_type="text/html")


async def _echo_authorization(request: web.Request, n: int, forward: Forward) -> web.StreamResponse:
    auth = request.headers.get("Authorization", "")
    token = auth.removeprefix("Bearer ")
    echo = f"bad header {auth}; b64 {base64.b64encode(auth.encode()).decode()}; ...{token[2:12]}"
    doc = {"errors": [{"status": "400", "title": echo, "detail": echo, "meta": {"echo": echo}}]}
    return web.json_response(doc, status=400, content_type="application/vnd.api+json")


def _commit_then(body: bytes, content_type: str = "application/vnd.api+json") -> Rule:
    """Carry the create out upstream, then answer 201 with ``body`` instead of its document."""

    async def spoil(request: web.Request, n: int, forward: Forward) -> web.StreamResponse:
        status, _, _ = await forward()
        assert status == 201
        return web.Response(status=201, body=body, content_type=content_type)

    return spoil


async def _commit_then_wrong_content_type(
    request: web.Request, n: int, forward: Forward
) -> web.StreamResponse:
    """The real document, labelled text/html."""
    status, _, data = await forward()
    return web.Response(status=status, body=data, content_type="text/html")


async def _commit_then_truncated(
    request: web.Request, n: int, forward: Forward
) -> web.StreamResponse:
    """The real document cut in half, with a Content-Length that matches the cut (valid HTTP)."""
    status, _, data = await forward()
    return web.Response(status=status, body=data[: len(data) // 2], content_type="application/json")


def _slow_body(proxy: Proxy) -> Rule:
    """Carry the create out, send the headers and a first byte, then never finish the body."""

    async def slow(request: web.Request, n: int, forward: Forward) -> web.StreamResponse:
        await forward()
        resp = web.StreamResponse(status=201, headers={"Content-Type": "application/vnd.api+json"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"{")
        await proxy.never.wait()
        return resp

    return slow


def _job(tmp: Path, url: str) -> Path:
    with (tmp / "people.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["no", "name", "email"])
        w.writerows(ROWS)
    path = tmp / "job.yaml"
    path.write_text(
        f"""version: 1
name: hostile
api:
  base_url: {url}
  token_file: token.txt
  concurrency: 2
  timeout: 2
run:
  max_item_attempts: 3
task:
  kind: user-import
  source: people.csv
  match: externalId
  fields:
    name: "{{name}}"
    emailAddress: "{{email}}"
    externalId: "{{no}}"
"""
    )
    return path


def _forms_of(token: str) -> list[str]:
    """The token as a hostile server might echo it, and what our output must never hold."""
    return [
        token,
        token[2:12],
        base64.b64encode(f"Bearer {token}".encode()).decode(),
        base64.b64encode(token.encode()).decode(),
    ]


CASES: dict[str, Callable[[Proxy], Rule]] = {
    "302 on a create": lambda p: _registrations(_redirect_302),
    "307 on a create": lambda p: _registrations(_redirect_307),
    "HTML 502 on a create": lambda p: _registrations(_html_502),
    "an error echoing the Authorization header": lambda p: _registrations(_echo_authorization),
    "2xx create with an empty body": lambda p: _registrations(_commit_then(b"")),
    "2xx create with an HTML body": lambda p: _registrations(
        _commit_then(b"<html>created</html>", "text/html")
    ),
    "2xx create whose data is a list": lambda p: _registrations(_commit_then(b'{"data": []}')),
    "2xx create without data": lambda p: _registrations(_commit_then(b'{"meta": {}}')),
    "2xx create of a resource without id": lambda p: _registrations(
        _commit_then(b'{"data": {"type": "User", "attributes": {}}}')
    ),
    "2xx create with truncated JSON": lambda p: _registrations(_commit_then_truncated),
    "2xx create with the wrong content type": lambda p: _registrations(
        _commit_then_wrong_content_type
    ),
    "a slow body on a create": lambda p: _registrations(_slow_body(p)),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_hostile_answer_to_a_create_loses_no_row_and_leaks_no_token(
    tmp_path: Path, case: str
) -> None:
    console = Console(file=io.StringIO(), width=200)
    async with Sandbox(SandboxConfig(users=0, groups=1, seed=1, token=TOKEN)) as sb:
        proxy = Proxy(sb.root, lambda r, n, f: _pass(r, n, f))
        proxy.rule = CASES[case](proxy)
        async with proxy.running():
            (tmp_path / "token.txt").write_text(sb.token)
            (tmp_path / "token.txt").chmod(0o600)
            job = _job(tmp_path, proxy.root + "/v3")
            with anyio.fail_after(60):  # a hang fails here, not at the suite's timeout
                first = await run_job(load_job(job), console=console, handle_signals=False)
                out = tmp_path / "out" / "hostile"
                failed_lines = _failure_lines(out / "failures.csv")
                on_server_after_first = _server(sb)
                second = await run_job(
                    load_job(job), retry_failed=True, console=console, handle_signals=False
                )
            server = _server(sb)
            stats = sb.statistics()
        token = sb.token
    assert first in (EXIT_OK, EXIT_FAILED), console.file.getvalue()  # type: ignore[attr-defined]
    # No lost row: after the hostile run every row is on the server or in the failures file.
    lines = {no: i for i, (no, _, _) in enumerate(ROWS, start=2)}
    assert {lines[no] for no in on_server_after_first} | failed_lines == set(lines.values())
    # No misreported row: one the server has is not in the failures file (a 2xx we cannot
    # read, or an answer cut short, is looked up before the row is called failed).
    assert not {lines[no] for no in on_server_after_first} & failed_lines
    assert second == EXIT_OK, console.file.getvalue()  # type: ignore[attr-defined]
    assert set(server) == {no for no, _, _ in ROWS}
    assert stats.duplicate_creates == 0 and max(stats.creates_by_key.values()) == 1
    ledger = await Ledger.open_readonly(ledger_path(load_job(job)))
    try:
        states = await ledger.load_states()
    finally:
        await ledger.close()
    assert {k.split(":", 1)[1]: s.remote_id for k, s in states.items()} == server
    assert all(s.status == "done" for s in states.values())
    said = console.file.getvalue()  # type: ignore[attr-defined]
    for form in _forms_of(token):
        assert form not in said, form
        assert not _files_holding(tmp_path, form), form


async def _pass(request: web.Request, n: int, forward: Forward) -> web.StreamResponse | None:
    return None


def _files_holding(folder: Path, text: str) -> list[str]:
    """Every file under ``folder`` (ledger, its WAL, result files, summaries) holding ``text``."""
    found = []
    for path in folder.rglob("*"):
        if path.name == "token.txt" or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a SQLite side file removed as the ledger closed
            continue
        if text.encode() in data:
            found.append(str(path.relative_to(folder)))
    return found


def _failure_lines(path: Path) -> set[int]:
    if not path.exists():
        return set()
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return {int(r["_line"]) for r in csv.DictReader(fh)}


def _server(sb: Sandbox) -> dict[str, str]:
    return {
        u.external_id: u.id
        for u in sb.store.users.values()
        if u.external_id and u.external_id.startswith("H")
    }


async def _self_next(request: web.Request, n: int, forward: Forward) -> web.StreamResponse | None:
    """Every listing says its next page is itself."""
    if request.method != "GET" or "/_sandbox" in request.path:
        return None
    status, headers, data = await forward()
    if status == 200 and b'"links"' in data:
        doc = json.loads(data)
        if isinstance(doc.get("data"), list):
            doc["links"]["next"] = str(request.url)
            data = json.dumps(doc).encode()
    return web.Response(status=status, headers=headers, body=data)


async def test_a_self_referencing_next_on_the_import_listing_ends_the_run(tmp_path: Path) -> None:
    """The import's listings through a server whose links.next is always the page itself: the run
    ends with one error line (exit 2), nothing is recorded done, and an honest server then gets
    every row once."""
    console = Console(file=io.StringIO(), width=200)
    async with Sandbox(SandboxConfig(users=0, groups=1, seed=1, token=TOKEN)) as sb:
        proxy = Proxy(sb.root, _self_next)
        async with proxy.running():
            (tmp_path / "token.txt").write_text(sb.token)
            (tmp_path / "token.txt").chmod(0o600)
            job = _job(tmp_path, proxy.root + "/v3")
            with anyio.fail_after(60):
                first = await run_job(load_job(job), console=console, handle_signals=False)
                listings = sum(v for k, v in proxy.seen.items() if k.startswith("GET"))
                proxy.rule = _pass
                second = await run_job(load_job(job), console=console, handle_signals=False)
            server = _server(sb)
    said = console.file.getvalue()  # type: ignore[attr-defined]
    assert first == EXIT_INVALID, said
    assert "error: links.next repeats a page already fetched" in said
    assert listings < 20
    assert second == EXIT_OK, said
    assert set(server) == {no for no, _, _ in ROWS}


def _next_back_to_page_one(after: int) -> Rule:
    """The attempts listing's page ``after`` says its next page is page 1 (in a new spelling)."""

    async def rule(request: web.Request, n: int, forward: Forward) -> web.StreamResponse | None:
        if request.method != "GET" or not request.path.endswith("/attempts"):
            return None
        status, headers, data = await forward()
        if status == 200 and request.query.get("page[number]") == str(after):
            doc = json.loads(data)
            size = request.query.get("page[size]", "10")
            doc["links"]["next"] = f"{request.url.origin()}{request.path}?page[size]={size}"
            data = json.dumps(doc).encode()
        return web.Response(status=status, headers=headers, body=data)

    return rule


async def test_an_export_whose_next_leads_back_stops_and_resumes_to_each_attempt_once(
    tmp_path: Path,
) -> None:
    """An export through a links.next that leads back to page 1 ends with the loop error (exit 2)
    instead of writing the same attempts forever, is not called complete, and a resume through
    an honest server writes every attempt exactly once."""
    console = Console(file=io.StringIO(), width=200)
    config = SandboxConfig(seed=1, users=20, exams=1, attempts_per_exam=60, token=TOKEN)
    async with Sandbox(config) as sb:
        proxy = Proxy(sb.root, _next_back_to_page_one(after=3))
        async with proxy.running():
            (tmp_path / "token.txt").write_text(sb.token)
            (tmp_path / "token.txt").chmod(0o600)
            job = tmp_path / "job.yaml"
            job.write_text(
                f"""version: 1
name: loop-export
api:
  base_url: {proxy.root}/v3
  token_file: token.txt
task:
  kind: export-attempts
  format: ndjson
  output: attempts.ndjson
  page_size: 10
  parallel: 1
"""
            )
            with anyio.fail_after(60):
                first = await run_job(load_job(job), console=console, handle_signals=False)
                said_first = console.file.getvalue()  # type: ignore[attr-defined]
                proxy.rule = _pass
                second = await run_job(load_job(job), console=console, handle_signals=False)
            expected = sorted(a.id for a in sb.store.attempts.values())
    assert first == EXIT_INVALID, said_first
    assert "error: links.next repeats a page already fetched" in said_first
    assert second == EXIT_OK, console.file.getvalue()  # type: ignore[attr-defined]
    lines = (tmp_path / "attempts.ndjson").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids) == expected and len(ids) == len(set(ids)) == 60
