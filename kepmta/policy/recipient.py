"""RCPT TO: KEP mail goes only to KEP addresses, here to active accounts of this provider."""

from __future__ import annotations

from kepmta import addresses
from kepmta.accounts import AccountStore
from kepmta.evidence.model import Reason
from kepmta.policy.refusal import refuse


async def check_recipient(store: AccountStore, rcpt: str, local_domains: frozenset[str]) -> str:
    """The normalised recipient address, or PolicyError saying why it cannot receive KEP mail."""
    try:
        addr = addresses.parse(rcpt)
    except addresses.AddressError:
        raise refuse(501, "5.1.3", Reason.RA05, f"recipient address {rcpt!r} is not valid") from None
    if addr.domain not in local_domains:
        raise refuse(
            550,
            "5.7.1",
            Reason.RA05,
            f"{addr} is not a KEP address: registered mail goes only to KEP providers",
        )
    account = await store.get(str(addr))
    if account is None:
        raise refuse(550, "5.1.1", Reason.RA05, f"{addr} has no KEP mailbox at this provider")
    if not account.active:
        raise refuse(550, "5.2.1", Reason.RA05, f"the KEP mailbox {addr} is {account.state.value}")
    return str(addr)
