"""`kepmta accounts …`: create and manage KEP accounts, their states, quotas and operators."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kepmta import config
from kepmta.accounts import Account, AccountError, AccountKind, AccountState, AccountStore, MailboxType
from kepmta.api.directory import Directory
from kepmta.cli.common import add_config_options, die, settings_from
from kepmta.db.engine import opened
from kepmta.notify import Contacts

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}


def size(text: str) -> int:
    """`104857600`, `100MB`, `1.5G` (powers of 1024)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not found or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 104857600, 100MB or 1G)")
    return int(float(found.group(1)) * _UNITS[found.group(2)])


def _mailbox_type(text: str) -> MailboxType:
    try:
        return MailboxType(text.replace("-", "_"))
    except ValueError:
        raise argparse.ArgumentTypeError("type must be sender-recipient or recipient-only") from None


async def _with_store(args: argparse.Namespace, work: Callable[[AccountStore], Awaitable[int]]) -> int:
    settings = settings_from(args)
    async with opened(settings.database_url) as engine:
        store = AccountStore(
            engine, settings.mail_root, domain=settings.domain, default_quota=settings.policy.default_quota
        )
        return await work(store)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise AccountError("the two passwords differ")
    else:
        raise AccountError("give the password on standard input with --password-stdin")
    if len(password) < 8:
        raise AccountError("the password must have at least 8 characters")
    return password


def _row(a: Account) -> dict[str, Any]:
    return {
        "address": a.address,
        "kind": a.kind.value,
        "type": a.mailbox_type.value.replace("_", "-"),
        "state": a.state.value,
        "name": a.display_name,
        "quota": a.quota,
        "national_id": a.national_id,
        "mersis": a.mersis,
        "certificate": a.certificate.subject.rfc4514_string() if a.certificate else None,
        "created": a.created_at.isoformat() if a.created_at else None,
    }


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MB"


async def _add(args: argparse.Namespace, store: AccountStore) -> int:
    state = AccountState.ACTIVE if args.active else AccountState.PENDING
    if args.kind == "person":
        cert = args.cert.read_text() if args.cert else None
        account = await store.add_person(
            args.first_name,
            args.last_name,
            password=_password(args),
            mailbox_type=args.type,
            state=state,
            quota=args.quota,
            national_id=args.national_id,
            cert_pem=cert,
        )
    else:
        account = await store.add_entity(
            legal_name=args.legal_name,
            mersis=args.mersis,
            use_mersis_address=args.address_from == "mersis",
            free=args.free,
            mailbox_type=args.type,
            state=state,
            quota=args.quota,
        )
    print(account.address)
    return 0


async def _list(args: argparse.Namespace, store: AccountStore) -> int:
    rows = [_row(a) for a in await store.all()]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print(_table(rows, ["address", "kind", "type", "state", "name"]))
    return 0


async def _show(args: argparse.Namespace, store: AccountStore) -> int:
    account = await store.require(args.address)
    usage = await store.usage(account.address)
    row = _row(account)
    row["used"] = usage.used
    if account.kind is AccountKind.ENTITY:
        row["operators"] = await store.operators_of(account.address)
    else:
        row["operator_of"] = await store.entities_of(account.address)
    if args.json:
        print(json.dumps(row, ensure_ascii=False))
        return 0
    row["quota"] = f"{_mib(usage.used)} of {_mib(usage.limit)} used ({usage.percent}%)"
    del row["used"]
    for key in ("operators", "operator_of"):
        if key in row:
            row[key] = ", ".join(row[key]) or "-"
    width = max(len(k) for k in row)
    for key, value in row.items():
        print(f"{key.replace('_', ' ').ljust(width)}  {value if value is not None else '-'}")
    return 0


async def _set_notify(args: argparse.Namespace, store: AccountStore) -> int:
    contact = await Contacts(store).set(args.address, phone=args.phone, email=args.email)
    if contact.phone is None and contact.email is None:
        print(f"{contact.address}: no notices")
    else:
        sms, mail = contact.phone or "-", contact.email or "-"
        print(f"{contact.address}: notices by SMS to {sms}, by e-mail to {mail}")
    return 0


def _simple(
    action: Callable[[AccountStore, argparse.Namespace], Awaitable[object]], done: str
) -> Callable[[argparse.Namespace, AccountStore], Awaitable[int]]:
    async def run(args: argparse.Namespace, store: AccountStore) -> int:
        await action(store, args)
        print(done.format(**vars(args)))
        return 0

    return run


_COMMANDS: dict[str, Callable[[argparse.Namespace, AccountStore], Awaitable[int]]] = {
    "add": _add,
    "list": _list,
    "show": _show,
    "activate": _simple(lambda s, a: s.transition(a.address, "activate"), "{address} is active"),
    "block": _simple(lambda s, a: s.transition(a.address, "block"), "{address} is blocked"),
    "close": _simple(lambda s, a: s.transition(a.address, "close"), "{address} is closed"),
    "reopen": _simple(
        lambda s, a: s.reopen(a.address, national_id=a.national_id, mersis=a.mersis),
        "{address} is active again",
    ),
    "set-quota": _simple(
        lambda s, a: s.set_quota(a.address, a.size), "quota of {address} set to {size} bytes"
    ),
    "add-operator": _simple(
        lambda s, a: s.add_operator(a.entity, a.operator), "{operator} may now send as {entity}"
    ),
    "remove-operator": _simple(
        lambda s, a: s.remove_operator(a.entity, a.operator), "{operator} may no longer send as {entity}"
    ),
    "set-notify": _set_notify,
    "passwd": _simple(lambda s, a: s.set_password(a.address, _password(a)), "password of {address} changed"),
    "set-listed": _simple(
        lambda s, a: Directory(s).set_listed(a.address, a.listed == "yes"),
        "{address}: listed in the directory: {listed}",
    ),
}


def cmd_accounts(args: argparse.Namespace) -> int:
    command = _COMMANDS[args.accounts_command]
    try:
        return asyncio.run(_with_store(args, lambda store: command(args, store)))
    except (AccountError, config.ConfigError, OSError, ValueError) as e:
        return die(str(e), 1)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    accounts = sub.add_parser("accounts", help="create and manage KEP accounts")
    acc = accounts.add_subparsers(dest="accounts_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser = acc.add_parser(name, help=help, description=help)
        add_config_options(parser)
        parser.set_defaults(func=cmd_accounts)
        return parser

    add_help = "create an account; prints the address it was given"
    add = acc.add_parser("add", help=add_help, description=add_help)
    kinds = add.add_subparsers(dest="kind", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        add_config_options(parser)
        parser.add_argument(
            "--type",
            type=_mailbox_type,
            default=MailboxType.SENDER_RECIPIENT,
            help="sender-recipient (default) or recipient-only",
        )
        parser.add_argument("--quota", type=size, help="mailbox quota (default: the policy's)")
        parser.add_argument(
            "--active",
            action="store_true",
            help="active at once (default: pending until the activation contract is signed)",
        )

    person = kinds.add_parser("person", help="a natural person: address ad.soyad, or ad.soyad.N when taken")
    person.add_argument("--first-name", required=True)
    person.add_argument("--last-name", required=True)
    person.add_argument(
        "--national-id",
        help="T.C. kimlik no (11 digits, its check digits right); proves the holder at reopen",
    )
    person.add_argument("--cert", type=Path, help="the person's signing certificate (PEM) to register")
    person.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    common(person)
    entity = kinds.add_parser("entity", help="a legal entity: address from its legal name or MERSİS number")
    entity.add_argument("--legal-name", required=True)
    entity.add_argument("--mersis", help="MERSİS number (16 digits); proves the holder at reopen")
    entity.add_argument(
        "--address-from", choices=("name", "mersis"), default="name", help="what the address is made of"
    )
    entity.add_argument("--free", help="optional free field: <name>.<free>@domain")
    common(entity)
    for parser in (person, entity):
        parser.set_defaults(func=cmd_accounts, accounts_command="add")

    for name, help in (("list", "list all accounts"), ("show", "show one account, its usage and operators")):
        parser = command(name, help)
        if name == "show":
            parser.add_argument("address")
        parser.add_argument("--json", action="store_true", help="JSON for scripts")
    for name, help in (
        ("activate", "activate a pending (or blocked) account"),
        ("block", "block an account: no sending, no receiving"),
        ("close", "close an account; its address is never given to anyone else"),
    ):
        command(name, help).add_argument("address")
    reopen = command("reopen", "reopen a closed account for its former holder")
    reopen.add_argument("address")
    proof = reopen.add_mutually_exclusive_group(required=True)
    proof.add_argument("--national-id", help="the holder's T.C. kimlik no (a person)")
    proof.add_argument("--mersis", help="the holder's MERSİS number (a legal entity)")
    quota = command("set-quota", "set an account's mailbox quota")
    quota.add_argument("address")
    quota.add_argument("size", type=size, help="e.g. 200MB")
    for name, help in (
        ("add-operator", "let a person send as a legal entity"),
        ("remove-operator", "stop a person sending as a legal entity"),
    ):
        parser = command(name, help)
        parser.add_argument("entity")
        parser.add_argument("operator")
    listed = command(
        "set-listed",
        "list a person in the KEP directory, or take them out of it (their consent; legal "
        "entities are always listed)",
    )
    listed.add_argument("address")
    listed.add_argument("listed", choices=("yes", "no"))
    notify = command(
        "set-notify",
        "where the holder is told that a KEP reached the mailbox (the server's [notify] sends); "
        "neither option: no notices",
    )
    notify.add_argument("address")
    notify.add_argument("--phone", help="mobile number for an SMS, international form: +905321234567")
    notify.add_argument("--email", help="ordinary e-mail address for an e-mail notice")
    passwd = command("passwd", "set a person's password")
    passwd.add_argument("address")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
