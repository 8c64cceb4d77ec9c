"""``doctor JOB``: check, read-only, what the job assumes about its server, before trusting it.

The Synap docs leave pagination, filters, rate limits and more open (``profile.py``). A job
relies on some of those assumptions; :func:`diagnose` probes each with a few GETs and says what
it found: who the token acts as, the pagination style and page-size limit, the rate-limit
headers, and whether each filter the job depends on is honoured. A filter is honoured when a
value that cannot exist finds nothing: a server that ignored an unknown filter would answer
with the whole collection, and a lookup would "find" a record that was never created.

:func:`reconcile_filters` names the filters a job's safety rests on (a user import reconciles
its creates by ``filter[emailAddress]`` or ``filter[externalId]``); the runner's preflight calls
:func:`check_reconcile_filters`, one GET each, and refuses to start when one is not honoured.
Nothing here writes.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from .errors import ApiError, SynapBulkError
from .jsonapi import AnyResource
from .lookups import collection_path, filter_params

if TYPE_CHECKING:
    from .client import SynapClient
    from .profile import ApiProfile
    from .spec import JobFile

__all__ = [
    "Check",
    "FilterNeed",
    "FilterNotHonoured",
    "check_reconcile_filters",
    "diagnose",
    "job_filters",
    "reconcile_filters",
    "render_checks",
]


class FilterNotHonoured(SynapBulkError):
    """A filter the job's safety rests on is not honoured by the server."""


class FilterNeed(Struct, frozen=True):
    """A filter a job relies on: the collection path, the parameter, and what for."""

    path: str
    param: str
    why: str
    email: bool = False


class Check(Struct, frozen=True):
    """One probed assumption: its name, whether it holds (None: unknown), what was found."""

    name: str
    ok: bool | None
    found: str


def reconcile_filters(job: JobFile, profile: ApiProfile) -> list[FilterNeed]:
    """The filters a job's "never twice" rests on (a user import's match key)."""
    task = job.spec.task
    kind = getattr(task, "kind", "")
    if kind == "user-import":
        match = getattr(task, "match", "")
        param = profile.filter_email if match == "emailAddress" else profile.filter_external_id
        why = f"user-import reconciles its creates by {match}"
        return [FilterNeed(profile.users_path, param, why, email=match == "emailAddress")]
    return []


def job_filters(job: JobFile, profile: ApiProfile) -> list[FilterNeed]:
    """Every filter the job uses: those of :func:`reconcile_filters` and of its lookups."""
    out = list(reconcile_filters(job, profile))
    lookups: dict[str, Any] = getattr(job.spec.task, "lookups", None) or {}
    for name, lk in lookups.items():
        params = filter_params(lk.resource, profile)
        for key in lk.by:
            param = params.get(key, "")
            if param:
                out.append(
                    FilterNeed(
                        collection_path(lk.resource, profile),
                        param,
                        f"lookup {name!r} finds {lk.resource} by {key}",
                        email=key == "emailAddress",
                    )
                )
    seen: set[tuple[str, str]] = set()
    unique = []
    for need in out:
        if (need.path, need.param) not in seen:
            seen.add((need.path, need.param))
            unique.append(need)
    return unique


def _impossible(need: FilterNeed) -> str:
    token = secrets.token_hex(6)
    return f"no-such-{token}@doctor.invalid" if need.email else f"synap-bulk-doctor-{token}"


async def filter_honoured(client: SynapClient, need: FilterNeed) -> tuple[bool, str]:
    """(honoured, what was seen): a value that cannot exist must find nothing."""
    p = client.profile
    size = p.page_size_param if p.pagination == "page-number" else p.page_limit_param
    try:
        page = await client.get_page(
            need.path, {need.param: _impossible(need), size: 1}, AnyResource
        )
    except ApiError as exc:
        return False, f"refused: {exc}"
    if page.data:
        total = page.meta.get("total")
        more = f" (meta.total {total})" if total is not None else ""
        return False, f"an impossible value found {len(page.data)}+ records{more}: ignored"
    return True, "an impossible value finds nothing"


async def check_reconcile_filters(job: JobFile, client: SynapClient) -> None:
    """Raise :class:`FilterNotHonoured` when a filter the job's safety rests on is ignored."""
    for need in reconcile_filters(job, client.profile):
        ok, found = await filter_honoured(client, need)
        if not ok:
            raise FilterNotHonoured(
                f"the server does not honour {need.param} on {need.path} ({found}); "
                f"{need.why}, so a resumed run could not tell what it created: refusing to "
                "start (set api.profile to the server's filter name, see `doctor`)"
            )


async def diagnose(job: JobFile, client: SynapClient) -> list[Check]:
    """Probe, read-only, every assumption the job relies on."""
    p = client.profile
    checks: list[Check] = []
    try:
        ident = await client.identity()
        checks.append(Check("identity", True, ident.describe()))
    except SynapBulkError as exc:
        return [Check("identity", False, str(exc))]
    checks.extend(await _pagination(client, p))
    checks.append(await _rate_headers(client, p))
    for need in job_filters(job, p):
        ok, found = await filter_honoured(client, need)
        checks.append(Check(f"{need.param} on {need.path}", ok, f"{found} ({need.why})"))
    if _acts_as_others(job):
        checks.append(await _subject_user(client, p))
    return checks


def _acts_as_others(job: JobFile) -> bool:
    return bool(job.spec.api.subject_user or getattr(job.spec.task, "subject_user", None))


async def _subject_user(client: SynapClient, p: ApiProfile) -> Check:
    """An impossible Subject-User must be refused: a server that ignored the header would run
    every request as the token's own user."""
    name = f"Subject-User header {p.subject_user_header}"
    if not p.current_user_path:
        return Check(name, None, "no current_user_path in the profile to probe it with")
    ghost = f"synap-bulk-doctor-{secrets.token_hex(6)}"
    try:
        await client.request("GET", p.current_user_path, headers={p.subject_user_header: ghost})
    except ApiError as exc:
        return Check(name, True, f"an unknown user is refused ({exc.status})")
    return Check(name, False, "an unknown user is accepted: the header is ignored")


async def _pagination(client: SynapClient, p: ApiProfile) -> list[Check]:
    out: list[Check] = []
    path = p.users_path
    number = p.pagination == "page-number"
    size_param = p.page_size_param if number else p.page_limit_param
    pos_param = p.page_number_param if number else p.page_offset_param
    try:
        first = await client.get_page(path, {size_param: 1}, AnyResource)
    except ApiError as exc:
        return [Check(f"pagination {p.pagination}", False, f"refused: {exc}")]
    nxt = first.links.get("next") or ""
    style = "unknown"
    if p.page_number_param in nxt:
        style = "page-number"
    elif p.page_offset_param in nxt:
        style = "offset"
    total = first.meta.get("total")
    found = f"links.next uses {style}; meta.total {total if total is not None else 'absent'}"
    ok = None if style == "unknown" else style == p.pagination
    if len(first.data) > 1:
        ok, found = False, f"{size_param}=1 gave {len(first.data)} records: size ignored"
    out.append(Check(f"pagination {p.pagination} ({pos_param}, {size_param})", ok, found))
    try:
        big = await client.get_page(path, {size_param: p.max_page_size}, AnyResource)
        out.append(
            Check(
                f"page size {p.max_page_size} (max_page_size)",
                True,
                f"accepted ({len(big.data)} records)",
            )
        )
    except ApiError as exc:
        out.append(Check(f"page size {p.max_page_size} (max_page_size)", False, str(exc)))
    try:
        await client.get_page(path, {size_param: p.max_page_size + 1}, AnyResource)
        out.append(Check(f"page size {p.max_page_size + 1}", None, "accepted: the limit is higher"))
    except ApiError as exc:
        out.append(Check(f"page size {p.max_page_size + 1}", True, f"refused ({exc.status})"))
    return out


async def _rate_headers(client: SynapClient, p: ApiProfile) -> Check:
    """Which of the profile's rate-limit headers one plain GET carries."""
    names = (p.ratelimit_limit_header, p.ratelimit_remaining_header, p.ratelimit_reset_header)
    try:
        resp = await client.request("GET", p.users_path, {_size_param(p): 1})
    except ApiError as exc:
        return Check("rate-limit headers", None, f"could not read: {exc}")
    lower = {k.lower(): v for k, v in resp.headers.items()}
    seen = [f"{n}: {lower[n.lower()]}" for n in names if n.lower() in lower]
    if seen:
        return Check("rate-limit headers", True, "; ".join(seen))
    return Check(
        "rate-limit headers",
        None,
        f"none of {', '.join(names)} (429 and {p.retry_after_header} are then the only signals)",
    )


def _size_param(p: ApiProfile) -> str:
    return p.page_size_param if p.pagination == "page-number" else p.page_limit_param


def render_checks(checks: Sequence[Check]) -> list[str]:
    """One line per check: ok / FAIL / ? , the assumption, what was found."""
    mark = {True: "ok  ", False: "FAIL", None: "?   "}
    return [f"{mark[c.ok]}  {c.name}: {c.found}" for c in checks]
