"""What the sandbox's app and its handler mixins share: the answer and error types (:class:`Out`,
:class:`ApiFailure`, :func:`err`), the JSON:API body and query helpers every handler parses its
request with, and :class:`RouteHost`, what a handler mixin may use of the app it is mixed into.

Nothing here imports another sandbox module but the store and behaviour, so :mod:`.app` can import
the handler modules (:mod:`.people`, :mod:`.marking`, :mod:`.exports`) and they this one, without
a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar, cast

import msgspec
from aiohttp import web

from ..jsonapi import MEDIA_TYPE, Document, ErrorDocument, ErrorObject, ErrorSource
from ..profile import DEFAULT_PROFILE, ApiProfile
from .behaviour import Counters
from .store import Store, UserRec

T = TypeVar("T")

_encoder = msgspec.json.Encoder()

#: The profile of the sandbox answering the current request (set by the app's wrapper and while
#: it builds its routes), so that every handler reads paths, filter, page and header names from
#: the profile the sandbox was started with (``SandboxConfig.profile``).
_ACTIVE: ContextVar[ApiProfile] = ContextVar("sandbox_profile", default=DEFAULT_PROFILE)


class _ActiveProfile:
    """Reads every attribute from the active profile (see ``_ACTIVE``)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(_ACTIVE.get(), name)


_P = cast(ApiProfile, _ActiveProfile())


@contextmanager
def active_profile(profile: ApiProfile) -> Iterator[None]:
    """Make ``profile`` the one handlers (and route building) read, within the block."""
    token = _ACTIVE.set(profile)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


_JSON_HEADERS = {"Content-Type": MEDIA_TYPE}


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


class SandboxState(Protocol):
    """The part of :class:`~synap_bulk.sandbox.app.State` the handlers use."""

    store: Store
    counters: Counters
    root: str
    wall: Callable[[], float]


class RouteHost(Protocol):
    """What the handler mixins use of :class:`~synap_bulk.sandbox.app.SandboxApp`."""

    state: SandboxState

    def _page(
        self,
        request: web.Request,
        items: Sequence[T],
        render: Callable[[T], msgspec.Raw],
        allowed: Sequence[str] = (),
    ) -> Out: ...


def _self_or_staff(ctx: Ctx, user_id: str) -> None:
    if ctx.actor.role == "student" and ctx.actor.id != user_id:
        raise fail(403, "Forbidden", "a student may only act on themselves", code="forbidden")


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


def _required(pointer: str, name: str) -> ErrorObject:
    return err(400, "Bad Request", f"{name} is required", code="required", pointer=pointer)


def _invalid(pointer: str, detail: str) -> ErrorObject:
    return err(400, "Bad Request", detail, code="invalid", pointer=pointer)


def _taken(pointer: str, what: str) -> ErrorObject:
    return err(400, "Bad Request", f"{what} is already taken", code="taken", pointer=pointer)
