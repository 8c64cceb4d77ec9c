"""Named lookups: a row's natural keys (an email, a candidate number, an exam's name) turned into
the ids the API wants, before any write.

A job declares them by name; each says which collection to search and by which keys, and its
values are text templates over the row's columns and the fields of the lookups declared before
it::

    lookups:
      user: {resource: users, by: {externalId: "{candidate_number}"}}
      exam: {resource: exams, by: {name: "{exam}"}}
      attempt: {resource: attempts, by: {user: "{user.id}", exam: "{exam.id}"}}

after which ``{user.id}``, ``{exam.id}``, ``{attempt.id}`` (and ``{<name>.<attribute>}``, any
top-level attribute of the found resource, as text) are placeholders like a column.

:class:`LookupResolver` resolves every distinct key once (cached), choosing per lookup the
cheaper of one paginated listing and one filtered GET per key: a listing costs
``ceil(total / max_page_size)`` requests (``total`` from one probe GET of one record), per-key
filtering one request per distinct key. Collections without a filter for a key (exams by name,
by default) are always listed. Attempts are listed per exam (the profile's exam filter), so a
few exams of a large portal are cheap. Whatever the server returns, every candidate is matched
again on the client side, so a server that ignores a filter yields the right answer (slowly),
never a wrong one. A key that matches nothing or more than one record makes its row invalid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import anyio
import msgspec
from msgspec import Struct

from .errors import NotFound
from .jsonapi import AnyResource, Document
from .profile import ApiProfile
from .templates import render_template, template_fields

if TYPE_CHECKING:
    from .client import SynapClient

__all__ = [
    "LOOKUP_KEYS",
    "LOOKUP_RESOURCES",
    "LookupDef",
    "LookupResolver",
    "LookupStats",
    "filter_params",
    "lookup_fields",
]

#: resource -> the keys it can be looked up by.
LOOKUP_KEYS: dict[str, tuple[str, ...]] = {
    "users": ("emailAddress", "externalId", "id"),
    "user-groups": ("name", "id"),
    "exams": ("name", "id"),
    "attempts": ("user", "exam", "id"),
}
LOOKUP_RESOURCES = tuple(LOOKUP_KEYS)

Strategy = Literal["auto", "per-row", "listing"]


class LookupDef(Struct, frozen=True):
    """One compiled lookup: its name, collection, ``key -> text template`` and strategy."""

    name: str
    resource: str
    by: dict[str, str]
    strategy: Strategy = "auto"

    @property
    def columns(self) -> list[str]:
        """The placeholders its templates use (columns or earlier lookups' fields)."""
        out: list[str] = []
        for text in self.by.values():
            out.extend(template_fields(text))
        return list(dict.fromkeys(out))

    def render(self, values: Mapping[str, str]) -> tuple[str, ...]:
        """The key values for one row, in the order of ``by`` (stripped)."""
        return tuple(render_template(self.by[k], values).strip() for k in self.by)


class LookupStats(Struct):
    """How one lookup was resolved: strategy used (listing, per-row, or mixed when attempts of
    some exams were listed and others looked up per key), requests sent, keys, keys found."""

    strategy: str = ""
    requests: int = 0
    keys: int = 0
    found: int = 0


def collection_path(resource: str, profile: ApiProfile) -> str:
    return {
        "users": profile.users_path,
        "user-groups": profile.user_groups_path,
        "exams": profile.exams_path,
        "attempts": profile.attempts_path,
    }[resource]


def filter_params(resource: str, profile: ApiProfile) -> dict[str, str]:
    """key -> the query parameter that filters ``resource`` by it ("" = no such filter)."""
    if resource == "users":
        return {"emailAddress": profile.filter_email, "externalId": profile.filter_external_id}
    if resource == "user-groups":
        return {"name": profile.filter_group_name}
    if resource == "exams":
        return {"name": profile.filter_exam_name}
    return {"user": profile.filter_user, "exam": profile.filter_exam}


def _rel_id(res: AnyResource, name: str) -> str:
    rel = res.relationships.get(name)
    data = rel.data if rel is not None else None
    ident = getattr(data, "id", None)
    return str(ident) if ident is not None else ""


def _value(res: AnyResource, resource: str, key: str, profile: ApiProfile) -> str:
    """The value of ``key`` in a found resource, as compared with the row's value."""
    if key == "id":
        return res.id
    if resource == "attempts":
        rel = (
            profile.attempt_user_relationship
            if key == "user"
            else profile.attempt_exam_relationship
        )
        return _rel_id(res, rel)
    value = res.attributes.get(key)
    if value is None:
        return ""
    text = str(value)
    return text.casefold() if key == "emailAddress" else text


def _norm(key: str, value: str) -> str:
    return value.casefold() if key == "emailAddress" else value


def lookup_fields(name: str, res: AnyResource) -> dict[str, str]:
    """The placeholders a found resource offers: ``{name.id}`` and ``{name.<attribute>}``."""
    out = {f"{name}.id": res.id}
    for attr, value in res.attributes.items():
        if isinstance(value, (str, int, float, bool)):
            out[f"{name}.{attr}"] = str(value)
    return out


class LookupResolver:
    """Resolves the distinct keys of one lookup at a time, keeping every answer (the cache)."""

    def __init__(self, client: SynapClient, profile: ApiProfile) -> None:
        self.client = client
        self.profile = profile
        self.stats: dict[str, LookupStats] = {}
        #: (resource, keys, values) -> matching resources
        self._cache: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[AnyResource]] = {}

    async def resolve(
        self, lookup: LookupDef, keys: Sequence[tuple[str, ...]]
    ) -> dict[tuple[str, ...], list[AnyResource]]:
        """``row key values -> matching resources`` for every distinct ``keys``."""
        stats = self.stats.setdefault(lookup.name, LookupStats())
        fields = tuple(lookup.by)
        wanted = list(dict.fromkeys(keys))
        stats.keys += len(wanted)
        todo = [k for k in wanted if (lookup.resource, fields, k) not in self._cache]
        if todo:
            await self._fill(lookup, fields, todo, stats)
        out = {k: self._cache[(lookup.resource, fields, k)] for k in wanted}
        stats.found += sum(1 for v in out.values() if len(v) == 1)
        return out

    async def _fill(
        self,
        lookup: LookupDef,
        fields: tuple[str, ...],
        todo: list[tuple[str, ...]],
        stats: LookupStats,
    ) -> None:
        resource = lookup.resource
        params_of = filter_params(resource, self.profile)
        # Attempts are scoped by exam when the lookup names one: one listing per exam.
        scope = "exam" if resource == "attempts" and "exam" in fields else None
        groups: dict[str, list[tuple[str, ...]]] = {}
        for k in todo:
            groups.setdefault(k[fields.index(scope)] if scope else "", []).append(k)
        for scope_value, keys in groups.items():
            scope_params = (
                {params_of["exam"]: scope_value} if scope and params_of.get("exam") else {}
            )
            filterable = all(f == "id" or params_of.get(f) for f in fields)
            strategy = lookup.strategy
            if strategy == "auto" or (strategy == "per-row" and not filterable):
                strategy = "per-row" if filterable else "listing"
                if filterable and lookup.strategy == "auto" and len(keys) > 1:
                    strategy = await self._cheaper(resource, scope_params, len(keys), stats)
            if stats.strategy and stats.strategy != strategy:
                stats.strategy = "mixed"  # some exams listed, others looked up per key
            else:
                stats.strategy = strategy
            if strategy == "listing":
                await self._by_listing(resource, fields, keys, scope_params, stats)
            else:
                await self._each(resource, fields, keys, params_of, stats)

    async def _each(
        self,
        resource: str,
        fields: tuple[str, ...],
        keys: list[tuple[str, ...]],
        params_of: dict[str, str],
        stats: LookupStats,
    ) -> None:
        """One filtered GET per key, as many at once as the client's concurrency allows."""
        limit = anyio.CapacityLimiter(max(1, min(16, self.client.concurrency)))

        async def one(k: tuple[str, ...]) -> None:
            async with limit:
                await self._by_filter(resource, fields, k, params_of, stats)

        async with anyio.create_task_group() as tg:
            for k in keys:
                tg.start_soon(one, k)

    async def _cheaper(
        self, resource: str, scope_params: dict[str, str], n_keys: int, stats: LookupStats
    ) -> Strategy:
        """One probe GET (one record) reads the collection's total; list when fewer pages."""
        p = self.profile
        size_param = p.page_size_param if p.pagination == "page-number" else p.page_limit_param
        page = await self.client.get_page(
            collection_path(resource, p), {**scope_params, size_param: 1}, AnyResource
        )
        stats.requests += 1
        total = page.meta.get("total")
        if not isinstance(total, int):
            return "per-row"
        pages = max(1, math.ceil(total / max(1, p.max_page_size)))
        return "listing" if pages < n_keys else "per-row"

    async def _by_listing(
        self,
        resource: str,
        fields: tuple[str, ...],
        keys: list[tuple[str, ...]],
        scope_params: dict[str, str],
        stats: LookupStats,
    ) -> None:
        p = self.profile
        index: dict[tuple[str, ...], list[AnyResource]] = {}
        wanted = {tuple(_norm(f, v) for f, v in zip(fields, k, strict=True)) for k in keys}
        pages = self.client.pages(
            collection_path(resource, p),
            scope_params or None,
            AnyResource,
            page_size=p.max_page_size,
        )
        async for _, doc in pages:
            stats.requests += 1
            for res in doc.data:
                got = tuple(_value(res, resource, f, p) for f in fields)
                if got in wanted:
                    index.setdefault(got, []).append(res)
        for k in keys:
            norm = tuple(_norm(f, v) for f, v in zip(fields, k, strict=True))
            self._cache[(resource, fields, k)] = index.get(norm, [])

    async def _by_filter(
        self,
        resource: str,
        fields: tuple[str, ...],
        k: tuple[str, ...],
        params_of: dict[str, str],
        stats: LookupStats,
    ) -> None:
        p = self.profile
        path = collection_path(resource, p)
        values = dict(zip(fields, k, strict=True))
        found: list[AnyResource] = []
        if "id" in values:
            stats.requests += 1
            try:
                item_path = f"{path}/{quote(values['id'], safe='')}"  # one segment, always
                doc = await self.client.request("GET", item_path)
            except NotFound:
                doc = None
            if doc is not None:
                res = msgspec.json.decode(doc.body, type=Document[AnyResource]).data
                found = [res]
        else:
            params = {params_of[f]: v for f, v in values.items()}
            async for _, page in self.client.pages(path, params, AnyResource):
                stats.requests += 1
                found.extend(page.data)
        want = tuple(_norm(f, v) for f, v in zip(fields, k, strict=True))
        self._cache[(resource, fields, k)] = [
            r for r in found if tuple(_value(r, resource, f, p) for f in fields) == want
        ]


def describe(lookup: LookupDef, values: tuple[str, ...]) -> str:
    """``externalId 'C123'`` / ``user 'u1' and exam 'e2'``: the keys as a person reads them."""
    return " and ".join(f"{k} {v!r}" for k, v in zip(lookup.by, values, strict=True))


def problem(lookup: LookupDef, values: tuple[str, ...], found: list[Any]) -> str | None:
    """Why a row's lookup fails (None when it found exactly one)."""
    if len(found) == 1:
        return None
    what = lookup.resource.rstrip("s") if lookup.resource != "user-groups" else "user group"
    if not found:
        return f"{lookup.name}: no {what} with {describe(lookup, values)}"
    ids = ", ".join(r.id for r in found[:5])
    more = ", ..." if len(found) > 5 else ""
    return (
        f"{lookup.name}: {len(found)} {lookup.resource} with {describe(lookup, values)} "
        f"({ids}{more}); the row must name exactly one"
    )
