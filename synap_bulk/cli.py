"""The command line: ``python -m synap_bulk <command>``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m synap_bulk",
        description="Safe, fast, resumable bulk operations against the Synap API.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from .sandbox import cli as sandbox_cli

    sandbox_parser = sub.add_parser(
        "sandbox",
        help="serve the Synap API simulator (for tests, benchmarks and demos)",
        description="Serve a seeded, demanding simulator of the Synap API on 127.0.0.1.",
    )
    sandbox_cli.add_arguments(sandbox_parser)
    sandbox_parser.set_defaults(handler=sandbox_cli.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code
