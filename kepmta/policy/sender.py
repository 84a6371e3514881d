"""MAIL FROM: a KEP sender sends only as the account it authenticated as."""

from __future__ import annotations

from kepmta import addresses
from kepmta.accounts import Account
from kepmta.evidence.model import Reason
from kepmta.policy.refusal import refuse


def check_sender(account: Account, mail_from: str) -> None:
    try:
        claimed = str(addresses.parse(mail_from))
    except addresses.AddressError:
        # RFC 5321 §4.5.3.1 / RFC 3463 X.1.7: bad sender mailbox syntax
        raise refuse(553, "5.1.7", Reason.RA05, f"sender address {mail_from!r} is not valid") from None
    if claimed != account.address:
        # RFC 6409 §6.1: the submission server may refuse a MAIL FROM the user is not entitled to
        raise refuse(
            553,
            "5.7.1",
            Reason.RA05,
            f"you are logged in as {account.address} and may not send as {claimed}",
        )
