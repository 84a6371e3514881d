"""MAIL FROM: who may submit, and as whom (KEP.md "account types", "account states", operators)."""

from __future__ import annotations

from dataclasses import dataclass

from kepmta import addresses
from kepmta.accounts import Account, AccountKind, AccountStore
from kepmta.evidence.model import Reason
from kepmta.policy.refusal import refuse


@dataclass(frozen=True)
class Sender:
    """The account a message is sent as, and the person who sent it for a legal entity."""

    account: Account
    operator: Account | None = None

    @property
    def signer(self) -> Account:
        """Whose qualified certificate must sign: the person at the keyboard."""
        return self.operator or self.account


def check_can_submit(account: Account, as_whom: str | None = None) -> None:
    who = as_whom or account.address
    if not account.active:
        raise refuse(
            550,
            "5.7.1",
            Reason.RA05,
            f"the KEP account {who} is {account.state.value} and cannot send",
            f"{who} KEP hesabı {_state_tr(account)} durumda, ileti gönderemez",
        )
    if not account.can_send:
        raise refuse(
            550,
            "5.7.1",
            Reason.RA05,
            f"{who} is a recipient-only KEP account and cannot send",
            f"{who} yalnızca alıcı türünde bir KEP hesabıdır, ileti gönderemez",
        )


def _state_tr(account: Account) -> str:
    return {"pending": "aktivasyon bekleyen", "blocked": "askıya alınmış", "closed": "kapatılmış"}.get(
        account.state.value, account.state.value
    )


async def resolve_sender(store: AccountStore, login: Account, mail_from: str) -> Sender:
    """The sender of MAIL FROM for the logged-in `login`: itself, or an entity it operates for."""
    try:
        claimed = str(addresses.parse(mail_from))
    except addresses.AddressError:
        # RFC 3463 X.1.7: bad sender mailbox syntax
        raise refuse(
            553,
            "5.1.7",
            Reason.RA05,
            f"sender address {mail_from!r} is not valid",
            f"gönderen adresi {mail_from!r} geçerli değil",
        ) from None
    check_can_submit(login)
    if claimed == login.address:
        return Sender(login)
    entity = await store.get(claimed)
    if entity is not None and entity.kind is AccountKind.ENTITY:
        if login.address in await store.operators_of(entity.address):
            check_can_submit(entity)
            return Sender(entity, operator=login)
        raise refuse(
            553,
            "5.7.1",
            Reason.RA05,
            f"{login.address} is not an authorised operator of {claimed}",
            f"{login.address}, {claimed} adına işlem yetkilisi değildir",
        )
    # RFC 6409 §6.1: the submission server may refuse a MAIL FROM the user is not entitled to
    raise refuse(
        553,
        "5.7.1",
        Reason.RA05,
        f"you are logged in as {login.address} and may not send as {claimed}",
        f"{login.address} olarak oturum açtınız; {claimed} adına gönderemezsiniz",
    )
