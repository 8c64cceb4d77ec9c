"""``python -m synap_bulk sandbox``: serve the simulator standalone (benchmarks, demos).

Prints ``sandbox listening on http://HOST:PORT/v3`` once ready and serves until interrupted.
Runs on the plain asyncio event loop with the access log off, so one core serves thousands of
requests a second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from .config import FAULT_KINDS, SandboxConfig

__all__ = ["add_arguments", "build_config", "main", "serve"]


def _faults(text: str) -> dict[str, float]:
    """``500=3,drop=1`` -> {"500": 3.0, "drop": 1.0}."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        kind, _, weight = part.partition("=")
        kind = kind.strip()
        if kind not in FAULT_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})"
            )
        try:
            weights[kind] = float(weight) if weight else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight in {part!r}") from None
    return weights


def _route_latency(text: str) -> tuple[str, float]:
    name, _, ms = text.partition("=")
    try:
        return name.strip(), float(ms)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROUTE=MS, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sandbox's flags; every one optional, defaults as in :class:`SandboxConfig`."""
    d = SandboxConfig()
    g = parser.add_argument_group("listening")
    g.add_argument("--host", default=d.host, help="interface")
    g.add_argument("--port", type=int, default=8080, help="port, 0 = any free")
    g = parser.add_argument_group("seeded data")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of data and behaviour")
    g.add_argument("--users", type=int, default=d.users, help="candidate users")
    g.add_argument("--groups", type=int, default=d.groups, help="candidate cohort groups")
    g.add_argument("--exams", type=int, default=d.exams, help="exams (the last is a draft)")
    g.add_argument(
        "--attempts-per-exam", type=int, default=d.attempts_per_exam, help="attempts of each exam"
    )
    g.add_argument("--markers", type=int, default=d.markers, help="marker users")
    g = parser.add_argument_group("behaviour")
    g.add_argument("--rate", type=float, default=d.rate, help="requests/s per token, 0 = no limit")
    g.add_argument("--burst", type=float, default=None, help="bucket size; None: the rate")
    g.add_argument(
        "--retry-after",
        choices=("seconds", "http-date"),
        default=d.retry_after,
        help="Retry-After format on 429",
    )
    g.add_argument("--no-ratelimit-headers", action="store_true", help="omit X-RateLimit-* headers")
    g.add_argument(
        "--limiter",
        choices=("api", "blind"),
        default=d.limiter,
        help="429 style: api (JSON:API, Retry-After) or blind (nginx HTML, no headers)",
    )
    g.add_argument("--latency-ms", type=float, default=d.latency_ms, help="added to every answer")
    g.add_argument("--jitter-ms", type=float, default=d.jitter_ms, help="uniform extra, seeded")
    g.add_argument(
        "--route-latency",
        type=_route_latency,
        action="append",
        default=[],
        metavar="ROUTE=MS",
        help="extra latency of one route, e.g. users.list=50 (repeatable)",
    )
    g.add_argument(
        "--group-join-latency-ms",
        type=float,
        default=None,
        help="extra latency of group joins; None: 4 x --latency-ms",
    )
    g.add_argument("--fault-rate", type=float, default=d.fault_rate, help="0..1")
    g.add_argument(
        "--faults",
        type=_faults,
        default=None,
        metavar="KIND=W,...",
        help=f"fault kinds and weights; kinds: {', '.join(FAULT_KINDS)}",
    )
    g.add_argument(
        "--token",
        default=None,
        help="the valid PAT (default p:sandbox, or $SYNAP_SANDBOX_TOKEN)",
    )
    g.add_argument(
        "--bad-token-status",
        type=int,
        choices=(401, 404),
        default=d.bad_token_status,
        help="answer to a wrong token (404 = the docs' misconfigured-PAT variant)",
    )
    g.add_argument("--subject-user-header", default=d.subject_user_header)
    g.add_argument("--page-size", type=int, default=d.default_page_size)
    g.add_argument("--max-page-size", type=int, default=d.max_page_size)
    g.add_argument(
        "--page-size-over-max",
        choices=("reject", "clamp"),
        default=d.page_size_over_max,
        help="a page size above the maximum: 400, or a page of the maximum",
    )
    g.add_argument("--export-job-steps", type=int, default=d.export_job_steps)
    g = parser.add_argument_group("persistence")
    g.add_argument(
        "--profile",
        default=None,
        metavar="FILE",
        help="follow this API profile: a YAML or JSON mapping of synap_bulk.profile.ApiProfile "
        "overrides (paths, pagination style, filter, page and header names)",
    )
    g.add_argument(
        "--state",
        default=None,
        metavar="FILE",
        help="keep the data in FILE (and FILE.journal) across restarts: loaded when it exists "
        "(its shape wins over --seed/--users/...), every answered write saved",
    )


def read_profile_file(path: str) -> dict[str, Any]:
    """The profile overrides in a YAML (or JSON) file; ValueError names the file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the profile: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile is a mapping of setting: value")
    return {str(k): v for k, v in data.items()}


def build_config(args: argparse.Namespace) -> SandboxConfig:
    """The :class:`SandboxConfig` the parsed flags describe."""
    fields: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "seed": args.seed,
        "users": args.users,
        "groups": args.groups,
        "exams": args.exams,
        "attempts_per_exam": args.attempts_per_exam,
        "markers": args.markers,
        "rate": args.rate,
        "burst": args.burst,
        "retry_after": args.retry_after,
        "ratelimit_headers": not args.no_ratelimit_headers,
        "limiter": args.limiter,
        "latency_ms": args.latency_ms,
        "jitter_ms": args.jitter_ms,
        "route_latency_ms": dict(args.route_latency),
        "group_join_latency_ms": args.group_join_latency_ms,
        "fault_rate": args.fault_rate,
        "bad_token_status": args.bad_token_status,
        "subject_user_header": args.subject_user_header,
        "default_page_size": args.page_size,
        "max_page_size": args.max_page_size,
        "page_size_over_max": args.page_size_over_max,
        "export_job_steps": args.export_job_steps,
        "state": args.state,
    }
    if args.faults is not None:
        fields["faults"] = args.faults
    if getattr(args, "profile", None):
        fields["profile"] = read_profile_file(args.profile)
    token = args.token or os.environ.get("SYNAP_SANDBOX_TOKEN")
    if token:
        fields["token"] = token
    return SandboxConfig(**fields)


async def serve(config: SandboxConfig) -> None:
    """Serve until SIGINT/SIGTERM."""
    from .server import Sandbox

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Sandbox(config) as sb:
        print(f"sandbox listening on {sb.url}", flush=True)
        await stop.wait()


def main(args: argparse.Namespace) -> int:
    """Entry point of the ``sandbox`` subcommand."""
    try:
        config = build_config(args)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .persist import SandboxStateError

    try:
        asyncio.run(serve(config))
    except SandboxStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
