"""API tokens: bound to a person's account, or to a person acting for a legal entity as its
authorised operator (KEP.md "account types": an entity acts only through its operators).

A token is 32 random bytes shown once when it is made; only its SHA-256 is stored, so the database
alone never lets anyone act. Every request checks the token again: not revoked, not expired, the
account still active, and the operator still an operator of the entity.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.engine import Row

from kepmta.accounts import Account, AccountError, AccountKind, AccountStore
from kepmta.db import utc
from kepmta.db.schema import api_tokens

# Shown at the start of every token, so a leaked one is recognised (by a secret scanner, say).
PREFIX = "kep_"


class TokenState(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class TokenInfo:
    id: str
    address: str  # the person the token logs in as
    entity: str | None  # the legal entity the person acts for, if any
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def state(self, now: dt.datetime) -> TokenState:
        if self.revoked_at is not None:
            return TokenState.REVOKED
        if self.expires_at is not None and now >= self.expires_at:
            return TokenState.EXPIRED
        return TokenState.ACTIVE


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the person logged in, and the account it acts for (itself, or the
    legal entity it operates)."""

    token_id: str
    login: Account
    acting_as: Account
    authenticated_at: dt.datetime

    @property
    def operator(self) -> Account | None:
        return self.login if self.acting_as.address != self.login.address else None


class Refused(StrEnum):
    """Why a token does not let a request in; the value is the stable error code."""

    MISSING = "token_missing"
    INVALID = "token_invalid"
    EXPIRED = "token_expired"
    REVOKED = "token_revoked"
    NOT_ACTIVE = "account_not_active"
    NOT_OPERATOR = "not_an_operator"


class TokenRefused(Exception):
    def __init__(self, why: Refused, text: str, text_tr: str) -> None:
        super().__init__(text)
        self.why = why
        self.text = text
        self.text_tr = text_tr


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", errors="surrogateescape")).digest()


def _info(row: Row[tuple[object, ...]]) -> TokenInfo:
    r = row._mapping
    return TokenInfo(
        id=r["id"],
        address=r["address"],
        entity=r["entity"],
        created_at=utc(r["created_at"]),
        expires_at=utc(r["expires_at"]) if r["expires_at"] is not None else None,
        revoked_at=utc(r["revoked_at"]) if r["revoked_at"] is not None else None,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TokenStore:
    def __init__(self, accounts: AccountStore) -> None:
        self.accounts = accounts
        self.db = accounts.db

    async def create(
        self, address: str, *, entity: str | None = None, days: int | None = None
    ) -> tuple[TokenInfo, str]:
        """A new token for the person `address` (acting for `entity`, whose operator it must be),
        valid for `days` or until revoked; returns it with the token itself, which is never kept."""
        person = await self.accounts.require(address)
        if person.kind is not AccountKind.PERSON:
            raise AccountError(
                f"{person.address} is a legal entity: make the token for one of its operators, "
                f"with --as {person.address}"
            )
        acting = None
        if entity is not None:
            ent = await self.accounts.require(entity)
            if ent.kind is not AccountKind.ENTITY:
                raise AccountError(f"{ent.address} is not a legal entity")
            if person.address not in await self.accounts.operators_of(ent.address):
                raise AccountError(f"{person.address} is not an authorised operator of {ent.address}")
            acting = ent.address
        if days is not None and days <= 0:
            raise AccountError(f"--expires must be a positive number of days, got {days}")
        now = _now()
        token = PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(
            id=secrets.token_hex(6),
            address=person.address,
            entity=acting,
            created_at=now,
            expires_at=now + dt.timedelta(days=days) if days is not None else None,
            revoked_at=None,
        )
        statement = insert(api_tokens).values(
            id=info.id,
            token_hash=digest(token),
            address=info.address,
            entity=info.entity,
            created_at=info.created_at,
            expires_at=info.expires_at,
        )
        await self.db.write(lambda conn: conn.execute(statement))
        return info, token

    async def all(self) -> list[TokenInfo]:
        query = select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id)
        return [_info(r) for r in await self.db.read(lambda conn: conn.execute(query).all())]

    async def revoke(self, token_id: str) -> TokenInfo:
        def revoke(conn: Connection) -> Row[tuple[object, ...]] | None:
            conn.execute(
                update(api_tokens)
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            return conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).first()

        row = await self.db.write(revoke)
        if row is None:
            raise AccountError(f"no token {token_id}")
        return _info(row)

    async def authenticate(self, token: str | None) -> Principal:
        """The principal a request with this token acts as, or TokenRefused saying why not."""
        if not token:
            raise TokenRefused(
                Refused.MISSING,
                "this request needs an API token: Authorization: Bearer <token>",
                "bu istek bir API anahtarı gerektirir: Authorization: Bearer <anahtar>",
            )
        query = select(api_tokens).where(api_tokens.c.token_hash == digest(token))
        row = await self.db.read(lambda conn: conn.execute(query).first())
        if row is None:
            raise TokenRefused(Refused.INVALID, "the API token is not valid", "API anahtarı geçerli değil")
        info, now = _info(row), _now()
        state = info.state(now)
        if state is TokenState.REVOKED:
            raise TokenRefused(Refused.REVOKED, "the API token was revoked", "API anahtarı iptal edilmiş")
        if state is TokenState.EXPIRED:
            raise TokenRefused(Refused.EXPIRED, "the API token has expired", "API anahtarının süresi dolmuş")
        login = await self.accounts.get(info.address)
        if login is None or not login.active:
            raise TokenRefused(
                Refused.NOT_ACTIVE,
                f"the KEP account {info.address} is not active",
                f"{info.address} KEP hesabı etkin değil",
            )
        acting = login
        if info.entity is not None:
            entity = await self.accounts.get(info.entity)
            # Checked at every request: an operator removed from the entity loses its tokens' use.
            if entity is None or login.address not in await self.accounts.operators_of(entity.address):
                raise TokenRefused(
                    Refused.NOT_OPERATOR,
                    f"{login.address} is no longer an authorised operator of {info.entity}",
                    f"{login.address} artık {info.entity} adına işlem yetkilisi değil",
                )
            acting = entity
        return Principal(info.id, login, acting, now)
