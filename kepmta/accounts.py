"""KEP accounts: who may log in, send and receive, and where their mail lives."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta import addresses
from kepmta.db.schema import accounts
from kepmta.maildir import Maildir
from kepmta.passwords import check_password_async, hash_password

_UNKNOWN_USER_HASH = hash_password("no account has this password")


class AccountState(Enum):
    PENDING = "pending"  # activation contract not yet signed: no login, no mail
    ACTIVE = "active"
    BLOCKED = "blocked"
    CLOSED = "closed"


@dataclass(frozen=True)
class Account:
    address: str
    display_name: str
    state: AccountState

    @property
    def active(self) -> bool:
        return self.state is AccountState.ACTIVE


class AccountExists(ValueError):
    """The address is already assigned."""


class AccountStore:
    def __init__(self, engine: AsyncEngine, mail_root: Path) -> None:
        self.engine = engine
        self.mail_root = mail_root

    async def add(self, address: str, display_name: str, password: str) -> Account:
        addr = str(addresses.parse(address))
        if await self.get(addr):
            raise AccountExists(f"{addr} is already assigned")
        row = {
            "address": addr,
            "display_name": display_name,
            "state": AccountState.ACTIVE.value,
            "password_hash": hash_password(password),
            "created_at": dt.datetime.now(dt.UTC),
        }
        async with self.engine.begin() as conn:
            await conn.execute(insert(accounts).values(**row))
        self.maildir(addr).create("INBOX")
        return Account(addr, display_name, AccountState.ACTIVE)

    async def get(self, address: str) -> Account | None:
        try:
            addr = str(addresses.parse(address))
        except addresses.AddressError:
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.address == addr))).first()
        if row is None:
            return None
        return Account(row.address, row.display_name, AccountState(row.state))

    async def authenticate(self, username: str, password: str) -> Account | None:
        """The account if the password is right and the account may log in, else None."""
        try:
            addr = str(addresses.parse(username))
        except addresses.AddressError:
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.address == addr))).first()
        if row is None:
            # Same cost as a wrong password, so timing does not tell which addresses exist.
            await check_password_async(password, _UNKNOWN_USER_HASH)
            return None
        if not await check_password_async(password, row.password_hash):
            return None
        account = Account(row.address, row.display_name, AccountState(row.state))
        return account if account.active else None

    def maildir(self, address: str) -> Maildir:
        addr = addresses.parse(address)
        return Maildir(self.mail_root / addr.domain / addr.local)
