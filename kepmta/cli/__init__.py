"""The `kepmta` command: one module per group of subcommands, each with its own `register`."""

from __future__ import annotations

import argparse

from kepmta.cli import dovecot, evidence, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kepmta",
        description="KEP (registered e-mail) server: SMTP submission, IMAP, "
        "and signed, time-stamped evidence.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve.register(sub)
    evidence.register(sub)
    dovecot.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
