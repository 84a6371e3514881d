"""`kepmta check-config`: the configuration, policy and peer files, keys and certificates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kepmta import configcheck, devinit
from kepmta.cli.common import DEFAULT_DATA

if TYPE_CHECKING:
    from kepmta.cli.common import Subcommands


def cmd_check_config(args: argparse.Namespace) -> int:
    path: Path = args.config or args.data / devinit.CONFIG_NAME
    problems = configcheck.check_file(path)
    for problem in problems:
        print(problem)
    errors = sum(p.error for p in problems)
    if not problems:
        print(f"kepmta: {path}: no problems found", file=sys.stderr)
    return 1 if errors else 0


def register(sub: Subcommands) -> None:
    check = sub.add_parser(
        "check-config",
        help="check the configuration, policy and peer files, keys and certificates",
        description="Check kepmta.toml, the policy and peer files it names, and every key and "
        "certificate they name: dates (a warning within 30 days of expiry, an error once expired or "
        "before it is valid), each key against its certificate, each chain up to the provider CA, "
        "the TLS certificate's names and usages, the relay client certificate, the DKIM keys, the "
        "evidence signing and time-stamp certificates, and the trusted CA bundles. Each problem is "
        "one line, FILE: section.key: problem (warnings begin with 'warning: '). Exits 1 when there "
        "is an error, 0 otherwise. A running server checks the same on SIGHUP before it reloads.",
    )
    check.add_argument("--config", type=Path, help="kepmta.toml to check (default: the --data folder's)")
    check.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="development folder, used when --config is not given (default: %(default)s)",
    )
    check.set_defaults(func=cmd_check_config)
