"""The sandbox's aiohttp.web application: the /v3 routes, the /_sandbox control routes, and the
one wrapper that puts auth, rate limit, faults, latency and counters around every /v3 handler.

Handlers are plain synchronous functions over the store (the wrapper reads the body first), so a
write can never interleave with another request, and a commit-then-fail fault can run the real
handler and then throw its answer away.
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

from ..jsonapi import MEDIA_TYPE, Document, ErrorDocument, ErrorObject, ErrorSource, ListDocument
from ..profile import DEFAULT_PROFILE
from ..resources import (
    ATTEMPT_STATUSES,
    MARKER_ROLES,
    TYPE_ATTEMPT,
    TYPE_ATTEMPT_TIMER_RESET,
    TYPE_EXAM,
    TYPE_EXPORT_ENRICHED_ATTEMPT,
    TYPE_USER,
    TYPE_USER_GROUP,
    TYPE_USER_REGISTRATION,
    MarkerRole,
)
from .behaviour import DROPPED, WRITE_FAULTS, Counters, RateLimiter, draw, pick_fault
from .config import SandboxConfig
from .store import AttemptRec, ExamRec, GroupRec, JobRec, Store, UserRec, iso, parse_iso

__all__ = ["ApiFailure", "SandboxApp", "State"]

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_P = DEFAULT_PROFILE
#: /relationships/<segment> of each marker role, from the shared profile.
_ROLE_BY_PATH: dict[str, MarkerRole] = {
    path: MARKER_ROLES[name] for name, path in _P.marker_role_paths.items()
}
_JSON_HEADERS = {"Content-Type": MEDIA_TYPE}
_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


class ApiFailure(Exception):
    """A JSON:API error answer, raised by handlers and turned into a response by the wrapper."""

    def __init__(
        self, status: int, errors: list[ErrorObject], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.errors = errors
        self.headers = headers or {}


def err(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    code: str | None = None,
    pointer: str | None = None,
    parameter: str | None = None,
    header: str | None = None,
) -> ErrorObject:
    """One JSON:API error object."""
    source = None
    if pointer is not None or parameter is not None or header is not None:
        source = ErrorSource(pointer=pointer, parameter=parameter, header=header)
    return ErrorObject(status=str(status), code=code, title=title, detail=detail, source=source)


def fail(status: int, title: str, detail: str | None = None, **kw: Any) -> ApiFailure:
    return ApiFailure(status, [err(status, title, detail, **kw)])


def not_found(what: str, id_: str, **kw: Any) -> ApiFailure:
    return fail(404, "Not Found", f"{what} {id_} does not exist", code="not_found", **kw)


class Out:
    """A handler's successful answer: status, body (None for 204) and extra headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes | None, headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers


class Ctx:
    """Who is asking: the token's label and the acting user (the Subject-User, or the admin)."""

    __slots__ = ("actor", "body", "label", "request")

    def __init__(self, request: web.Request, label: str, actor: UserRec, body: Any) -> None:
        self.request = request
        self.label = label
        self.actor = actor
        self.body = body


class State:
    """What the app and the :class:`~synap_bulk.sandbox.Sandbox` share: config, store, counters."""

    def __init__(
        self,
        config: SandboxConfig,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.root = f"http://{config.host}:{config.port}"
        self.counters = Counters()
        self.limiter = RateLimiter(self.counters, clock, wall)
        self.store = Store(config, wall)
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
        """A fresh store seeded from the current config, zero counters, full buckets."""
        self.store = Store(self.config, self.wall)
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


def _doc(data: Any, **kw: Any) -> bytes:
    return _encoder.encode(Document(data=data, **kw))


def _error_body(errors: list[ErrorObject]) -> bytes:
    return _encoder.encode(ErrorDocument(errors=errors))


# --------------------------------------------------------------------------- body helpers


def _data(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or "data" not in body:
        raise fail(400, "Bad Request", "the document has no data member", pointer="/data")
    data = body["data"]
    if not isinstance(data, dict):
        raise fail(400, "Bad Request", "data must be a resource object", pointer="/data")
    return data


def _resource_in(body: Any, type_: str, *, id_: str | None = None) -> dict[str, Any]:
    """The resource object of a create (``id_`` None) or update body, checked as JSON:API says."""
    data = _data(body)
    got = data.get("type")
    if not isinstance(got, str):
        raise fail(
            400, "Bad Request", "data.type is required", code="required", pointer="/data/type"
        )
    if got != type_:
        raise fail(
            409,
            "Conflict",
            f"data.type {got!r} does not match this endpoint's type {type_!r}",
            code="type_mismatch",
            pointer="/data/type",
        )
    if id_ is None:
        if "id" in data:
            raise fail(
                403,
                "Forbidden",
                "client-generated ids are not supported",
                code="client_id",
                pointer="/data/id",
            )
    elif data.get("id") != id_:
        raise fail(
            409,
            "Conflict",
            "data.id does not match the id in the URL",
            code="id_mismatch",
            pointer="/data/id",
        )
    attrs = data.get("attributes", {})
    if not isinstance(attrs, dict):
        raise fail(400, "Bad Request", "attributes must be an object", pointer="/data/attributes")
    rels = data.get("relationships", {})
    if not isinstance(rels, dict):
        raise fail(
            400, "Bad Request", "relationships must be an object", pointer="/data/relationships"
        )
    return data


def _linkage_list(body: Any, type_: str) -> list[str]:
    """The ids of a to-many relationship body; wrong shapes are 400, wrong types 409."""
    if not isinstance(body, dict) or "data" not in body:
        raise fail(400, "Bad Request", "the document has no data member", pointer="/data")
    data = body["data"]
    if not isinstance(data, list):
        raise fail(
            400,
            "Bad Request",
            "a to-many relationship takes a list of resource identifiers",
            pointer="/data",
        )
    ids: list[str] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise fail(400, "Bad Request", "not a resource identifier", pointer=f"/data/{i}")
        if item.get("type") != type_:
            raise fail(
                409,
                "Conflict",
                f"expected type {type_!r}, got {item.get('type')!r}",
                code="type_mismatch",
                pointer=f"/data/{i}/type",
            )
        ids.append(item["id"])
    return list(dict.fromkeys(ids))


def _to_one(rels: dict[str, Any], name: str, type_: str, *, required: bool) -> str | None:
    pointer = f"/data/relationships/{name}"
    rel = rels.get(name)
    if rel is None:
        if required:
            raise fail(400, "Bad Request", f"{name} is required", code="required", pointer=pointer)
        return None
    data = rel.get("data") if isinstance(rel, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        if data is None and not required:
            return None
        raise fail(400, "Bad Request", f"{name} needs to-one linkage", pointer=pointer + "/data")
    if data.get("type") != type_:
        raise fail(
            409,
            "Conflict",
            f"{name} must link a {type_}",
            code="type_mismatch",
            pointer=pointer + "/data/type",
        )
    value: str = data["id"]
    return value


# --------------------------------------------------------------------------- query helpers


def _int_param(query: Any, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise fail(
            400, "Bad Request", f"{name} must be an integer", code="invalid", parameter=name
        ) from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise fail(400, "Bad Request", f"{name} must be {bound}", code="invalid", parameter=name)
    return value


def _check_params(query: Any, allowed: Sequence[str]) -> None:
    """Unknown filter[...] or other parameters are a 400: a typo must not silently list all."""
    for key in query:
        if key not in allowed:
            raise fail(
                400,
                "Bad Request",
                f"unsupported query parameter {key}",
                code="unsupported_parameter",
                parameter=key,
            )


_PAGE_PARAMS = (_P.page_number_param, _P.page_size_param, _P.page_offset_param, _P.page_limit_param)


def _sorted(items: list[T], query: Any, keys: dict[str, Callable[[T], Any]]) -> list[T]:
    spec = query.get(_P.sort_param)
    if not spec:
        return items
    fields = [f.strip() for f in spec.split(",") if f.strip()]
    for f in fields:
        if f.lstrip("-") not in keys:
            raise fail(
                400,
                "Bad Request",
                f"cannot sort by {f.lstrip('-')!r} (known: {', '.join(keys)})",
                code="invalid_sort",
                parameter=_P.sort_param,
            )
    out = list(items)
    for f in reversed(fields):  # stable sorts, last key first
        out.sort(key=_none_last(keys[f.lstrip("-")]), reverse=f.startswith("-"))
    return out


def _none_last(key: Callable[[T], Any]) -> Callable[[T], tuple[bool, Any]]:
    """A sort key that puts missing values (None) after the others."""

    def wrapped(item: T) -> tuple[bool, Any]:
        value = key(item)
        return (value is None, value if value is not None else 0)

    return wrapped


class SandboxApp:
    """Builds the aiohttp application over a :class:`State`."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.routes: list[Route] = []
        self._patterns: list[tuple[re.Pattern[str], str]] = []
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
                    if cfg.ratelimit_headers:
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
                    out = fn(Ctx(request, label, actor, body_doc), request.match_info)
                except ApiFailure as exc:
                    failure = exc
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
        _check_params(query, (*allowed, *_PAGE_PARAMS, _P.sort_param))
        cfg = self.state.config
        total = len(items)
        offset_mode = _P.page_offset_param in query or _P.page_limit_param in query
        if offset_mode:
            size = _int_param(
                query, _P.page_limit_param, cfg.default_page_size, 1, cfg.max_page_size
            )
            start = _int_param(query, _P.page_offset_param, 0, 0)
        else:
            size = _int_param(
                query, _P.page_size_param, cfg.default_page_size, 1, cfg.max_page_size
            )
            number = _int_param(query, _P.page_number_param, 1, 1)
            start = (number - 1) * size
        chunk = items[start : start + size]
        base = self.state.root + request.path
        keep = [(k, v) for k, v in query.items() if k not in _PAGE_PARAMS]

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
        doc = ListDocument(data=[render(x) for x in chunk], links=links, meta={"total": total})
        return Out(200, _encoder.encode(doc))

    # ------------------------------------------------------------------ portals

    def portal_current(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return Out(200, _doc(self.state.store.portal.render()))

    def portal_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        portal = self.state.store.portal
        if m["id"] != portal.id:
            raise not_found("Portal", m["id"])
        return Out(200, _doc(portal.render()))

    # ------------------------------------------------------------------ users

    def _user(self, id_: str) -> UserRec:
        user = self.state.store.users.get(id_)
        if user is None:
            raise not_found("User", id_)
        return user

    def _self_or_staff(self, ctx: Ctx, user_id: str) -> None:
        if ctx.actor.role == "student" and ctx.actor.id != user_id:
            raise fail(403, "Forbidden", "a student may only act on themselves", code="forbidden")

    def users_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        store = self.state.store
        q = ctx.request.query
        items: list[UserRec] | None = None
        email = q.get(_P.filter_email)
        if email is not None:
            u = store.user_by_email(email.strip())
            items = [u] if u else []
        ext = q.get(_P.filter_external_id)
        if ext is not None:
            u = store.user_by_external_id(ext)
            items = [x for x in (items if items is not None else [u] if u else []) if x is u]
        gid = q.get(_P.filter_user_group)
        if gid is not None:
            g = store.groups.get(gid)
            if items is None:
                items = [store.users[i] for i in g.members if i in store.users] if g else []
            else:
                items = [x for x in items if g is not None and x.id in g.members]
        if items is None:
            items = store.user_list()
        items = _sorted(
            items,
            q,
            {
                "id": lambda u: u.id,
                "createdAt": lambda u: u.created_at,
                "updatedAt": lambda u: u.updated_at,
                "name": lambda u: u.name,
                "emailAddress": lambda u: u.email.lower(),
                "externalId": lambda u: u.external_id,
            },
        )
        allowed = (_P.filter_email, _P.filter_external_id, _P.filter_user_group)
        return self._page(ctx.request, items, UserRec.render, allowed)

    def user_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        self._self_or_staff(ctx, m["id"])
        return Out(200, _doc(self._user(m["id"]).render()))

    def user_update(self, ctx: Ctx, m: dict[str, str]) -> Out:
        self._self_or_staff(ctx, m["id"])
        store = self.state.store
        user = self._user(m["id"])
        data = _resource_in(ctx.body, TYPE_USER, id_=user.id)
        attrs: dict[str, Any] = data.get("attributes", {})
        errors: list[ErrorObject] = []
        ptr = "/data/attributes/"
        read_only = {
            "createdAt",
            "updatedAt",
            "lastSeen",
            "emailVerified",
            "firstName",
            "lastName",
            "userGroupsMetadata",
            "authData",
        }
        writable = {
            "name",
            "emailAddress",
            "externalId",
            "timeZone",
            "locale",
            "attr",
            "preferences",
            "marketingEmailsConsent",
            "profilePicture",
            "notificationConfig",
        }
        for key in attrs:
            if key in read_only:
                errors.append(
                    err(
                        400,
                        "Bad Request",
                        f"{key} is read-only",
                        code="read_only",
                        pointer=ptr + key,
                    )
                )
            elif key not in writable:
                errors.append(
                    err(
                        400,
                        "Bad Request",
                        f"unknown attribute {key}",
                        code="unknown_attribute",
                        pointer=ptr + key,
                    )
                )
        name = attrs.get("name", user.name)
        if not isinstance(name, str) or not name.strip():
            errors.append(_invalid(ptr + "name", "name must be a non-empty string"))
        email = attrs.get("emailAddress", user.email)
        if not isinstance(email, str) or not _EMAIL.match(email):
            errors.append(_invalid(ptr + "emailAddress", "not an email address"))
        elif store.by_email.get(email.lower(), user.id) != user.id:
            errors.append(_taken(ptr + "emailAddress", "email address"))
        ext = attrs.get("externalId", user.external_id)
        if ext is not None and (not isinstance(ext, str) or not ext):
            errors.append(_invalid(ptr + "externalId", "externalId must be a string or null"))
        elif ext is not None and store.by_external_id.get(ext, user.id) != user.id:
            errors.append(_taken(ptr + "externalId", "externalId"))
        for key in ("timeZone", "locale"):
            if attrs.get(key) is not None and not isinstance(attrs[key], str):
                errors.append(_invalid(ptr + key, f"{key} must be a string or null"))
        for key in ("attr", "preferences"):
            if attrs.get(key) is not None and not isinstance(attrs[key], dict):
                errors.append(_invalid(ptr + key, f"{key} must be an object or null"))
        if errors:
            raise ApiFailure(400, errors)
        assert isinstance(name, str) and isinstance(email, str)
        user.name = name
        store.update_user_keys(user, email, ext)
        if "timeZone" in attrs:
            user.time_zone = attrs["timeZone"]
        if "locale" in attrs:
            user.locale = attrs["locale"]
        if "attr" in attrs:
            user.attr = attrs["attr"] or {}
        if "preferences" in attrs:
            user.preferences = attrs["preferences"] or {}
        user.updated_at = max(self.state.wall(), user.updated_at)
        user.raw = None
        return Out(200, _doc(user.render()))

    def user_delete(self, ctx: Ctx, m: dict[str, str]) -> Out:
        user = self._user(m["id"])
        self.state.store.delete_user(user)
        return Out(204, None)

    def registration_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        store = self.state.store
        counters = self.state.counters
        data = _resource_in(ctx.body, TYPE_USER_REGISTRATION)
        attrs: dict[str, Any] = data.get("attributes", {})
        rels: dict[str, Any] = data.get("relationships", {})
        ptr = "/data/attributes/"
        errors: list[ErrorObject] = []
        name = attrs.get("name")
        if name is None:
            errors.append(_required(ptr + "name", "name"))
        elif not isinstance(name, str) or not name.strip():
            errors.append(_invalid(ptr + "name", "name must be a non-empty string"))
        email = attrs.get("emailAddress")
        duplicate = False
        if email is None:
            errors.append(_required(ptr + "emailAddress", "emailAddress"))
        elif not isinstance(email, str) or not _EMAIL.match(email):
            errors.append(_invalid(ptr + "emailAddress", "not an email address"))
        elif email.lower() in store.by_email:
            errors.append(_taken(ptr + "emailAddress", "email address"))
            duplicate = True
        password = attrs.get("password")
        if password is not None and (not isinstance(password, str) or len(password) < 8):
            errors.append(
                err(
                    400,
                    "Bad Request",
                    "password must be at least 8 characters",
                    code="too_short",
                    pointer=ptr + "password",
                )
            )
        ext = attrs.get("externalId")
        if ext is not None:
            if not isinstance(ext, str) or not ext:
                errors.append(_invalid(ptr + "externalId", "externalId must be a non-empty string"))
            elif ext in store.by_external_id:
                errors.append(_taken(ptr + "externalId", "externalId"))
                duplicate = True
        for key in ("locale", "timeZone"):
            if key in attrs and not isinstance(attrs[key], str):
                errors.append(_invalid(ptr + key, f"{key} must be a string"))
        for key in ("attr", "preferences", "registrationSource"):
            if key in attrs and not isinstance(attrs[key], dict):
                errors.append(_invalid(ptr + key, f"{key} must be an object"))
        if "welcomeEmailDisabled" in attrs and not isinstance(attrs["welcomeEmailDisabled"], bool):
            errors.append(_invalid(ptr + "welcomeEmailDisabled", "must be a boolean"))
        group_id: str | None = None
        ug = rels.get("userGroups")
        if ug is not None:
            gdata = ug.get("data") if isinstance(ug, dict) else None
            gptr = "/data/relationships/userGroups/data"
            if not isinstance(gdata, list):
                errors.append(_invalid(gptr, "userGroups takes a list of UserGroup identifiers"))
            elif len(gdata) > _P.registration_max_groups:
                errors.append(
                    err(
                        400,
                        "Bad Request",
                        "only one user group is allowed at registration; add more later",
                        code="too_many_groups",
                        pointer=gptr,
                    )
                )
            elif gdata:
                item = gdata[0]
                if not isinstance(item, dict) or item.get("type") != TYPE_USER_GROUP:
                    errors.append(_invalid(gptr + "/0", "expected a UserGroup identifier"))
                elif item.get("id") not in store.groups:
                    errors.append(
                        err(
                            400,
                            "Bad Request",
                            f"user group {item.get('id')} does not exist",
                            code="not_found",
                            pointer=gptr + "/0",
                        )
                    )
                else:
                    group_id = item["id"]
        if duplicate:
            counters.duplicate_creates += 1
        if errors:
            raise ApiFailure(400, errors)
        assert isinstance(name, str) and isinstance(email, str)
        user = store.add_user(name.strip(), email, ext, group_id)
        if isinstance(attrs.get("locale"), str):
            user.locale = attrs["locale"]
        if isinstance(attrs.get("timeZone"), str):
            user.time_zone = attrs["timeZone"]
        if isinstance(attrs.get("attr"), dict):
            user.attr = attrs["attr"]
        if isinstance(attrs.get("preferences"), dict):
            user.preferences = attrs["preferences"]
        counters.created(email.lower())
        doc = {
            "data": {
                "type": TYPE_USER_REGISTRATION,
                "id": user.id,
                "attributes": {
                    "name": user.name,
                    "emailAddress": user.email,
                    "externalId": user.external_id,
                    "locale": user.locale,
                    "timeZone": user.time_zone,
                    "createdAt": iso(user.created_at),
                },
                "relationships": {
                    "user": {"data": {"type": TYPE_USER, "id": user.id}},
                    "userGroups": {
                        "data": [{"type": TYPE_USER_GROUP, "id": g} for g in user.groups]
                    },
                },
            }
        }
        location = f"{self.state.root}/v3/{_P.users_path}/{user.id}"
        return Out(201, _encoder.encode(doc), {"Location": location})

    # ------------------------------------------------------------------ user groups

    def _group(self, id_: str) -> GroupRec:
        group = self.state.store.groups.get(id_)
        if group is None:
            raise not_found("UserGroup", id_)
        return group

    def groups_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        q = ctx.request.query
        items = self.state.store.group_list()
        name = q.get(_P.filter_group_name)
        if name is not None:
            items = [g for g in items if g.name == name]
        items = _sorted(
            items,
            q,
            {"id": lambda g: g.id, "name": lambda g: g.name, "createdAt": lambda g: g.created_at},
        )
        return self._page(ctx.request, items, GroupRec.render, (_P.filter_group_name,))

    def group_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return Out(200, _doc(self._group(m["id"]).render()))

    def _group_attrs(self, attrs: dict[str, Any], *, create: bool) -> list[ErrorObject]:
        ptr = "/data/attributes/"
        errors: list[ErrorObject] = []
        if create and "name" not in attrs:
            errors.append(_required(ptr + "name", "name"))
        if "name" in attrs and (not isinstance(attrs["name"], str) or not attrs["name"].strip()):
            errors.append(_invalid(ptr + "name", "name must be a non-empty string"))
        if "description" in attrs and not isinstance(attrs["description"], str | None):
            errors.append(_invalid(ptr + "description", "description must be a string"))
        if "attr" in attrs and not isinstance(attrs["attr"], dict | None):
            errors.append(_invalid(ptr + "attr", "attr must be an object"))
        if "isArchived" in attrs and not isinstance(attrs["isArchived"], bool):
            errors.append(_invalid(ptr + "isArchived", "isArchived must be a boolean"))
        for key in ("isDefaultGroup", "defaultGroupType", "totalUsers", "parentId", "internal"):
            if key in attrs:
                errors.append(
                    err(
                        400,
                        "Bad Request",
                        f"{key} is read-only",
                        code="read_only",
                        pointer=ptr + key,
                    )
                )
        return errors

    def group_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        data = _resource_in(ctx.body, TYPE_USER_GROUP)
        attrs: dict[str, Any] = data.get("attributes", {})
        errors = self._group_attrs(attrs, create=True)
        if errors:
            raise ApiFailure(400, errors)
        group = self.state.store.add_group(
            attrs["name"].strip(), attrs.get("description") or "", attrs.get("attr") or {}
        )
        self.state.counters.created(f"{TYPE_USER_GROUP}:{group.name}")
        location = f"{self.state.root}/v3/{_P.user_groups_path}/{group.id}"
        return Out(201, _doc(group.render()), {"Location": location})

    def group_update(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        data = _resource_in(ctx.body, TYPE_USER_GROUP, id_=group.id)
        attrs: dict[str, Any] = data.get("attributes", {})
        errors = self._group_attrs(attrs, create=False)
        if errors:
            raise ApiFailure(400, errors)
        if "name" in attrs:
            group.name = attrs["name"].strip()
        if "description" in attrs:
            group.description = attrs["description"] or ""
        if "attr" in attrs:
            group.attr = attrs["attr"] or {}
        if "isArchived" in attrs:
            group.is_archived = attrs["isArchived"]
        group.raw = None
        return Out(200, _doc(group.render()))

    def group_delete(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        if group.default_type is not None:
            raise fail(403, "Forbidden", "a default group cannot be deleted", code="default_group")
        self.state.store.delete_group(group)
        return Out(204, None)

    def _member_ids(self, ctx: Ctx) -> list[str]:
        ids = _linkage_list(ctx.body, TYPE_USER)
        users = self.state.store.users
        missing = [
            err(
                404,
                "Not Found",
                f"User {uid} does not exist",
                code="not_found",
                pointer=f"/data/{i}",
            )
            for i, uid in enumerate(ids)
            if uid not in users
        ]
        if missing:
            raise ApiFailure(404, missing)
        return ids

    def members_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        body = _encoder.encode(
            {
                "data": [{"type": TYPE_USER, "id": uid} for uid in group.members],
                "meta": {"total": len(group.members)},
            }
        )
        return Out(200, body)

    def members_add(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        self.state.store.add_members(group, self._member_ids(ctx))
        return Out(204, None)

    def members_remove(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        self.state.store.remove_members(group, self._member_ids(ctx))
        return Out(204, None)

    def members_replace(self, ctx: Ctx, m: dict[str, str]) -> Out:
        group = self._group(m["id"])
        ids = self._member_ids(ctx)
        store = self.state.store
        keep = set(ids)
        store.remove_members(group, [u for u in group.members if u not in keep])
        store.add_members(group, ids)
        return Out(204, None)

    # ------------------------------------------------------------------ exams

    def _exam(self, id_: str) -> ExamRec:
        exam = self.state.store.exams.get(id_)
        if exam is None:
            raise not_found(TYPE_EXAM, id_)
        return exam

    def exams_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        q = ctx.request.query
        items = list(self.state.store.exams.values())
        status = q.get(_P.filter_status)
        if status is not None:
            wanted = set(status.split(","))
            items = [e for e in items if e.status in wanted]
        items = _sorted(
            items,
            q,
            {"id": lambda e: e.id, "name": lambda e: e.name, "createdAt": lambda e: e.created_at},
        )
        return self._page(ctx.request, items, ExamRec.render, (_P.filter_status,))

    def exam_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return Out(200, _doc(self._exam(m["id"]).render()))

    # ------------------------------------------------------------------ attempts

    def _attempt(self, id_: str) -> AttemptRec:
        attempt = self.state.store.attempts.get(id_)
        if attempt is None:
            raise not_found(TYPE_ATTEMPT, id_)
        return attempt

    def _attempt_filters(self, params: Any, source: str) -> list[AttemptRec]:
        """Attempts matching examV2/user/status/updatedSince, in creation order.

        ``params`` holds the filter values (query parameters or an export's filter object);
        ``source`` is "parameter" or a pointer prefix, for error objects.
        """
        store = self.state.store

        def where(key: str) -> dict[str, str]:
            if source == "parameter":
                return {"parameter": key}
            return {"pointer": f"{source}/{key}"}

        exam_id = params.get(_P.filter_exam)
        user_id = params.get(_P.filter_user)
        items: list[AttemptRec]
        if exam_id is not None:
            items = store.attempts_by_exam.get(exam_id, [])
            if user_id is not None:
                items = [a for a in items if a.user_id == user_id]
        elif user_id is not None:
            items = store.attempts_by_user.get(user_id, [])
        else:
            items = store.attempt_list()
        status = params.get(_P.filter_status)
        if status is not None:
            wanted = set(status.split(","))
            unknown = wanted - set(ATTEMPT_STATUSES)
            if unknown:
                raise fail(
                    400,
                    "Bad Request",
                    f"unknown examStatus {sorted(unknown)[0]!r} "
                    f"(known: {', '.join(ATTEMPT_STATUSES)})",
                    code="invalid",
                    **where(_P.filter_status),
                )
            items = [a for a in items if a.exam_status in wanted]
        since = params.get(_P.filter_updated_since)
        if since is not None:
            try:
                cutoff = parse_iso(since)
            except ValueError:
                raise fail(
                    400,
                    "Bad Request",
                    f"{_P.filter_updated_since} must be an RFC 3339 timestamp",
                    code="invalid",
                    **where(_P.filter_updated_since),
                ) from None
            # Compare at the millisecond precision the API shows.
            cutoff = round(cutoff, 3)
            items = [a for a in items if round(a.updated_at, 3) >= cutoff]
        return items

    def attempts_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        q = ctx.request.query
        items = self._attempt_filters(q, "parameter")
        items = _sorted(
            items,
            q,
            {
                "id": lambda a: a.id,
                "createdAt": lambda a: a.created_at,
                "updatedAt": lambda a: a.updated_at,
                "score": lambda a: a.score,
                "examStatus": lambda a: a.exam_status,
            },
        )
        allowed = (_P.filter_exam, _P.filter_user, _P.filter_status, _P.filter_updated_since)
        return self._page(ctx.request, items, AttemptRec.render, allowed)

    def attempt_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        attempt = self._attempt(m["id"])
        self._self_or_staff(ctx, attempt.user_id)
        return Out(200, _doc(attempt.render()))

    def _role(self, m: dict[str, str]) -> tuple[AttemptRec, MarkerRole, ExamRec]:
        role = _ROLE_BY_PATH.get(m["role"])
        attempt = self._attempt(m["id"])
        if role is None:
            raise fail(
                404,
                "Not Found",
                f"attempts have no relationship {m['role']!r} (known: {', '.join(_ROLE_BY_PATH)})",
                code="not_found",
            )
        return attempt, role, self._exam(attempt.exam_id)

    def _writable(self, exam: ExamRec) -> None:
        if exam.status == "draft":
            raise fail(
                403,
                "Forbidden",
                f"exam {exam.id} is still a draft; its attempts cannot be marked",
                code="exam_draft",
            )

    def _pool_checked(self, ctx: Ctx, exam: ExamRec, role: MarkerRole) -> list[str]:
        ids = _linkage_list(ctx.body, TYPE_USER)
        store = self.state.store
        pool_id = exam.pools.get(role.pool)
        pool = store.groups.get(pool_id) if pool_id else None
        missing: list[ErrorObject] = []
        outside: list[ErrorObject] = []
        for i, uid in enumerate(ids):
            if uid not in store.users:
                missing.append(
                    err(
                        404,
                        "Not Found",
                        f"User {uid} does not exist",
                        code="not_found",
                        pointer=f"/data/{i}",
                    )
                )
            elif pool is None or uid not in pool.members:
                outside.append(
                    err(
                        400,
                        "Bad Request",
                        f"user {uid} is not in the exam's {role.pool} pool",
                        code="not_in_pool",
                        pointer=f"/data/{i}",
                    )
                )
        if missing:
            raise ApiFailure(404, missing)
        if outside:
            raise ApiFailure(400, outside)
        return ids

    def markers_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        attempt, role, _ = self._role(m)
        ids = attempt.role_members(role.relationship)
        links = {"self": f"{self.state.root}{ctx.request.path}"}
        body = _encoder.encode(
            {"data": [{"type": TYPE_USER, "id": uid} for uid in ids], "links": links}
        )
        return Out(200, body)

    def markers_add(self, ctx: Ctx, m: dict[str, str]) -> Out:
        attempt, role, exam = self._role(m)
        self._writable(exam)
        ids = self._pool_checked(ctx, exam, role)
        current = attempt.role_members(role.relationship)
        if any(uid not in current for uid in ids):
            for uid in ids:
                current[uid] = None
            attempt.touch(self.state.wall())
        return Out(204, None)

    def markers_remove(self, ctx: Ctx, m: dict[str, str]) -> Out:
        attempt, role, exam = self._role(m)
        self._writable(exam)
        ids = _linkage_list(ctx.body, TYPE_USER)
        current = attempt.role_members(role.relationship)
        if any(uid in current for uid in ids):
            for uid in ids:
                current.pop(uid, None)
            attempt.touch(self.state.wall())
        return Out(204, None)

    def markers_replace(self, ctx: Ctx, m: dict[str, str]) -> Out:
        attempt, role, exam = self._role(m)
        self._writable(exam)
        ids = self._pool_checked(ctx, exam, role)
        if list(attempt.role_members(role.relationship)) != ids:
            attempt.roles[role.relationship] = dict.fromkeys(ids)
            attempt.touch(self.state.wall())
        return Out(204, None)

    def timer_reset_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        data = _resource_in(ctx.body, TYPE_ATTEMPT_TIMER_RESET)
        attrs: dict[str, Any] = data.get("attributes", {})
        rels: dict[str, Any] = data.get("relationships", {})
        ptr = "/data/attributes/"
        errors: list[ErrorObject] = []
        extra = attrs.get("extraTimeInMs")
        if extra is None:
            errors.append(_required(ptr + "extraTimeInMs", "extraTimeInMs"))
        elif isinstance(extra, bool) or not isinstance(extra, int) or not 0 < extra <= 86_400_000:
            errors.append(
                _invalid(ptr + "extraTimeInMs", "extraTimeInMs must be an integer in (0, 86400000]")
            )
        reason = attrs.get("reason", "")
        if not isinstance(reason, str):
            errors.append(_invalid(ptr + "reason", "reason must be a string"))
        attempt_id: str | None = None
        try:
            attempt_id = _to_one(rels, "attempt", TYPE_ATTEMPT, required=True)
        except ApiFailure as exc:
            if exc.status != 400:
                raise
            errors.extend(exc.errors)
        if errors:
            raise ApiFailure(400, errors)
        assert attempt_id is not None and isinstance(extra, int) and isinstance(reason, str)
        attempt = self.state.store.attempts.get(attempt_id)
        if attempt is None:
            raise not_found(TYPE_ATTEMPT, attempt_id, pointer="/data/relationships/attempt")
        self._writable(self._exam(attempt.exam_id))
        reset = self.state.store.add_timer_reset(attempt, extra, reason)
        return Out(201, _doc(reset.render()))

    # ------------------------------------------------------------------ exports

    def export_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        data = _resource_in(ctx.body, TYPE_EXPORT_ENRICHED_ATTEMPT)
        attrs: dict[str, Any] = data.get("attributes", {})
        rels: dict[str, Any] = data.get("relationships", {})
        raw_filter = attrs.get("filter", {})
        if not isinstance(raw_filter, dict) or not all(
            isinstance(v, str) for v in raw_filter.values()
        ):
            raise fail(
                400,
                "Bad Request",
                "filter must be an object of strings",
                code="invalid",
                pointer="/data/attributes/filter",
            )
        names = {
            "examV2": _P.filter_exam,
            "user": _P.filter_user,
            "status": _P.filter_status,
            "updatedSince": _P.filter_updated_since,
        }
        filters: dict[str, str] = {}
        for key, value in raw_filter.items():
            if key not in names:
                raise fail(
                    400,
                    "Bad Request",
                    f"unknown filter {key!r} (known: {', '.join(names)})",
                    code="invalid",
                    pointer=f"/data/attributes/filter/{key}",
                )
            filters[names[key]] = value
        exam_id = _to_one(rels, "examV2", TYPE_EXAM, required=False)
        if exam_id is not None:
            if exam_id not in self.state.store.exams:
                raise not_found(TYPE_EXAM, exam_id, pointer="/data/relationships/examV2")
            filters[_P.filter_exam] = exam_id
        # Validate the filters now (a bad timestamp is the caller's error, not the job's).
        self._attempt_filters(filters, "/data/attributes/filter")
        job = self.state.store.add_job(filters)
        location = f"{self.state.root}/v3/{_P.background_jobs_path}/{job.id}"
        return Out(201, _doc(job.render()), {"Location": location})

    def job_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        store = self.state.store
        job = store.jobs.get(m["id"])
        if job is None:
            raise not_found("BackgroundJob", m["id"])
        if job.status != "completed":
            job.polls += 1
            if job.polls >= job.steps:
                self._complete(job)
            else:
                job.status = "running"
        return Out(200, _doc(job.render()))

    def _complete(self, job: JobRec) -> None:
        """Fix which attempts the file holds (a snapshot of the filter's result); the lines are
        rendered while streaming the download, so a big export costs no memory up front."""
        job.items = list(self._attempt_filters(job.filters, "/filter"))
        job.status = "completed"
        job.completed_at = self.state.wall()
        job.file_url = f"{self.state.root}/files/exports/{job.id}.ndjson?signature={job.signature}"

    def _export_line(self, a: AttemptRec) -> bytes:
        store = self.state.store
        user = store.users.get(a.user_id)
        exam = store.exams.get(a.exam_id)
        meta = {
            "user": {
                "name": user.name if user else None,
                "emailAddress": user.email if user else None,
                "externalId": user.external_id if user else None,
            },
            "exam": {"name": exam.name if exam else None},
        }
        return _encoder.encode(a.resource(meta)) + b"\n"

    async def export_file(self, request: web.Request) -> web.StreamResponse:
        """The export's NDJSON; like a pre-signed URL it needs the signature, not the token."""
        self.state.counters.file_downloads += 1
        name = request.match_info["name"]
        job = self.state.store.jobs.get(name.removesuffix(".ndjson"))
        if job is None or job.items is None or not name.endswith(".ndjson"):
            body = _error_body([err(404, "Not Found", "no such export file", code="not_found")])
            return web.Response(body=body, status=404, headers=_JSON_HEADERS)
        if request.query.get("signature") != job.signature:
            body = _error_body(
                [
                    err(
                        403,
                        "Forbidden",
                        "bad or missing signature",
                        code="bad_signature",
                        parameter="signature",
                    )
                ]
            )
            return web.Response(body=body, status=403, headers=_JSON_HEADERS)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        items = job.items
        for start in range(0, len(items), 1000):
            chunk = b"".join(self._export_line(a) for a in items[start : start + 1000])
            await response.write(chunk)
        await response.write_eof()
        return response

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


def _required(pointer: str, name: str) -> ErrorObject:
    return err(400, "Bad Request", f"{name} is required", code="required", pointer=pointer)


def _invalid(pointer: str, detail: str) -> ErrorObject:
    return err(400, "Bad Request", detail, code="invalid", pointer=pointer)


def _taken(pointer: str, what: str) -> ErrorObject:
    return err(400, "Bad Request", f"{what} is already taken", code="taken", pointer=pointer)
