"""`kepmta dovecot …`: what Dovecot calls when it serves kepmta's Maildir as the IMAP front end.

`kepmta dovecot checkpassword` is a passdb for Dovecot's built-in `checkpassword` driver (Dovecot
wiki "AuthDatabase/CheckPassword", the qmail checkpassword interface): Dovecot writes
`user\\0password\\0…` on file descriptor 3 and appends the path of its reply program to our
arguments. On success we put the canonical address in USER and exec that program, which hands the
result back to Dovecot on fd 4; exit 1 means wrong credentials, 111 a temporary failure.

Dovecot starts this program for every login, so it imports only what a password check needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kepmta.cli.common import DEFAULT_DATA

# Exit codes of the checkpassword interface.
CHECKPASSWORD_BAD = 1
CHECKPASSWORD_TEMPFAIL = 111
_CREDENTIALS_FD = 3
# qmail's checkpassword reads at most 512 bytes; Dovecot's own callers stay within that too.
_MAX_INPUT = 512


def _read_credentials(fd: int) -> tuple[str, str] | None:
    data = b""
    while len(data) < _MAX_INPUT:
        chunk = os.read(fd, _MAX_INPUT - len(data))
        if not chunk:
            break
        data += chunk
    fields = data.split(b"\0")
    # user NUL password NUL [timestamp NUL …]: fewer than two terminated fields is malformed.
    if len(fields) < 3:
        return None
    try:
        return fields[0].decode("utf-8"), fields[1].decode("utf-8")
    except UnicodeDecodeError:
        return None


async def _authenticate(config_file: Path, username: str, password: str, peer_ip: str) -> str | None:
    from kepmta import config
    from kepmta.accounts import AccountStore
    from kepmta.db.engine import opened

    settings = config.load(config_file)
    async with opened(settings.database_url) as engine:
        store = AccountStore(
            engine, settings.mail_root, domain=settings.domain, default_quota=settings.policy.default_quota
        )
        account = await store.authenticate(username, password, peer_ip)
    return account.address if account else None


def cmd_checkpassword(args: argparse.Namespace) -> int:
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from kepmta import config, devinit

    if not args.reply:
        print("kepmta dovecot checkpassword: no reply program given (Dovecot appends one)", file=sys.stderr)
        return CHECKPASSWORD_TEMPFAIL
    try:
        credentials = _read_credentials(_CREDENTIALS_FD)
    except OSError as e:
        print(f"kepmta dovecot checkpassword: cannot read fd 3: {e}", file=sys.stderr)
        return CHECKPASSWORD_TEMPFAIL
    if credentials is None:
        return CHECKPASSWORD_BAD
    config_file = args.config or args.data / devinit.CONFIG_NAME
    try:
        # Dovecot passes the client's address as TCPREMOTEIP (ucspi-tcp convention).
        peer_ip = os.environ.get("TCPREMOTEIP", "")
        address = asyncio.run(_authenticate(config_file, *credentials, peer_ip))
    except config.ConfigError as e:
        print(f"kepmta dovecot checkpassword: {e}", file=sys.stderr)
        return CHECKPASSWORD_TEMPFAIL
    except (OSError, SQLAlchemyError) as e:  # database unreachable or locked: worth a retry
        print(f"kepmta dovecot checkpassword: {type(e).__name__}: {e}", file=sys.stderr)
        return CHECKPASSWORD_TEMPFAIL
    if address is None:
        return CHECKPASSWORD_BAD
    # Dovecot takes USER as the login's canonical name, so `%d/%n` in mail_location always name the
    # folder kepmta delivers into, whatever case or spelling the client typed.
    os.environ["USER"] = address
    try:
        os.execv(args.reply[0], args.reply)
    except OSError as e:
        print(f"kepmta dovecot checkpassword: cannot run {args.reply[0]}: {e}", file=sys.stderr)
    return CHECKPASSWORD_TEMPFAIL


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dovecot = sub.add_parser("dovecot", help="helpers for Dovecot as the IMAP front end")
    dv_sub = dovecot.add_subparsers(dest="dovecot_command", required=True)
    check = dv_sub.add_parser(
        "checkpassword",
        help="Dovecot checkpassword passdb backed by kepmta's accounts",
        description="Reads user and password from fd 3 (Dovecot's checkpassword interface) and, if "
        "the account is active and the password right, runs the reply program given after the "
        "options with USER set to the account's address. Exit 1: wrong credentials or an account "
        "that may not log in; 111: temporary failure.",
    )
    check.add_argument("--config", type=Path, help="kepmta.toml of the provider")
    check.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="development folder (default: %(default)s)"
    )
    check.add_argument("reply", nargs=argparse.REMAINDER, help="reply program and its arguments")
    check.set_defaults(func=cmd_checkpassword)
