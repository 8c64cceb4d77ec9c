"""The sandbox: a seeded, demanding simulator of the Synap API (JSON:API v3) on 127.0.0.1.

Use it in-process (``async with Sandbox(SandboxConfig(seed=1)) as sb: ... sb.url``) or
standalone (``python -m synap_bulk sandbox --port 8080``). With a state file
(``SandboxConfig(state="sandbox.json")``, ``--state FILE``) its data outlives the process: every
answered write survives a restart or a kill (:mod:`.persist`). It follows what the public Synap API
docs say and fills every gap with the profile's default
(:data:`synap_bulk.profile.DEFAULT_PROFILE`). Those gaps are listed here (``docs/sandbox.md``
repeats them, with the seeded data, the behaviours and the statistics):

====================  ==============================================================================
Open point            What the sandbox does
====================  ==============================================================================
Success statuses      create: 201 with the document and a ``Location``; PATCH: 200 with the
                      document; DELETE of an item: 204; relationship POST/DELETE/PATCH: 204.
Pagination            ``page[number]`` (1-based) and ``page[size]``, default 100, maximum 500
                      (outside 1..500: 400 with ``source.parameter``; above the maximum a
                      page of the maximum instead with ``page_size_over_max=clamp``);
                      ``page[offset]``/``page[limit]`` also accepted. ``links``
                      self/first/prev/next/last are absolute URLs (prev/next null at the ends);
                      ``meta.total``. Default order: creation order.
Filters and sort      users: ``filter[emailAddress]`` (case-insensitive exact),
                      ``filter[externalId]``, ``filter[userGroup]`` (group id); user groups:
                      ``filter[name]``; exams: ``filter[status]``; attempts: ``filter[examV2]``,
                      ``filter[user]``, ``filter[status]`` (examStatus, comma-separated),
                      ``filter[updatedSince]`` (RFC 3339, updatedAt >= it). ``sort=a,-b``. An
                      unknown parameter or sort key is a 400.
Paths                 exams ``exam-v-2s``; ``attempt-timer-resets``; ``export-enriched-attempts``;
                      ``background-jobs``; ``portals/{id}`` and ``portals/current`` (the token's
                      portal).
Acting user           ``GET /v3/users/me``: the user the token acts as (the admin), or the
                      Subject-User, as a ``User`` like ``users/{id}`` (the real API's way to read
                      the acting user is undocumented).
Group membership      ``/v3/user-groups/{id}/relationships/users``: GET lists, POST adds, DELETE
                      removes, PATCH replaces, many users per call, as sets (a repeat changes
                      nothing). An unknown user: 404 with ``source.pointer`` ``/data/<i>``, nothing
                      applied. Joins are slower: ``group_join_latency_ms`` (default 4 x
                      ``latency_ms``).
Marker roles          ``/v3/attempts/{id}/relationships/<role>`` with role ``markers``,
                      ``provisional-markers``, ``moderating-markers``, ``escalating-markers``,
                      ``auditing-markers``, ``back-readers``: GET/POST/DELETE/PATCH, as sets. A user
                      outside the exam's pool group for the role: 400 ``not_in_pool`` at
                      ``/data/<i>``; an attempt of a draft exam: 403 ``exam_draft`` (writes only).
Registration          ``POST /v3/user-registrations``: ``name`` and ``emailAddress`` required,
                      ``password`` >= 8 characters when given, ``externalId`` accepted; each invalid
                      field is its own error object in one 400. A taken email (case-insensitive) or
                      externalId: 400 ``code: taken``. More than one ``userGroups``: 400
                      ``too_many_groups``; none: the Students group. The response (type
                      UserRegistration) has the new User's id.
Duplicates            users may not share an email or an externalId; user groups may share a name
                      (as in the product).
Request bodies        ``Content-Type`` must be ``application/vnd.api+json`` (parameters other than
                      ext/profile: 415); malformed JSON: 400; wrong ``data.type`` or ``data.id``:
                      409; an ``id`` in a create: 403; a read-only or unknown attribute in a PATCH:
                      400; an ``Accept`` whose JSON:API media types all carry other parameters: 406.
Authentication        ``Authorization: Bearer <PAT>``; missing: 401; wrong: 401, or 404 with
                      ``bad_token_status=404`` (the docs' misconfigured-PAT case). The PAT acts as
                      the portal's admin.
Subject-User          header ``Subject-User`` (setting ``subject_user_header``) holding a user id;
                      an unknown id: 400 with ``source.header``. Students read/patch only themselves
                      and their attempts; educators also list, assign markers, reset timers, export;
                      only admins write users and groups (else 403).
Rate limit            a token bucket per token (``rate``/s, ``burst``); 429 with a JSON:API error
                      and ``Retry-After`` in whole seconds (ceil, >= 1) or an HTTP-date;
                      ``X-RateLimit-Limit`` (bucket size), ``X-RateLimit-Remaining`` (whole tokens
                      left), ``X-RateLimit-Reset`` (seconds until full) on every /v3 answer of a
                      limited sandbox (switchable off). ``limiter=blind`` mimics nginx
                      ``limit_req``: the same bucket, a 429 with an HTML page, no Retry-After
                      and no X-RateLimit-* headers.
Faults                500 with ``meta.traceId``; 502/503/504 as JSON:API with a traceId; ``html502``
                      an nginx HTML page; ``drop`` closes the connection before any byte;
                      ``truncate`` sends a Content-Length, half the body, then closes (a write
                      behind it is applied); ``commit-then-500``/``commit-then-drop`` apply the
                      write first (writes only). /v3 routes only.
Timer reset           ``POST /v3/attempt-timer-resets``: attributes ``extraTimeInMs`` (1..86400000)
                      and ``reason``, to-one ``attempt``; adds to the attempt's ``extraTimeInMs``,
                      reopens an expired attempt.
Exports               ``POST /v3/export-enriched-attempts`` (optional to-one ``examV2``, optional
                      ``attributes.filter`` {examV2, user, status, updatedSince}): 201
                      BackgroundJob. Each GET of ``/v3/background-jobs/{id}`` advances it pending ->
                      running -> completed (after ``export_job_steps`` polls) with ``progress`` and
                      ``fileUrl``: NDJSON, one Attempt resource per line with ``meta.user`` and
                      ``meta.exam``, at a signed URL (no token needed).
examStatus values     enrolled, notified, inProgress, submitted, expired, revoked.
Attempt operations    ``attempt-locks``, ``attempt-overrides``, ``marking-entries``: see
                      :mod:`.attempt_ops` (shapes, coded errors; kept in the state file).
Profile               the sandbox follows ``SandboxConfig.profile`` (a job's ``api.profile``,
                      or ``--profile FILE``): paths, filter/page/header names, relationship
                      segments, the links' pagination style. ``ignore_filters`` makes it accept
                      and ignore named filters.
====================  ==============================================================================

Control routes (``GET /_sandbox/stats``, ``POST /_sandbox/reset``, ``GET|PATCH /_sandbox/config``)
need the token too; they are never rate limited or faulted and are not counted in ``requests``.
"""

from __future__ import annotations

from . import cli
from .behaviour import SandboxStats
from .config import FAULT_KINDS, SandboxConfig
from .persist import SandboxStateError
from .server import Sandbox
from .store import Store

__all__ = [
    "FAULT_KINDS",
    "Sandbox",
    "SandboxConfig",
    "SandboxStateError",
    "SandboxStats",
    "Store",
    "cli",
]
