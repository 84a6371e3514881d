"""`kepmta directory …`: the KEP directory (rehber) as the integration API shows it."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from kepmta import config
from kepmta.accounts import AccountError, AccountStore
from kepmta.api.directory import Directory, Entry
from kepmta.cli.common import add_config_options, die, settings_from
from kepmta.db.engine import opened


async def _with_directory(
    args: argparse.Namespace, work: Callable[[Directory, config.Settings], Awaitable[int]]
) -> int:
    settings = settings_from(args)
    async with opened(settings.database_url) as engine:
        store = AccountStore(
            engine, settings.mail_root, domain=settings.domain, default_quota=settings.policy.default_quota
        )
        return await work(Directory(store), settings)


def _print(entries: list[Entry], as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(e) for e in entries], ensure_ascii=False))
        return
    for e in entries:
        mersis = f"  MERSİS {e.mersis}" if e.mersis else ""
        state = "" if e.active else "  (not active)"
        print(f"{e.address}  {e.name}  [{e.kind}]{mersis}{state}")


async def _search(args: argparse.Namespace, directory: Directory, settings: config.Settings) -> int:
    found = await directory.search(args.text, settings.policy.api.search_results)
    _print(found, args.json)
    return 0 if found else 1


async def _export(args: argparse.Namespace, directory: Directory, settings: config.Settings) -> int:
    _print(await directory.entries(), args.json)
    return 0


_COMMANDS = {"search": _search, "export": _export}


def cmd_directory(args: argparse.Namespace) -> int:
    command = _COMMANDS[args.directory_command]
    try:
        return asyncio.run(_with_directory(args, lambda d, s: command(args, d, s)))
    except (AccountError, config.ConfigError, OSError, ValueError) as e:
        return die(str(e), 1)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    directory = sub.add_parser(
        "directory",
        help="search or export the KEP directory (rehber)",
        description="The directory lists every legal entity, and persons who opted in "
        "(`kepmta accounts set-listed ADDRESS yes`); accounts still pending activation are not "
        "listed. It shows address, name, kind, a legal entity's MERSİS number and whether the "
        "address is active.",
    )
    sub_dir = directory.add_subparsers(dest="directory_command", required=True)
    search = sub_dir.add_parser(
        "search",
        help="listed entries whose name, address or MERSİS number holds TEXT (exit 1: none)",
        description="Case and Turkish letters are ignored (ş matches s); 16 digits are a MERSİS "
        "number, matched exactly. At most [api] search_results of the policy are shown.",
    )
    search.add_argument("text")
    export = sub_dir.add_parser("export", help="every listed entry, by address")
    for parser in (search, export):
        parser.add_argument("--json", action="store_true", help="JSON for scripts")
        add_config_options(parser)
        parser.set_defaults(func=cmd_directory)
