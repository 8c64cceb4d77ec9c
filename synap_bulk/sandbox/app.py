"""The sandbox's aiohttp.web application: the /v3 route table, the /_sandbox control routes, and
the one wrapper that puts auth, rate limit, faults, latency and counters around every /v3 handler.

Handlers are plain synchronous functions over the store (the wrapper reads the body first), so a
write can never interleave with another request, and a commit-then-fail fault can run the real
handler and then throw its answer away. They live by resource in mixins that
:class:`SandboxApp` inherits: :mod:`.people` (portals, users, registrations, user groups and
memberships), :mod:`.marking` (exams, attempts, marker roles, timer resets) and :mod:`.exports`
(export jobs, background jobs, export files); the helpers they share are in :mod:`.wire`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

import msgspec
from aiohttp import web

from ..jsonapi import MEDIA_TYPE, ErrorObject, ListDocument
from ..profile import load_profile
from .attempt_ops import AttemptOpsRoutes, route_table
from .behaviour import DROPPED, WRITE_FAULTS, Counters, RateLimiter, draw, pick_fault
from .collections import CollectionRoutes, compound, compound_params
from .config import SandboxConfig
from .marking import MarkingRoutes
from .people import PeopleRoutes
from .persist import SandboxStateError
from .store import Store, UserRec
from .wire import (
    _JSON_HEADERS,
    _P,
    ApiFailure,
    Ctx,
    Out,
    _check_params,
    _encoder,
    _error_body,
    _int_param,
    active_profile,
    err,
    fail,
)

__all__ = ["ApiFailure", "SandboxApp", "State"]

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_json_decoder = msgspec.json.Decoder()
_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_HTML_429 = (
    b"<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
    b"<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def _page_params() -> tuple[str, str, str, str]:
    return (_P.page_number_param, _P.page_size_param, _P.page_offset_param, _P.page_limit_param)


class State:
    """What the app and the :class:`~synap_bulk.sandbox.Sandbox` share: config, store, counters."""

    def __init__(
        self,
        config: SandboxConfig,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if config.profile.get("subject_user_header"):
            header = str(config.profile["subject_user_header"])
            config = msgspec.structs.replace(config, subject_user_header=header)
        self.config = config
        #: The API profile the sandbox follows (``SandboxConfig.profile``; fixed at start).
        self.profile = load_profile(config.profile)
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.root = f"http://{config.host}:{config.port}"
        self.counters = Counters()
        self.limiter = RateLimiter(self.counters, clock, wall)
        self.store = Store(config, wall)
        # A loaded state file's shape wins over the config's (the store says which it used).
        self.config = self.store.config
        self.tokens = self._tokens(config)

    @staticmethod
    def _tokens(config: SandboxConfig) -> dict[str, str]:
        """``Authorization`` header value -> token label (labels, never tokens, are reported)."""
        tokens = {f"Bearer {config.token}": "token"}
        for i, extra in enumerate(config.extra_tokens, start=1):
            tokens[f"Bearer {extra}"] = f"token-{i}"
        return tokens

    def set_config(self, config: SandboxConfig) -> None:
        self.config = config
        self.tokens = self._tokens(config)

    def reset(self) -> None:
        """A fresh store seeded from the current config, zero counters, full buckets; a state
        file is rewritten with the fresh seed (its journal emptied)."""
        state_file = self.store.state_file
        if state_file is not None:
            state_file.open()
        self.store = Store(self.config, self.wall, state_file=state_file, reseed=True)
        fresh = Counters()
        for name in Counters.__slots__:
            setattr(self.counters, name, getattr(fresh, name))
        self.limiter.reset()


class Route:
    """One /v3 route: its name (for counters and per-route latency) and how it is guarded."""

    __slots__ = ("fn", "method", "name", "needs_body", "path", "perm", "write")

    def __init__(
        self,
        method: str,
        path: str,
        name: str,
        fn: Callable[[Ctx, dict[str, str]], Out],
        perm: str,
        needs_body: bool = False,
    ) -> None:
        self.method = method
        self.path = path
        self.name = name
        self.fn = fn
        self.perm = perm  # "any" | "staff" | "admin" | "self" (handler checks the target)
        self.needs_body = needs_body
        self.write = method in ("POST", "PATCH", "DELETE")


_PERM_ROLES = {
    "any": frozenset({"admin", "educator", "student"}),
    "self": frozenset({"admin", "educator", "student"}),
    "staff": frozenset({"admin", "educator"}),
    "admin": frozenset({"admin"}),
}


class SandboxApp(PeopleRoutes, MarkingRoutes, CollectionRoutes, AttemptOpsRoutes):
    """Builds the aiohttp application over a :class:`State`.

    The /v3 handlers come from the mixins (:mod:`.people`, :mod:`.marking`, :mod:`.exports`);
    the route table, the wrapper, pagination and the control routes are here.
    """

    state: State

    def __init__(self, state: State) -> None:
        self.state = state
        self.routes: list[Route] = []
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        with active_profile(state.profile):
            self._define_routes()

    # ------------------------------------------------------------------ wiring

    def _define_routes(self) -> None:
        users = f"/v3/{_P.users_path}"
        groups = f"/v3/{_P.user_groups_path}"
        members = f"{groups}/{{id}}/relationships/{_P.group_members_relationship}"
        attempts = f"/v3/{_P.attempts_path}"
        r = self._route
        r("GET", f"/v3/{_P.portals_path}/current", "portals.current", self.portal_current, "any")
        r("GET", f"/v3/{_P.portals_path}/{{id}}", "portals.get", self.portal_get, "any")
        # Before users/{id}, so that "me" is not taken for an id.
        r("GET", f"{users}/me", "users.me", self.user_me, "any")
        r("GET", users, "users.list", self.users_list, "staff")
        r("GET", f"{users}/{{id}}", "users.get", self.user_get, "self")
        r("PATCH", f"{users}/{{id}}", "users.update", self.user_update, "self", True)
        r("DELETE", f"{users}/{{id}}", "users.delete", self.user_delete, "admin")
        r(
            "POST",
            f"/v3/{_P.registrations_path}",
            "user-registrations.create",
            self.registration_create,
            "admin",
            True,
        )
        r("GET", groups, "user-groups.list", self.groups_list, "staff")
        r("POST", groups, "user-groups.create", self.group_create, "admin", True)
        r("GET", f"{groups}/{{id}}", "user-groups.get", self.group_get, "staff")
        r("PATCH", f"{groups}/{{id}}", "user-groups.update", self.group_update, "admin", True)
        r("DELETE", f"{groups}/{{id}}", "user-groups.delete", self.group_delete, "admin")
        r("GET", members, "user-groups.members.get", self.members_get, "staff")
        r("POST", members, "user-groups.members.add", self.members_add, "admin", True)
        r("DELETE", members, "user-groups.members.remove", self.members_remove, "admin", True)
        r("PATCH", members, "user-groups.members.replace", self.members_replace, "admin", True)
        r("GET", f"/v3/{_P.exams_path}", "exams.list", self.exams_list, "any")
        r("GET", f"/v3/{_P.exams_path}/{{id}}", "exams.get", self.exam_get, "any")
        r("GET", attempts, "attempts.list", self.attempts_list, "staff")
        r("GET", f"{attempts}/{{id}}", "attempts.get", self.attempt_get, "self")
        roles = f"{attempts}/{{id}}/relationships/{{role}}"
        r("GET", roles, "attempts.markers.get", self.markers_get, "staff")
        r("POST", roles, "attempts.markers.add", self.markers_add, "staff", True)
        r("DELETE", roles, "attempts.markers.remove", self.markers_remove, "staff", True)
        r("PATCH", roles, "attempts.markers.replace", self.markers_replace, "staff", True)
        r(
            "POST",
            f"/v3/{_P.timer_resets_path}",
            "attempt-timer-resets.create",
            self.timer_reset_create,
            "staff",
            True,
        )
        r(
            "POST",
            f"/v3/{_P.exports_path}",
            "export-enriched-attempts.create",
            self.export_create,
            "staff",
            True,
        )
        r(
            "GET",
            f"/v3/{_P.background_jobs_path}/{{id}}",
            "background-jobs.get",
            self.job_get,
            "staff",
        )
        for route in self.collection_routes():  # enriched attempts, action logs, more exports
            r(*route)
        for method, path, name, handler, perm, needs_body in route_table():
            r(method, path, name, getattr(self, handler), perm, needs_body)

    def _route(
        self,
        method: str,
        path: str,
        name: str,
        fn: Callable[[Ctx, dict[str, str]], Out],
        perm: str,
        needs_body: bool = False,
    ) -> None:
        self.routes.append(Route(method, path, name, fn, perm, needs_body))
        regex = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$"
        self._patterns.append((re.compile(regex), method))

    def build(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        for route in self.routes:
            app.router.add_route(route.method, route.path, self._wrap(route))
        app.router.add_get("/_sandbox/stats", self.control_stats)
        app.router.add_post("/_sandbox/reset", self.control_reset)
        app.router.add_get("/_sandbox/config", self.control_config_get)
        app.router.add_patch("/_sandbox/config", self.control_config)
        app.router.add_get("/files/exports/{name}", self.export_file)
        unmatched = Route("*", "/v3/{tail:.*}", "unmatched", self.unmatched, "any")
        app.router.add_route("*", "/v3/{tail:.*}", self._wrap(unmatched))
        app.router.add_route("*", "/v3", self._wrap(unmatched))
        return app

    # ------------------------------------------------------------------ the wrapper

    def _wrap(self, route: Route) -> Handler:
        state = self.state
        counters = state.counters
        name = route.name
        fn = route.fn
        allowed_roles = _PERM_ROLES[route.perm]
        is_write = route.write
        needs_body = route.needs_body

        async def handle(request: web.Request) -> web.StreamResponse:
            with active_profile(state.profile):
                return await answer(request)

        async def answer(request: web.Request) -> web.StreamResponse:
            arrived = state.clock()
            c = counters
            c.requests += 1
            seq = c.requests
            c.by_route[name] = c.by_route.get(name, 0) + 1
            c.in_flight += 1
            if c.in_flight > c.max_in_flight:
                c.max_in_flight = c.in_flight
            cfg = state.config
            status = 500
            rl_headers: dict[str, str] | None = None
            try:
                # --- authentication
                label = state.tokens.get(request.headers.get("Authorization", ""))
                if label is None:
                    status, response = self._unauthorized(request, cfg)
                    return response
                c.by_token[label] = c.by_token.get(label, 0) + 1
                # --- rate limit
                if cfg.rate > 0:
                    decision = state.limiter.check(label, cfg)
                    blind = cfg.limiter == "blind"
                    if not decision.allowed and blind:
                        status = 429  # nginx limit_req: an HTML page and nothing to go on
                        return web.Response(
                            body=_HTML_429, status=429, headers={"Content-Type": "text/html"}
                        )
                    if cfg.ratelimit_headers and not blind:
                        rl_headers = {
                            _P.ratelimit_limit_header: str(decision.limit),
                            _P.ratelimit_remaining_header: str(decision.remaining),
                            _P.ratelimit_reset_header: str(decision.reset_s),
                        }
                    if not decision.allowed:
                        status = 429
                        headers = dict(_JSON_HEADERS)
                        if rl_headers:
                            headers.update(rl_headers)
                        headers[_P.retry_after_header] = decision.retry_after
                        body = _error_body(
                            [
                                err(
                                    429,
                                    "Too Many Requests",
                                    f"rate limit of {cfg.rate:g} requests/s per token "
                                    f"exceeded; retry after {decision.retry_after_s} s",
                                    code="rate_limited",
                                )
                            ]
                        )
                        return web.Response(body=body, status=429, headers=headers)
                # --- seeded faults and latency
                kind: str | None = None
                trace_id = ""
                delay = cfg.latency_ms
                if cfg.fault_rate > 0 or cfg.jitter_ms > 0:
                    d = draw(cfg.seed, seq)
                    kind = pick_fault(d, cfg, is_write)
                    trace_id = d.trace_id
                    delay += cfg.jitter_ms * d.jitter
                if cfg.route_latency_ms:
                    delay += cfg.route_latency_ms.get(name, 0.0)
                if name in ("user-groups.members.add", "user-groups.members.replace"):
                    delay += cfg.join_latency_ms
                if kind is not None and kind not in WRITE_FAULTS and kind != "truncate":
                    if delay > 0:
                        await state.sleep(delay / 1000.0)
                    c.fault(kind)
                    status, response = self._fault(request, kind, trace_id)
                    return response
                # --- the handler, then the rest of the latency: the answer leaves no earlier
                # than arrival + latency, and the server's own work counts towards it (a
                # server's latency includes its processing; added on top, 16 requests woken
                # together would queue behind each other's handlers and overshoot).
                failure: ApiFailure | None = None
                try:
                    accept = request.headers.get("Accept")
                    if accept is not None and MEDIA_TYPE in accept:
                        _check_accept(accept)
                    actor = self._actor(request, cfg, label)
                    if actor.role not in allowed_roles:
                        raise fail(
                            403,
                            "Forbidden",
                            f"a {actor.role} may not call {route.method} {route.path}",
                            code="forbidden",
                        )
                    body_doc: Any = None
                    if needs_body:
                        body_doc = await self._read_body(request)
                    seen = _ignoring_filters(request, cfg.ignore_filters)
                    out = fn(Ctx(seen, label, actor, body_doc), request.match_info)
                except ApiFailure as exc:
                    failure = exc
                # Whatever the handler changed reaches the state file before any answer leaves.
                try:
                    state.store.commit()
                except SandboxStateError as exc:
                    failure = fail(
                        500,
                        "Internal Server Error",
                        f"the change could not be saved: {exc}",
                        code="state_write_failed",
                    )
                if delay > 0:
                    await state.sleep(max(0.0, delay / 1000.0 - (state.clock() - arrived)))
                if failure is not None:
                    status = failure.status
                    headers = dict(_JSON_HEADERS)
                    if rl_headers:
                        headers.update(rl_headers)
                    headers.update(failure.headers)
                    if kind == "truncate":
                        c.fault(kind)
                        return await self._truncate(request, status, _error_body(failure.errors))
                    return web.Response(
                        body=_error_body(failure.errors), status=status, headers=headers
                    )
                if kind is not None:  # commit-then-* or truncate: the write has been applied
                    c.fault(kind)
                    if is_write:
                        c.committed_then_failed += 1
                    if kind == "truncate" and out.body:
                        status = out.status
                        return await self._truncate(request, out.status, out.body)
                    if kind == "truncate":  # a 204 has no body to cut: hang up instead
                        kind = "drop"
                    status, response = self._fault(
                        request, kind.removeprefix("commit-then-"), trace_id
                    )
                    return response
                status = out.status
                if out.headers or rl_headers:
                    headers = dict(_JSON_HEADERS)
                    if rl_headers:
                        headers.update(rl_headers)
                    if out.headers:
                        headers.update(out.headers)
                else:
                    headers = _JSON_HEADERS
                if out.body is None:
                    return web.Response(status=out.status, headers=headers)
                return web.Response(body=out.body, status=out.status, headers=headers)
            except (asyncio.CancelledError, ConnectionError):
                status = DROPPED  # the client went away while we were answering
                raise
            finally:
                c.in_flight -= 1
                c.by_status[status] = c.by_status.get(status, 0) + 1

        return handle

    def _unauthorized(
        self, request: web.Request, cfg: SandboxConfig
    ) -> tuple[int, web.StreamResponse]:
        present = "Authorization" in request.headers
        status = cfg.bad_token_status if present else 401
        if status == 404:
            error = err(
                404,
                "Not Found",
                "no portal is configured for this personal access token",
                code="not_found",
            )
        else:
            error = err(
                401,
                "Unauthorized",
                "a valid personal access token is required (Authorization: Bearer p:...)"
                if not present
                else "the personal access token is invalid or revoked",
                code="unauthorized",
                header="Authorization",
            )
        headers = dict(_JSON_HEADERS)
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="synap"'
        return status, web.Response(body=_error_body([error]), status=status, headers=headers)

    def _actor(self, request: web.Request, cfg: SandboxConfig, label: str) -> UserRec:
        store = self.state.store
        subject = request.headers.get(cfg.subject_user_header)
        if subject is None:
            admin = store.users.get(store.admin_id)
            if admin is None:  # the admin was deleted; the PAT still acts with admin rights
                admin = UserRec(store.admin_id, "Sandbox Admin", "", None, "admin", 0.0)
            return admin
        user = store.users.get(subject.strip())
        if user is None:
            raise fail(
                400,
                "Bad Request",
                f"the {cfg.subject_user_header} header names no user of this portal",
                code="invalid_subject_user",
                header=cfg.subject_user_header,
            )
        return user

    async def _read_body(self, request: web.Request) -> Any:
        ctype = request.headers.get("Content-Type", "")
        media, _, params = ctype.partition(";")
        if media.strip().lower() != MEDIA_TYPE:
            raise fail(
                415,
                "Unsupported Media Type",
                f"request bodies must be sent as {MEDIA_TYPE}",
                code="unsupported_media_type",
                header="Content-Type",
            )
        for param in params.split(";"):
            key = param.partition("=")[0].strip().lower()
            if key and key not in ("ext", "profile"):
                raise fail(
                    415,
                    "Unsupported Media Type",
                    f"media type parameter {key!r} is not allowed",
                    code="unsupported_media_type",
                    header="Content-Type",
                )
        raw = await request.read()
        if not raw:
            raise fail(400, "Bad Request", "the request body is empty", pointer="")
        try:
            return _json_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise fail(400, "Bad Request", f"malformed JSON: {exc}", code="invalid_json") from None

    def _fault(self, request: web.Request, kind: str, trace_id: str) -> tuple[int, web.Response]:
        if kind == "drop":
            # Close before any byte of the answer; aiohttp's later write fails quietly.
            transport = request.transport
            if transport is not None:
                transport.close()
            return DROPPED, web.Response(status=500)
        if kind == "html502":
            return 502, web.Response(
                body=_HTML_502, status=502, headers={"Content-Type": "text/html"}
            )
        status = int(kind)
        titles = {
            500: "Internal Server Error",
            502: "Bad Gateway",
            503: "Service Unavailable",
            504: "Gateway Timeout",
        }
        error = ErrorObject(
            status=str(status),
            code="server_error" if status == 500 else "transient",
            title=titles[status],
            detail="sandbox fault injection; quote the traceId to support",
            meta={"traceId": trace_id},
        )
        return status, web.Response(body=_error_body([error]), status=status, headers=_JSON_HEADERS)

    async def _truncate(self, request: web.Request, status: int, body: bytes) -> web.StreamResponse:
        """Send the status and a Content-Length for the whole body, then half of it, then hang
        up: the client sees a payload error."""
        response = web.StreamResponse(status=status, headers=_JSON_HEADERS)
        response.content_length = max(len(body), 2)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        transport = request.transport
        if transport is not None:
            transport.close()
        return response

    # ------------------------------------------------------------------ pagination

    def _page(
        self,
        request: web.Request,
        items: Sequence[T],
        render: Callable[[T], msgspec.Raw],
        allowed: Sequence[str] = (),
    ) -> Out:
        query = request.query
        compound_keys = compound_params(query)  # include, fields[...] (see .collections)
        page_params = _page_params()
        _check_params(query, (*allowed, *page_params, _P.sort_param, *compound_keys))
        cfg = self.state.config
        total = len(items)
        offset_mode = _P.page_offset_param in query or _P.page_limit_param in query
        if not any(p in query for p in page_params):
            offset_mode = _P.pagination == "offset"  # links in the profile's style
        cap = cfg.max_page_size  # page_size_over_max: reject above it (400), or clamp to it
        high = cap if cfg.page_size_over_max == "reject" else None
        if offset_mode:
            size = min(_int_param(query, _P.page_limit_param, cfg.default_page_size, 1, high), cap)
            start = _int_param(query, _P.page_offset_param, 0, 0)
        else:
            size = min(_int_param(query, _P.page_size_param, cfg.default_page_size, 1, high), cap)
            number = _int_param(query, _P.page_number_param, 1, 1)
            start = (number - 1) * size
        chunk = items[start : start + size]
        base = self.state.root + request.path
        keep = [(k, v) for k, v in query.items() if k not in page_params]

        def link(first: int) -> str:
            if offset_mode:
                params = [
                    *keep,
                    (_P.page_offset_param, str(first)),
                    (_P.page_limit_param, str(size)),
                ]
            else:
                params = [
                    *keep,
                    (_P.page_number_param, str(first // size + 1)),
                    (_P.page_size_param, str(size)),
                ]
            return base + "?" + urlencode(params, safe="[]")

        last_start = max(0, (total - 1) // size * size) if not offset_mode else max(0, total - size)
        links: dict[str, str | None] = {
            "self": link(start),
            "first": link(0),
            "prev": link(max(0, start - size)) if start > 0 else None,
            "next": link(start + size) if start + size < total else None,
            "last": link(last_start),
        }
        data: list[Any] = [render(x) for x in chunk]
        included: list[Any] = []
        if compound_keys:
            data, included = compound(self.state.store, query, data)
        doc = ListDocument(data=data, included=included, links=links, meta={"total": total})
        return Out(200, _encoder.encode(doc))

    # ------------------------------------------------------------------ unmatched

    def unmatched(self, ctx: Ctx, m: dict[str, str]) -> Out:
        path = ctx.request.path
        methods = sorted({meth for rx, meth in self._patterns if rx.match(path)})
        if methods:
            raise ApiFailure(
                405,
                [
                    err(
                        405,
                        "Method Not Allowed",
                        f"{ctx.request.method} is not allowed here (allowed: {', '.join(methods)})",
                        code="method_not_allowed",
                    )
                ],
                {"Allow": ", ".join(methods)},
            )
        raise fail(404, "Not Found", f"no route {path}", code="not_found")

    # ------------------------------------------------------------------ control routes

    def _control_auth(self, request: web.Request) -> web.Response | None:
        self.state.counters.control_requests += 1
        if request.headers.get("Authorization", "") in self.state.tokens:
            return None
        _status, response = self._unauthorized(request, self.state.config)
        assert isinstance(response, web.Response)
        return response

    async def control_stats(self, request: web.Request) -> web.StreamResponse:
        denied = self._control_auth(request)
        if denied is not None:
            return denied
        stats = self.state.counters.snapshot(self.state.store.counts())
        return web.Response(
            body=_encoder.encode(stats), headers={"Content-Type": "application/json"}
        )

    async def control_reset(self, request: web.Request) -> web.StreamResponse:
        denied = self._control_auth(request)
        if denied is not None:
            return denied
        self.state.reset()
        return web.Response(status=204)

    async def control_config_get(self, request: web.Request) -> web.StreamResponse:
        from .config import public_config

        denied = self._control_auth(request)
        if denied is not None:
            return denied
        body = _encoder.encode(public_config(self.state.config))
        return web.Response(body=body, headers={"Content-Type": "application/json"})

    async def control_config(self, request: web.Request) -> web.StreamResponse:
        from .config import apply_changes, public_config

        denied = self._control_auth(request)
        if denied is not None:
            return denied
        try:
            changes = _json_decoder.decode(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of settings")
            new = apply_changes(self.state.config, changes)
        except (msgspec.DecodeError, ValueError) as exc:
            body = _error_body([err(400, "Bad Request", str(exc), code="invalid_config")])
            return web.Response(body=body, status=400, headers=_JSON_HEADERS)
        self.state.set_config(new)
        body = _encoder.encode(public_config(new))
        return web.Response(body=body, headers={"Content-Type": "application/json"})


def _ignoring_filters(request: web.Request, ignored: Sequence[str]) -> web.Request:
    """The request as a handler sees it when the sandbox ignores some filters (the setting
    ``ignore_filters``): without those query parameters."""
    if not ignored or not any(name in request.query for name in ignored):
        return request
    kept = [(k, v) for k, v in request.query.items() if k not in ignored]
    return request.clone(rel_url=request.rel_url.with_query(kept))


def _check_accept(accept: str) -> None:
    """JSON:API: 406 when every instance of its media type in Accept carries a parameter other
    than ext/profile (and nothing else acceptable is offered)."""
    plain = False
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        if media != MEDIA_TYPE:
            if media in ("*/*", "application/*"):
                plain = True
            continue
        names = [p.partition("=")[0].strip().lower() for p in params.split(";") if p.strip()]
        if all(n in ("ext", "profile", "q") for n in names):
            plain = True
    if not plain:
        raise fail(
            406,
            "Not Acceptable",
            f"{MEDIA_TYPE} may only carry the ext and profile parameters",
            code="not_acceptable",
            header="Accept",
        )
