"""The `kepmta` command: one module per group of subcommands, each with its own `register`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kepmta.cli import (
    accounts,
    backup,
    check_config,
    db,
    directory,
    dovecot,
    evidence,
    peers,
    queue,
    serve,
    tokens,
)
from kepmta.cli.common import Parser

if TYPE_CHECKING:
    from kepmta.cli.common import Subcommands


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="kepmta",
        description="KEP (registered e-mail) server: SMTP submission, IMAP, "
        "and signed, time-stamped evidence.",
    )
    sub: Subcommands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    serve.register(sub)
    evidence.register(sub)
    accounts.register(sub)
    dovecot.register(sub)
    peers.register(sub)
    queue.register(sub)
    db.register(sub)
    tokens.register(sub)
    directory.register(sub)
    backup.register(sub)
    check_config.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
