"""The command line: ``python -m synap_bulk <command>``.

Exit codes: 0 all done; 1 some items failed (or the run was stopped, resumable); 2 the job is
invalid or the run was aborted (401, circuit breaker, unusable ledger).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _add(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A command whose --help says what it does and shows every option's default."""
    if "help" in kwargs:
        kwargs.setdefault("description", kwargs["help"][:1].upper() + kwargs["help"][1:] + ".")
    parser: argparse.ArgumentParser = sub.add_parser(
        name, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs
    )
    return parser


def _job_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", type=Path, help="the job file (YAML)")


def build_parser() -> argparse.ArgumentParser:
    from .runner import invoked_as

    parser = argparse.ArgumentParser(
        prog=invoked_as(),
        description="Safe, fast, resumable bulk operations against the Synap API.",
        epilog="Exit codes: 0 all done; 1 some rows failed or are invalid, or the run stopped "
        "(run it again to resume); 2 the job is invalid or the run was aborted. "
        "Job files: docs/job-files.md.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"synap_bulk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _add(sub, "run", help="run a job, resuming where it stopped")
    _job_arg(p)
    p.add_argument(
        "--restart", action="store_true", help="forget the ledger and start the job afresh"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="send the items that failed before again"
    )
    _source_arg(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="with --restart: forget even the done items of an unsafe task (they are re-sent)",
    )
    _yes_arg(p)
    p.set_defaults(handler=_cmd_run)

    p = _add(
        sub,
        "validate",
        help="check a job file and read its whole input; no network, no token; exit 1 when "
        "rows are invalid",
    )
    _job_arg(p)
    p.set_defaults(handler=_cmd_validate)

    p = _add(sub, "plan", help="dry run: read the server, write nothing, print the plan")
    _job_arg(p)
    p.add_argument(
        "--retry-failed", action="store_true", help="plan as run --retry-failed would do"
    )
    _source_arg(p)
    p.set_defaults(handler=_cmd_plan)

    p = _add(
        sub,
        "doctor",
        help="probe the server read-only: does it behave as the job's profile assumes?",
    )
    _job_arg(p)
    p.set_defaults(handler=_cmd_doctor)

    p = _add(sub, "status", help="what the job's ledger says (no server is contacted)")
    _job_arg(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(handler=_cmd_status)

    p = _add(
        sub,
        "report",
        help="write a run's report.html again from its folder (no server is contacted)",
    )
    _job_arg(p)
    p.add_argument(
        "--run", type=int, default=None, metavar="ID", help="the run's number (default: the last)"
    )
    p.set_defaults(handler=_cmd_report)

    p = _add(
        sub,
        "settle",
        help="record which rows in doubt took effect on the server (no server is contacted)",
    )
    _job_arg(p)
    p.add_argument(
        "--applied",
        nargs="+",
        default=[],
        metavar="KEY",
        help="items whose request took effect: done, never sent again",
    )
    p.add_argument(
        "--not-applied",
        nargs="+",
        default=[],
        metavar="KEY",
        help="items whose request did not take effect: sent on the next run",
    )
    p.add_argument(
        "--csv",
        type=Path,
        default=None,
        metavar="FILE",
        help="the failures file (or any CSV with _line or _key) with an 'applied' column",
    )
    p.set_defaults(handler=_cmd_settle)

    p = _add(sub, "undo", help="put the server back as it was before a run of the job")
    _job_arg(p)
    p.add_argument(
        "--run",
        type=int,
        default=None,
        metavar="RUN_ID",
        help="the run to undo; omitted: the last run, with the interrupted runs it resumed",
    )
    p.add_argument("--plan", action="store_true", help="show the undo's plan; change nothing")
    _yes_arg(p)
    p.set_defaults(handler=_cmd_undo)

    p = _add(sub, "schema", help="print the JSON Schema of job files (for editors)")
    p.set_defaults(handler=_cmd_schema)

    from .sandbox import cli as sandbox_cli

    sandbox_parser = _add(
        sub,
        "sandbox",
        help="serve the Synap API simulator (for tests, benchmarks and demos)",
        description="Serve a seeded, demanding simulator of the Synap API on 127.0.0.1.",
    )
    sandbox_cli.add_arguments(sandbox_parser)
    sandbox_parser.set_defaults(handler=sandbox_cli.main)
    return parser


def _yes_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--yes",
        action="store_true",
        help="go on beyond the job's guard limits and without asking to confirm (for scripts)",
    )


def _cmd_undo(args: argparse.Namespace) -> int:
    from .undo import undo_job

    async def go() -> int:
        return await undo_job(_load(args.job), run_id=args.run, plan_only=args.plan, yes=args.yes)

    return _run_async(go)


def _source_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        type=Path,
        metavar="CSV",
        help="read this CSV instead of the job's own (e.g. its failures file, fixed): done "
        "rows stay done, fixed rows are tried again, new rows are new",
    )


#: Set by --debug: unexpected errors show their traceback.
_DEBUG = False


def _run_async(fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    import anyio

    from .errors import SynapBulkError

    try:
        return anyio.run(fn)
    except SynapBulkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _DEBUG:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 2


def _load(path: Path, *, offline: bool = False) -> Any:
    from .spec import load_job

    return load_job(path, offline=offline)


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_job

    async def go() -> int:
        job = _load(args.job)
        return await run_job(
            job,
            restart=args.restart,
            retry_failed=args.retry_failed,
            source=args.source,
            force=args.force,
            yes=args.yes,
        )

    return _run_async(go)


def _cmd_plan(args: argparse.Namespace) -> int:
    from .planning import plan_job

    async def go() -> int:
        return await plan_job(_load(args.job), retry_failed=args.retry_failed, source=args.source)

    return _run_async(go)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, render_checks
    from .runner import open_client

    async def go() -> int:
        job = _load(args.job)
        async with open_client(job, job.profile) as (client, _source):
            checks = await diagnose(job, client)
        for line in render_checks(checks):
            print(line)
        failed = sum(1 for c in checks if c.ok is False)
        print(f"{len(checks)} checks: {failed} failed" if failed else f"{len(checks)} checks: ok")
        return 1 if failed else 0

    return _run_async(go)


def _cmd_status(args: argparse.Namespace) -> int:
    from .status import status_job

    async def go() -> int:
        return await status_job(_load(args.job, offline=True), as_json=args.json)

    return _run_async(go)


def _cmd_report(args: argparse.Namespace) -> int:
    from .report_html import job_secrets, report_run
    from .runner import out_dir

    async def go() -> int:
        job = _load(args.job, offline=True)
        path = report_run(out_dir(job), args.run, secrets=job_secrets(job), job=str(args.job))
        print(path)
        return 0

    return _run_async(go)


def _cmd_settle(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .settle import settle_job

    async def go() -> int:
        return await settle_job(
            _load(args.job, offline=True),
            applied=args.applied,
            not_applied=args.not_applied,
            csv_path=args.csv,
            console=Console(stderr=True),
        )

    return _run_async(go)


def _cmd_validate(args: argparse.Namespace) -> int:
    from .planning import validate_job

    async def go() -> int:
        return await validate_job(_load(args.job, offline=True))

    return _run_async(go)


def _cmd_schema(args: argparse.Namespace) -> int:
    import json

    from .spec import job_schema

    print(json.dumps(job_schema(), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    global _DEBUG
    parser = build_parser()
    args = parser.parse_args(argv)
    _DEBUG = args.debug
    code: int = args.handler(args)
    return code
