"""The sandbox's settings: one frozen Struct, shared by ``SandboxConfig(...)``, the command line
and ``PATCH /_sandbox/config``, so the three can never disagree about a name or a default.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

from ..profile import DEFAULT_PROFILE, load_profile

__all__ = [
    "FAULT_KINDS",
    "ROUTE_NAMES",
    "SHAPE_FIELDS",
    "SandboxConfig",
    "apply_changes",
    "public_config",
]

#: Every fault the sandbox can inject. ``commit-then-*`` (and ``truncate`` on a write) apply the
#: write before failing, which is the ambiguity that makes naive clients create duplicates.
FAULT_KINDS: tuple[str, ...] = (
    "500",
    "502",
    "503",
    "504",
    "html502",
    "drop",
    "truncate",
    "commit-then-500",
    "commit-then-drop",
)


#: The /v3 route names (counters' ``by_route`` keys and ``route_latency_ms`` keys).
ROUTE_NAMES: tuple[str, ...] = (
    "portals.current",
    "portals.get",
    "users.me",
    "users.list",
    "users.get",
    "users.update",
    "users.delete",
    "user-registrations.create",
    "user-groups.list",
    "user-groups.create",
    "user-groups.get",
    "user-groups.update",
    "user-groups.delete",
    "user-groups.members.get",
    "user-groups.members.add",
    "user-groups.members.remove",
    "user-groups.members.replace",
    "exams.list",
    "exams.get",
    "attempts.list",
    "attempts.get",
    "attempts.markers.get",
    "attempts.markers.add",
    "attempts.markers.remove",
    "attempts.markers.replace",
    "attempt-timer-resets.create",
    "export-enriched-attempts.create",
    "background-jobs.get",
    # .collections
    "enriched-attempts.list",
    "action-logs.list",
    "user-group-exports.create",
    "exam-candidate-exports.create",
    # attempt_ops.py
    "attempt-locks.list",
    "attempt-locks.create",
    "attempt-locks.get",
    "attempt-locks.delete",
    "attempt-overrides.list",
    "attempt-overrides.create",
    "attempt-overrides.get",
    "attempt-overrides.delete",
    "marking-entries.list",
    "marking-entries.create",
    "marking-entries.get",
    "marking-entries.update",
    "unmatched",
)


def _default_fault_weights() -> dict[str, float]:
    return {
        "500": 3.0,
        "502": 1.0,
        "503": 2.0,
        "504": 1.0,
        "html502": 1.0,
        "drop": 1.0,
        "truncate": 1.0,
        "commit-then-500": 1.0,
        "commit-then-drop": 1.0,
    }


class SandboxConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How big the seeded portal is and how demanding the server behaves.

    Fields in :data:`SHAPE_FIELDS` shape the seeded data and take effect at the next reset; all
    others take effect on the next request, but ``state``, which is fixed at start.

    ``state`` names a state file (see :mod:`synap_bulk.sandbox.persist`). When the file exists
    the sandbox loads its data from it instead of seeding, and **the file wins**: if its shape
    (seed, users, groups, exams, attempts_per_exam, markers) disagrees with this config's, the
    data and the live config take the file's shape (a reset reseeds with it too, unless the
    shape is changed by ``PATCH /_sandbox/config`` first). Delete the file (or reset) to reseed.
    A corrupt, unreadable or locked state file raises
    :class:`~synap_bulk.sandbox.persist.SandboxStateError`, naming the file.
    """

    # --- seeded data ---
    seed: int = 1
    users: int = 100  #: candidate (student) users; the admin and the markers come on top
    groups: int = 5  #: candidate cohort groups (besides the default and marker-pool groups)
    exams: int = 2  #: the last one is a draft when there are two or more
    attempts_per_exam: int = 50
    markers: int = 10  #: marker users, spread over the five marker-pool groups

    # --- rate limit (per token, token bucket) ---
    rate: float = 0.0  #: tokens per second; 0 means unlimited
    burst: float | None = None  #: bucket size; None means ``max(1, rate)``
    retry_after: Literal["seconds", "http-date"] = "seconds"
    ratelimit_headers: bool = True  #: X-RateLimit-Limit/Remaining/Reset on every /v3 answer
    #: How a refusal looks: ``api`` a JSON:API 429 with Retry-After (and the X-RateLimit-*
    #: headers); ``blind`` what nginx ``limit_req`` sends: a 429 with an HTML body, no
    #: Retry-After and no X-RateLimit-* headers at all (the client must find the limit itself).
    limiter: Literal["api", "blind"] = "api"
    #: A request arriving this soon after a 429 is not counted as "inside the Retry-After
    #: window": it was already on the wire when the client got the 429.
    retry_after_grace_ms: float = 50.0

    # --- latency ---
    latency_ms: float = 0.0
    jitter_ms: float = 0.0  #: uniform extra delay in [0, jitter_ms), seeded per request
    route_latency_ms: dict[str, float] = msgspec.field(default_factory=dict)
    #: Extra delay of a group join (joining assigns content); None means ``4 * latency_ms``.
    group_join_latency_ms: float | None = None

    # --- faults ---
    fault_rate: float = 0.0  #: probability that a /v3 request (past auth and limit) fails
    faults: dict[str, float] = msgspec.field(default_factory=_default_fault_weights)

    # --- authentication ---
    token: str = "p:sandbox"
    #: More valid PATs of the same portal (each with its own rate-limit bucket).
    extra_tokens: list[str] = msgspec.field(default_factory=list)
    #: Status for a present but wrong token: 401 (Security page) or 404 (Getting Started's
    #: "misconfigured PAT" variant).
    bad_token_status: Literal[401, 404] = 401
    subject_user_header: str = DEFAULT_PROFILE.subject_user_header

    # --- pagination and exports ---
    default_page_size: int = DEFAULT_PROFILE.page_size
    max_page_size: int = DEFAULT_PROFILE.max_page_size
    #: A page size above ``max_page_size``: ``reject`` answers 400 with ``source.parameter``
    #: naming the parameter; ``clamp`` answers a page of the maximum (with a ``next`` link).
    page_size_over_max: Literal["reject", "clamp"] = "reject"
    export_job_steps: int = 3  #: polls of a BackgroundJob until it is completed (>= 1)

    # --- a server that ignores filters (to test the client's checks) ---
    #: Query parameters (e.g. ``filter[emailAddress]``) accepted and then ignored, as a server
    #: that does not know a filter might: the listing answers as if it was not given.
    ignore_filters: list[str] = msgspec.field(default_factory=list)

    # --- the API profile the sandbox follows ---
    #: ``api.profile`` overrides (``synap_bulk.profile.ApiProfile``): paths, pagination style,
    #: filter, page and header names, relationship segments. Fixed at start. A job with
    #: ``base_url: sandbox`` starts its sandbox with the job's profile.
    profile: dict[str, Any] = msgspec.field(default_factory=dict)

    # --- listening ---
    host: str = "127.0.0.1"
    port: int = 0

    # --- persistence ---
    #: A state file: the data is loaded from it when it exists (instead of seeding; its shape,
    #: seed/users/..., then wins over this config's) and every answered write is kept in it
    #: across restarts and kills. None: the data lives as long as the process. Fixed at start.
    state: str | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("users", "groups", "exams", "attempts_per_exam", "markers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.groups < 1:
            problems.append("groups must be >= 1")
        if self.markers < 1:
            problems.append("markers must be >= 1")
        if self.rate < 0:
            problems.append("rate must be >= 0")
        if self.burst is not None and self.burst < 1:
            problems.append("burst must be >= 1")
        if not 0.0 <= self.fault_rate <= 1.0:
            problems.append("fault_rate must be between 0 and 1")
        for kind, weight in self.faults.items():
            if kind not in FAULT_KINDS:
                problems.append(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
            elif weight < 0:
                problems.append(f"fault weight of {kind!r} must be >= 0")
        if self.fault_rate > 0 and not any(w > 0 for w in self.faults.values()):
            problems.append("fault_rate > 0 needs at least one fault kind with a weight > 0")
        for route in self.route_latency_ms:
            if route not in ROUTE_NAMES:
                problems.append(f"unknown route {route!r} in route_latency_ms")
        if self.latency_ms < 0 or self.jitter_ms < 0:
            problems.append("latency_ms and jitter_ms must be >= 0")
        if not 1 <= self.default_page_size <= self.max_page_size:
            problems.append("need 1 <= default_page_size <= max_page_size")
        if self.export_job_steps < 1:
            problems.append("export_job_steps must be >= 1")
        if not self.token:
            problems.append("token must not be empty")
        if self.profile:
            try:
                load_profile(self.profile)
            except msgspec.ValidationError as exc:
                problems.append(f"profile: {exc}")
        if self.state is not None and not self.state.strip():
            problems.append("state must be a file path (or null)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def bucket_size(self) -> float:
        """The token bucket's capacity."""
        return self.burst if self.burst is not None else max(1.0, self.rate)

    @property
    def join_latency_ms(self) -> float:
        """Extra delay of a group join."""
        if self.group_join_latency_ms is not None:
            return self.group_join_latency_ms
        return 4.0 * self.latency_ms


#: Fields that shape the seeded store; a change applies at the next reset.
SHAPE_FIELDS = frozenset({"seed", "users", "groups", "exams", "attempts_per_exam", "markers"})

_SECRET_FIELDS = ("token", "extra_tokens")


def apply_changes(config: SandboxConfig, changes: dict[str, Any]) -> SandboxConfig:
    """``config`` with ``changes`` applied and validated (unknown names raise ``ValueError``)."""
    merged = msgspec.structs.asdict(config)
    if "state" in changes and changes["state"] != config.state:
        raise ValueError("state (the state file) is fixed when the sandbox starts")
    if "profile" in changes and changes["profile"] != config.profile:
        raise ValueError("profile (the API profile) is fixed when the sandbox starts")
    merged.update(changes)
    try:
        return msgspec.convert(merged, SandboxConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None


def public_config(config: SandboxConfig) -> dict[str, Any]:
    """The config as JSON-ready data, without the tokens (a token is never written out)."""
    data = msgspec.to_builtins(config)
    assert isinstance(data, dict)
    for name in _SECRET_FIELDS:
        data.pop(name, None)
    return data
