"""What every `kepmta` subcommand shares."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from kepmta import config, devinit

DEFAULT_DATA = Path("kepmta-dev")


def die(message: str, code: int = 2) -> int:
    """Print one line for a person and return the exit code."""
    print(f"kepmta: {message}", file=sys.stderr)
    return code


if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


class Parser(argparse.ArgumentParser):
    """Bad arguments give one line naming the mistake (and `--help` the rest), nothing else."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="kepmta.toml of the server")
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="development folder, used when --config is not given (default: %(default)s)",
    )


def settings_from(args: argparse.Namespace) -> config.Settings:
    """The configuration named by --config, or the development folder's (raises ConfigError)."""
    path: Path = args.config or args.data / devinit.CONFIG_NAME
    return config.load(path)
