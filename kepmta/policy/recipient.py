"""RCPT TO: KEP mail goes only to KEP addresses: active accounts here, or a peer provider's domain."""

from __future__ import annotations

from dataclasses import dataclass

from kepmta import addresses
from kepmta.accounts import AccountStore
from kepmta.evidence.model import Reason
from kepmta.policy.refusal import refuse


@dataclass(frozen=True)
class Recipient:
    address: str
    local: bool  # False: at a peer provider of the registry


async def check_recipient(
    store: AccountStore, rcpt: str, local_domains: frozenset[str], peer_domains: frozenset[str]
) -> Recipient:
    if rcpt.strip().strip("<>").lower() == "postmaster":
        # RFC 5321 §4.5.1 asks a relay to take the bare "postmaster"; a KEP submission server
        # sends registered mail only to KEP addresses, and this one is none.
        raise refuse(
            550,
            "5.1.1",
            Reason.RA05,
            "postmaster is not a KEP address: registered mail goes only to KEP addresses",
            "postmaster bir KEP adresi değil: KEP iletisi yalnızca KEP adreslerine gönderilebilir",
        )
    try:
        addr = addresses.parse(rcpt)
    except addresses.AddressError:
        # RFC 3463 X.1.3: bad destination mailbox address syntax. The address is shown escaped
        # (repr), so control characters reach neither the reply nor the evidence.
        raise refuse(
            501,
            "5.1.3",
            Reason.RA05,
            f"recipient address {rcpt!r} is not valid",
            f"alıcı adresi {rcpt!r} geçerli değil",
        ) from None
    if addr.domain in peer_domains:
        return Recipient(str(addr), local=False)
    if addr.domain not in local_domains:
        raise refuse(
            550,
            "5.7.1",
            Reason.RA05,
            f"{addr} is not a KEP address: registered mail goes only to KEP providers",
            f"{addr} bir KEP adresi değil: KEP iletisi yalnızca KEP adreslerine gönderilebilir",
        )
    account = await store.get(str(addr))
    if account is None:
        raise refuse(
            550,
            "5.1.1",
            Reason.RA05,
            f"{addr} has no KEP mailbox at this provider",
            f"{addr} adresinde bu hizmet sağlayıcıda bir KEP hesabı yok",
        )
    if not account.active:
        raise refuse(
            550,
            "5.2.1",
            Reason.RA05,
            f"the KEP mailbox {addr} is {account.state.value} and cannot receive",
            f"{addr} KEP hesabı ileti alamıyor ({account.state.value})",
        )
    return Recipient(str(addr), local=True)
