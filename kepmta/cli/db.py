"""`kepmta db status` and `kepmta db upgrade`: the schema revision of the server's database."""

from __future__ import annotations

import argparse
import asyncio

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from kepmta import config
from kepmta.cli.common import add_config_options, die, settings_from
from kepmta.db import migrate
from kepmta.db.engine import create
from kepmta.db.runner import close


def _where(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


async def _status(url: str) -> int:
    engine = create(url)
    try:
        found = await migrate.status(engine)
    finally:
        await close(engine)
    print(f"database: {_where(url)}")
    print(f"current revision: {found.current or f'none ({found.standing.value})'}")
    print(f"head revision: {found.head}")
    if found.standing is migrate.Standing.UNKNOWN:
        print(f"upgrade needed: cannot tell: {found.describe()}")
        return 1
    print(f"upgrade needed: {'yes (kepmta db upgrade)' if found.needs_upgrade else 'no'}")
    return 1 if found.needs_upgrade else 0


async def _upgrade(url: str) -> int:
    engine = create(url)
    try:
        before, after = await migrate.upgrade(engine)
    finally:
        await close(engine)
    if not before.needs_upgrade:
        print(f"{_where(url)} is at revision {after.current}, the newest: nothing to do")
    else:
        was = before.current or before.standing.value
        print(f"{_where(url)} upgraded from {was} to revision {after.current}")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        url = settings_from(args).database_url
        work = _status(url) if args.db_command == "status" else _upgrade(url)
        return asyncio.run(work)
    except config.ConfigError as e:
        return die(str(e), 1)
    except (SQLAlchemyError, OSError) as e:
        return die(f"cannot reach the database: {e}", 1)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser(
        "db",
        help="the database's schema revision: status, upgrade",
        description="Every kepmta release knows its newest schema revision (Alembic). A server "
        "refuses to start on a database behind it; `kepmta db upgrade` brings the database there.",
    )
    commands = db.add_subparsers(dest="db_command", required=True, parser_class=type(db))
    said = "print the database's revision and this kepmta's newest; exit 1 if an upgrade is needed"
    status = commands.add_parser("status", help=said, description=said)
    said = (
        "bring the database to this kepmta's newest revision (an empty one is made; one made before "
        "migrations is stamped as the first revision); stop the servers on it first"
    )
    upgrade = commands.add_parser("upgrade", help=said, description=said)
    for parser in (status, upgrade):
        add_config_options(parser)
        parser.set_defaults(func=_run)
