"""Mailbox quota: over it an account cannot send, but keeps receiving (KEP.md "mailbox quota")."""

from __future__ import annotations

from kepmta.accounts import Usage
from kepmta.evidence.model import Reason
from kepmta.policy.refusal import refuse


def check_sender_quota(address: str, usage: Usage) -> None:
    if usage.over:
        # RFC 3463 X.2.2: mailbox full
        raise refuse(
            552,
            "5.2.2",
            Reason.RA05,
            f"the mailbox {address} is over its quota ({usage.used} of {usage.limit} bytes); "
            "delete messages to send again",
            f"{address} posta kutusu kotasını aştı ({usage.used} / {usage.limit} bayt); "
            "göndermek için ileti silin",
        )
