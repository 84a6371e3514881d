"""KEP accounts: kinds, types, states, operators; who may log in, send and receive.

KEP.md "account types", "account states", "addresses": natural persons and legal entities;
sender+recipient or recipient-only; pending → active ⇄ blocked → closed, a closed address never
assigned again and reopened only by its holder; legal entities act through authorised operators.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta import addresses
from kepmta.db import utc
from kepmta.db.runner import runner
from kepmta.db.schema import accounts, operators
from kepmta.maildir import INBOX, Maildir, SizeCache
from kepmta.passwords import CheckedPasswords, hash_password
from kepmta.policy.identity import IdentityNumberError, check_mersis, check_national_id
from kepmta.ratelimit import FailureLimiter


@functools.cache
def _unknown_user_hash() -> str:
    """What a login for an address that does not exist is checked against (made once, when needed)."""
    return hash_password("no account has this password")


class AccountState(Enum):
    PENDING = "pending"  # activation contract not yet signed: no login, no mail
    ACTIVE = "active"
    BLOCKED = "blocked"  # no sending, no receiving; kept at least 3 months
    CLOSED = "closed"  # the address is never given to anyone else


class AccountKind(Enum):
    PERSON = "person"
    ENTITY = "entity"


class MailboxType(Enum):
    SENDER_RECIPIENT = "sender_recipient"
    RECIPIENT_ONLY = "recipient_only"


# Which state each command moves an account to, and from which states it may.
_TRANSITIONS: dict[str, tuple[frozenset[AccountState], AccountState]] = {
    "activate": (frozenset({AccountState.PENDING, AccountState.BLOCKED}), AccountState.ACTIVE),
    "block": (frozenset({AccountState.ACTIVE}), AccountState.BLOCKED),
    "close": (
        frozenset({AccountState.PENDING, AccountState.ACTIVE, AccountState.BLOCKED}),
        AccountState.CLOSED,
    ),
}


class AccountError(ValueError):
    """A request about accounts that cannot be done; the message says why in one line."""


@dataclass(frozen=True)
class Account:
    address: str
    kind: AccountKind
    mailbox_type: MailboxType
    state: AccountState
    display_name: str
    quota: int
    first_name: str | None = None
    last_name: str | None = None
    national_id: str | None = None
    mersis: str | None = None
    legal_name: str | None = None
    cert_pem: str | None = None
    created_at: dt.datetime | None = None

    @property
    def active(self) -> bool:
        return self.state is AccountState.ACTIVE

    @property
    def can_send(self) -> bool:
        return self.mailbox_type is MailboxType.SENDER_RECIPIENT

    @property
    def certificate(self) -> x509.Certificate | None:
        return x509.load_pem_x509_certificate(self.cert_pem.encode()) if self.cert_pem else None


class LoginRefusal(Enum):
    """Why a login failed; the protocol edge words it, without telling strangers which it was."""

    BAD_CREDENTIALS = "bad credentials"
    THROTTLED = "too many failed attempts"
    NOT_ACTIVE = "account not active"


@dataclass(frozen=True)
class Login:
    """The account the session acts as; and, when a legal entity's operator logged in for it (SASL
    authorisation identity, RFC 4616 §2), the operator, who authenticated and is the one acting."""

    account: Account | None
    refusal: LoginRefusal | None = None
    operator: Account | None = None


@dataclass(frozen=True)
class Usage:
    used: int
    limit: int

    @property
    def percent(self) -> int:
        return self.used * 100 // self.limit if self.limit else 100

    @property
    def over(self) -> bool:
        return self.used >= self.limit


def _account(row: Row[tuple[object, ...]]) -> Account:
    r = row._mapping
    return Account(
        address=r["address"],
        kind=AccountKind(r["kind"]),
        mailbox_type=MailboxType(r["mailbox_type"]),
        state=AccountState(r["state"]),
        display_name=r["display_name"],
        quota=r["quota"],
        first_name=r["first_name"],
        last_name=r["last_name"],
        national_id=r["national_id"],
        mersis=r["mersis"],
        legal_name=r["legal_name"],
        cert_pem=r["cert_pem"],
        created_at=utc(r["created_at"]) if r["created_at"] else None,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _address_or_none(text: str) -> str | None:
    try:
        return str(addresses.parse(text))
    except addresses.AddressError:
        return None


def _identity_number(check: Callable[[str], str], value: str | None) -> str | None:
    """`value` checked by `check` (T.C. kimlik no or MERSİS number), as an AccountError if wrong."""
    if value is None:
        return None
    try:
        return check(value)
    except IdentityNumberError as e:
        raise AccountError(str(e)) from None


def _check_cert(cert_pem: str | None) -> None:
    if cert_pem is None:
        return
    try:
        x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as e:
        raise AccountError(f"the certificate is not a PEM X.509 certificate: {e}") from None


# Built once: read for every MAIL, RCPT, login and delivery.
_BY_ADDRESS = select(accounts).where(accounts.c.address == bindparam("address"))
_WARNING_STATE = select(accounts.c.address, accounts.c.quota, accounts.c.quota_warned).where(
    accounts.c.address == bindparam("address")
)


class AccountStore:
    def __init__(
        self,
        engine: AsyncEngine,
        mail_root: Path,
        *,
        domain: str,
        default_quota: int,
        limiter: FailureLimiter | None = None,
        passwords: CheckedPasswords | None = None,
    ) -> None:
        self.engine = engine
        self.db = runner(engine)
        self.mail_root = mail_root
        self.domain = domain
        self.default_quota = default_quota
        self.limiter = limiter or FailureLimiter()
        self.passwords = passwords or CheckedPasswords(lambda: 0)
        self.sizes = SizeCache()

    # -- creating -------------------------------------------------------------------------------

    @staticmethod
    def _insert(conn: Connection, address: str, values: dict[str, object]) -> bool:
        """Insert unless the address exists (in any state); False when it does."""
        taken = conn.execute(select(accounts.c.address).where(accounts.c.address == address))
        if taken.first() is not None:
            return False
        conn.execute(insert(accounts).values(address=address, **values))
        return True

    async def add_person(
        self,
        first_name: str,
        last_name: str,
        *,
        password: str,
        mailbox_type: MailboxType = MailboxType.SENDER_RECIPIENT,
        state: AccountState = AccountState.PENDING,
        quota: int | None = None,
        national_id: str | None = None,
        cert_pem: str | None = None,
        address: str | None = None,
    ) -> Account:
        """A natural person's account at `ad.soyad`, or the first free `ad.soyad.N`.

        `address` asks for a given address instead (it must be free and on our domain)."""
        _identity_number(check_national_id, national_id)
        _check_cert(cert_pem)
        values: dict[str, object] = {
            "kind": AccountKind.PERSON.value,
            "mailbox_type": mailbox_type.value,
            "state": state.value,
            "display_name": f"{first_name} {last_name}",
            "first_name": first_name,
            "last_name": last_name,
            "national_id": national_id,
            "password_hash": hash_password(password),
            "cert_pem": cert_pem,
            "quota": self._quota(quota),
            "quota_warned": 0,
            "created_at": _now(),
            "state_changed_at": _now(),
        }
        candidates: Iterable[str]
        if address is not None:
            candidates = [self._own(address)]
        else:
            try:
                candidates = (
                    f"{local}@{self.domain}" for local in addresses.person_locals(first_name, last_name)
                )
            except addresses.AddressError as e:
                raise AccountError(str(e)) from None
        return await self._assign(candidates, values, single=address is not None)

    async def add_entity(
        self,
        *,
        legal_name: str,
        mersis: str | None = None,
        use_mersis_address: bool = False,
        free: str | None = None,
        mailbox_type: MailboxType = MailboxType.SENDER_RECIPIENT,
        state: AccountState = AccountState.PENDING,
        quota: int | None = None,
    ) -> Account:
        """A legal entity's account named by its legal name (or MERSİS number), `.free` optional.

        An entity has no password: its operators log in as themselves and send as it."""
        _identity_number(check_mersis, mersis)
        try:
            local = addresses.entity_local(
                mersis=mersis if use_mersis_address else None,
                legal_name=None if use_mersis_address else legal_name,
                free=free,
            )
        except addresses.AddressError as e:
            raise AccountError(str(e)) from None
        values: dict[str, object] = {
            "kind": AccountKind.ENTITY.value,
            "mailbox_type": mailbox_type.value,
            "state": state.value,
            "display_name": legal_name,
            "legal_name": legal_name,
            "mersis": mersis,
            "password_hash": None,
            "quota": self._quota(quota),
            "quota_warned": 0,
            "created_at": _now(),
            "state_changed_at": _now(),
        }
        return await self._assign([f"{local}@{self.domain}"], values, single=True)

    def _quota(self, quota: int | None) -> int:
        if quota is None:
            return self.default_quota
        if quota <= 0:
            raise AccountError(f"quota must be a positive number of bytes, got {quota}")
        return quota

    def _own(self, address: str) -> str:
        try:
            addr = addresses.parse(address)
        except addresses.AddressError as e:
            raise AccountError(str(e)) from None
        if addr.domain != self.domain:
            raise AccountError(f"{addr} is not on this provider's domain {self.domain}")
        return str(addr)

    async def _assign(self, candidates: Iterable[str], values: dict[str, object], *, single: bool) -> Account:
        try:

            def assign(conn: Connection) -> Row[Any]:
                address = self._first_free(conn, candidates, values, single=single)
                return conn.execute(select(accounts).where(accounts.c.address == address)).one()

            row = await self.db.write(assign)
        except IntegrityError:
            raise AccountError(
                "the address was taken at the same moment by another request; try again"
            ) from None
        self.maildir(row.address).create(INBOX)
        return _account(row)

    def _first_free(
        self, conn: Connection, candidates: Iterable[str], values: dict[str, object], *, single: bool
    ) -> str:
        for address in candidates:
            # A taken address, closed ones included, is never handed out again (KEP.md).
            if self._insert(conn, address, values):
                return address
            if single:
                raise AccountError(f"{address} is already assigned (closed addresses are never reused)")
        raise AccountError("no address could be assigned")

    # -- reading --------------------------------------------------------------------------------

    async def get(self, address: str) -> Account | None:
        try:
            addr = str(addresses.parse(address))
        except addresses.AddressError:
            return None
        row = await self.db.read(lambda conn: conn.execute(_BY_ADDRESS, {"address": addr}).first())
        return _account(row) if row else None

    async def require(self, address: str) -> Account:
        account = await self.get(address)
        if account is None:
            raise AccountError(f"no account {address}")
        return account

    async def all(self) -> list[Account]:
        rows = await self.db.read(
            lambda conn: conn.execute(select(accounts).order_by(accounts.c.address)).all()
        )
        return [_account(r) for r in rows]

    async def operators_of(self, entity: str) -> list[str]:
        query = (
            select(operators.c.operator).where(operators.c.entity == entity).order_by(operators.c.operator)
        )
        return list(await self.db.read(lambda conn: conn.execute(query).scalars().all()))

    async def entities_of(self, operator: str) -> list[str]:
        query = (
            select(operators.c.entity).where(operators.c.operator == operator).order_by(operators.c.entity)
        )
        return list(await self.db.read(lambda conn: conn.execute(query).scalars().all()))

    # -- changing -------------------------------------------------------------------------------

    async def _update(self, address: str, **values: object) -> None:
        statement = update(accounts).where(accounts.c.address == address).values(**values)
        await self.db.write(lambda conn: conn.execute(statement))

    async def transition(self, address: str, command: str) -> Account:
        """activate, block or close, from the states KEP.md allows."""
        allowed, target = _TRANSITIONS[command]
        account = await self.require(address)
        if account.state is target:
            raise AccountError(f"{account.address} is already {target.value}")
        if account.state not in allowed:
            hint = (
                "; only its holder can reopen it (accounts reopen)"
                if account.state is AccountState.CLOSED
                else ""
            )
            raise AccountError(f"cannot {command} {account.address}: it is {account.state.value}{hint}")
        await self._update(account.address, state=target.value, state_changed_at=_now())
        return await self.require(account.address)

    async def reopen(
        self, address: str, *, national_id: str | None = None, mersis: str | None = None
    ) -> Account:
        """Reopen a closed address for its former holder, proven by the identity it was opened with."""
        account = await self.require(address)
        if account.state is not AccountState.CLOSED:
            raise AccountError(f"{account.address} is {account.state.value}, not closed")
        person = account.kind is AccountKind.PERSON
        held = account.national_id if person else account.mersis
        given = (
            _identity_number(check_national_id, national_id)
            if person
            else _identity_number(check_mersis, mersis)
        )
        what = "T.C. kimlik no" if person else "MERSİS number"
        if held is None:
            raise AccountError(f"{account.address} has no {what} on record, so its holder cannot be proven")
        if given != held:
            raise AccountError(f"the {what} given is not that of {account.address}'s holder")
        await self._update(account.address, state=AccountState.ACTIVE.value, state_changed_at=_now())
        return await self.require(account.address)

    async def set_quota(self, address: str, quota: int) -> Account:
        account = await self.require(address)
        await self._update(account.address, quota=self._quota(quota))
        return await self.require(account.address)

    async def set_password(self, address: str, password: str) -> None:
        account = await self.require(address)
        if account.kind is AccountKind.ENTITY:
            raise AccountError(f"{account.address} is a legal entity: its operators log in as themselves")
        if not password:
            raise AccountError("the password must not be empty")
        await self._update(account.address, password_hash=hash_password(password))

    async def add_operator(self, entity: str, operator: str) -> None:
        ent, op = await self.require(entity), await self.require(operator)
        if ent.kind is not AccountKind.ENTITY:
            raise AccountError(f"{ent.address} is not a legal entity")
        if op.kind is not AccountKind.PERSON:
            raise AccountError(f"{op.address} is not a natural person; operators log in as themselves")
        if op.address in await self.operators_of(ent.address):
            raise AccountError(f"{op.address} is already an operator of {ent.address}")
        statement = insert(operators).values(entity=ent.address, operator=op.address, added_at=_now())
        await self.db.write(lambda conn: conn.execute(statement))

    async def remove_operator(self, entity: str, operator: str) -> None:
        ent, op = await self.require(entity), await self.require(operator)
        statement = delete(operators).where(
            operators.c.entity == ent.address, operators.c.operator == op.address
        )
        removed = await self.db.write(lambda conn: conn.execute(statement).rowcount)
        if removed == 0:
            raise AccountError(f"{op.address} is not an operator of {ent.address}")

    # -- logging in -----------------------------------------------------------------------------

    async def login(self, username: str, password: str, peer_ip: str, *, authzid: str = "") -> Login:
        """Check a login, after the wait that earlier failures ask for (kepmta.ratelimit): per
        account and client address, never a lock-out of the holder's other addresses.

        `authzid` (RFC 4616 §2) asks to act as a legal entity `username` is an authorised operator
        of; one that is empty or names `username` itself is a plain login. Asking for any other
        identity is a failure like a wrong password, to the client and to the throttle alike, so
        that it tells nobody which entities exist or who operates them."""
        try:
            addr = str(addresses.parse(username))
        except addresses.AddressError:
            addr = ""  # no account has such a name: one key for all of them, whatever their size
        if not await self.limiter.wait(addr, peer_ip):
            return Login(None, LoginRefusal.THROTTLED)
        row = await self.db.read(lambda conn: conn.execute(_BY_ADDRESS, {"address": addr}).first())
        stored = row.password_hash if row is not None else None
        # Same cost whether or not the address exists, so timing does not tell which do.
        ok = await self.passwords.check(password, stored or _unknown_user_hash())
        # An authorisation identity equal to the login name (RFC 4616 §2) is a plain login.
        wanted = _address_or_none(authzid) if authzid else addr
        entity = None
        if ok and row is not None and wanted != addr:
            entity = await self._operated_by(addr, wanted)
            ok = entity is not None
        if row is None or stored is None or not ok:
            self.limiter.failed(addr, peer_ip)
            return Login(None, LoginRefusal.BAD_CREDENTIALS)
        self.limiter.succeeded(addr, peer_ip)
        account = _account(row)
        if not account.active or (entity is not None and not entity.active):
            return Login(None, LoginRefusal.NOT_ACTIVE)
        return Login(account) if entity is None else Login(entity, operator=account)

    async def _operated_by(self, operator: str, entity: str | None) -> Account | None:
        """The legal entity `entity` if `operator` is one of its authorised operators (KEP.md:
        legal entities act through their operators), else None."""
        account = await self.get(entity) if entity else None
        if account is None or account.kind is not AccountKind.ENTITY:
            return None
        return account if operator in await self.operators_of(account.address) else None

    async def authenticate(self, username: str, password: str, peer_ip: str = "") -> Account | None:
        return (await self.login(username, password, peer_ip)).account

    # -- storage --------------------------------------------------------------------------------

    async def usage(self, address: str) -> Usage:
        return await self.usage_of(await self.require(address))

    async def usage_of(self, account: Account) -> Usage:
        """Usage against the quota of `account` as already read, without reading it again."""
        used = await self.maildir(account.address).used()
        return Usage(used, account.quota)

    async def warning_state(self, address: str) -> tuple[Usage, int]:
        """Usage and the last quota warning sent (in percent), from one read of the account."""
        addr = str(addresses.parse(address))
        row = await self.db.read(lambda conn: conn.execute(_WARNING_STATE, {"address": addr}).first())
        if row is None:
            raise AccountError(f"no account {address}")
        used = await self.maildir(row.address).used()
        return Usage(used, row.quota), int(row.quota_warned or 0)

    async def set_quota_warned(self, address: str, percent: int) -> None:
        await self._update(address, quota_warned=percent)

    def maildir(self, address: str) -> Maildir:
        addr = addresses.parse(address)
        return Maildir(self.mail_root / addr.domain / addr.local, self.sizes)
