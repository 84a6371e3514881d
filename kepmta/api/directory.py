"""The KEP directory (rehber): who has a KEP address at this provider, within the privacy rules.

KEP.md "directory": legal entities are always listed; natural persons only once they opt in
(`kepmta accounts set-listed ADDRESS yes`, a row of `directory_listing`). An unlisted person is
answered exactly as an address that does not exist, by search and by bulk check alike, so the
directory never tells whether such a person has an account. Accounts still pending activation are
nobody's KEP address yet and are never listed.

Only what a sender needs is shown: the address, the name, the kind, a legal entity's MERSİS number
and whether the address is active. Never a T.C. kimlik no.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, or_, select
from sqlalchemy.engine import Row

from kepmta import addresses
from kepmta.accounts import Account, AccountError, AccountKind, AccountState, AccountStore
from kepmta.db.schema import accounts, directory_listing


@dataclass(frozen=True)
class Entry:
    address: str
    name: str
    kind: str  # "person" | "entity"
    mersis: str | None  # a legal entity's, when known; never shown for a person
    active: bool  # it can receive KEP now (not blocked or closed)


@dataclass(frozen=True)
class Answer:
    """A bulk check's answer for one address: `listed` is False both for an address with no
    account and for a person who did not opt in; `active` is None then."""

    address: str
    listed: bool
    active: bool | None


# Every listed account: an entity, or a person who opted in; never one still pending activation.
_LISTED = (
    select(accounts)
    .outerjoin(directory_listing, directory_listing.c.address == accounts.c.address)
    .where(
        accounts.c.state != AccountState.PENDING.value,
        or_(accounts.c.kind == AccountKind.ENTITY.value, directory_listing.c.address.is_not(None)),
    )
)


def _entry(row: Row[tuple[object, ...]]) -> Entry:
    r = row._mapping
    entity = r["kind"] == AccountKind.ENTITY.value
    return Entry(
        address=r["address"],
        name=r["display_name"],
        kind=r["kind"],
        mersis=r["mersis"] if entity else None,
        active=r["state"] == AccountState.ACTIVE.value,
    )


def _key(text: str) -> str:
    """What search compares: Turkish letters folded as addresses fold them, case and spacing ignored."""
    return " ".join(addresses.transliterate(text).split())


class Directory:
    def __init__(self, store: AccountStore) -> None:
        self.store = store
        self.db = store.db

    async def set_listed(self, address: str, listed: bool) -> Account:
        """Record a person's consent to be listed, or its withdrawal."""
        account = await self.store.require(address)
        if account.kind is AccountKind.ENTITY:
            raise AccountError(f"{account.address} is a legal entity: entities are always listed (KEP.md)")

        def change(conn: Connection) -> None:
            conn.execute(delete(directory_listing).where(directory_listing.c.address == account.address))
            if listed:
                now = dt.datetime.now(dt.UTC)
                conn.execute(insert(directory_listing).values(address=account.address, listed_at=now))

        await self.db.write(change)
        return account

    async def is_listed(self, address: str) -> bool:
        account = await self.store.require(address)
        query = _LISTED.where(accounts.c.address == account.address)
        return await self.db.read(lambda conn: conn.execute(query).first()) is not None

    async def entries(self) -> list[Entry]:
        """The whole directory, by address."""
        rows = await self.db.read(lambda conn: conn.execute(_LISTED.order_by(accounts.c.address)).all())
        return [_entry(r) for r in rows]

    async def search(self, text: str, limit: int) -> list[Entry]:
        """Listed entries whose name, address or MERSİS number holds `text` (16 digits: that
        MERSİS number exactly), the first `limit` by address."""
        wanted = _key(text)
        if not wanted:
            return []
        digits = wanted.replace(" ", "")
        if digits.isdigit() and len(digits) == 16:
            return [e for e in await self.entries() if e.mersis == digits][:limit]
        found = [
            e
            for e in await self.entries()
            if wanted in _key(e.name) or wanted in e.address or (e.mersis is not None and wanted in e.mersis)
        ]
        return found[:limit]

    async def check(self, given: Sequence[str]) -> list[Answer]:
        """For each address, in order: listed, and if so whether it is active."""
        normal: dict[str, str] = {}
        for text in given:
            try:
                normal[text] = str(addresses.parse(text))
            except addresses.AddressError:
                continue  # no account has such an address: answered as not listed
        wanted = sorted(set(normal.values()))
        query = _LISTED.where(accounts.c.address.in_(wanted))
        rows = await self.db.read(lambda conn: conn.execute(query).all()) if wanted else []
        listed = {e.address: e for e in map(_entry, rows)}
        answers = []
        for text in given:
            entry = listed.get(normal.get(text, ""))
            answers.append(Answer(text, entry is not None, entry.active if entry is not None else None))
        return answers
