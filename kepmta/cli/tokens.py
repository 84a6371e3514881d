"""`kepmta tokens …`: API tokens for the integration API (kepmta.api)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable

from kepmta import config
from kepmta.accounts import AccountError, AccountStore
from kepmta.api.tokens import TokenInfo, TokenStore
from kepmta.cli.common import add_config_options, die, settings_from
from kepmta.db.engine import opened


async def _with_tokens(args: argparse.Namespace, work: Callable[[TokenStore], Awaitable[int]]) -> int:
    settings = settings_from(args)
    async with opened(settings.database_url) as engine:
        store = AccountStore(
            engine, settings.mail_root, domain=settings.domain, default_quota=settings.policy.default_quota
        )
        return await work(TokenStore(store))


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M}Z"


def _row(t: TokenInfo, now: dt.datetime) -> dict[str, str | None]:
    return {
        "id": t.id,
        "address": t.address,
        "acting_as": t.entity,
        "state": t.state(now).value,
        "created": t.created_at.isoformat(),
        "expires": t.expires_at.isoformat() if t.expires_at else None,
        "revoked": t.revoked_at.isoformat() if t.revoked_at else None,
    }


async def _create(args: argparse.Namespace, store: TokenStore) -> int:
    info, token = await store.create(args.address, entity=args.acting_as, days=args.expires)
    who = f"{info.address} acting for {info.entity}" if info.entity else info.address
    until = f"until {_when(info.expires_at)}" if info.expires_at else "until revoked"
    # The token last, alone after a space: scripts take the last word.
    print(f"token {info.id} for {who}, valid {until}; shown only now, keep it secret: {token}")
    return 0


async def _list(args: argparse.Namespace, store: TokenStore) -> int:
    now = dt.datetime.now(dt.UTC)
    tokens = await store.all()
    if args.json:
        print(json.dumps([_row(t, now) for t in tokens], ensure_ascii=False))
        return 0
    for t in tokens:
        acting = f" for {t.entity}" if t.entity else ""
        print(
            f"{t.id}  {t.address}{acting}  {t.state(now).value}  created {_when(t.created_at)}  "
            f"expires {_when(t.expires_at)}"
        )
    return 0


async def _revoke(args: argparse.Namespace, store: TokenStore) -> int:
    info = await store.revoke(args.id)
    print(f"token {info.id} of {info.address} revoked at {_when(info.revoked_at)}")
    return 0


_COMMANDS = {"create": _create, "list": _list, "revoke": _revoke}


def cmd_tokens(args: argparse.Namespace) -> int:
    command = _COMMANDS[args.tokens_command]
    try:
        return asyncio.run(_with_tokens(args, lambda store: command(args, store)))
    except (AccountError, config.ConfigError, OSError, ValueError) as e:
        return die(str(e), 1)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tokens = sub.add_parser(
        "tokens",
        help="make, list and revoke tokens of the integration API",
        description="A token lets a program use the integration API (the api port) as a person's "
        "KEP account, or as an authorised operator acting for a legal entity. Only its SHA-256 is "
        "stored: the token is shown once, by create.",
    )
    tok = tokens.add_subparsers(dest="tokens_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser = tok.add_parser(name, help=help, description=help)
        add_config_options(parser)
        parser.set_defaults(func=cmd_tokens)
        return parser

    create = command(
        "create", "make a token for a person's account; prints it as the last word of its output"
    )
    create.add_argument("address", help="the person whose account the token uses")
    create.add_argument(
        "--as",
        dest="acting_as",
        metavar="ENTITY",
        help="a legal entity the person is an authorised operator of: the token acts for it, "
        "and its evidence names the person as operator",
    )
    create.add_argument(
        "--expires", type=int, metavar="DAYS", help="valid for this many days (default: until revoked)"
    )
    listing = command("list", "list every token: id, account, state, creation and expiry")
    listing.add_argument("--json", action="store_true", help="JSON for scripts")
    revoke = command("revoke", "revoke a token at once; it is refused from its next request on")
    revoke.add_argument("id", help="the token's id, as `tokens list` shows it")
