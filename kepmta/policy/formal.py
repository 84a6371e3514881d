"""Formal checks of a submitted message (RFC 6109 §3.1.1, as the Italian PEC does): the From
header is the envelope sender, there is no Bcc header, and every envelope recipient is in To or Cc."""

from __future__ import annotations

from collections.abc import Sequence

from kepmta.evidence.model import Reason
from kepmta.headers import AddressHeaders
from kepmta.message.addresses import addr_specs
from kepmta.policy.refusal import refuse


def _addresses(values: Sequence[str]) -> set[str]:
    return {addr.lower() for addr in addr_specs(values)}


def check_formal(head: AddressHeaders, envelope_sender: str, recipients: Sequence[str]) -> None:
    senders = _addresses(head.from_)
    if senders != {envelope_sender.lower()}:
        shown = ", ".join(sorted(senders)) or "nothing"
        raise refuse(
            550,
            "5.7.1",
            Reason.RA02,
            f"the From header ({shown}) must be the sender {envelope_sender}",
            f"From başlığı ({shown}) gönderen {envelope_sender} olmalıdır",
        )
    if head.bcc_present:
        raise refuse(
            550,
            "5.7.1",
            Reason.RA02,
            "a KEP message may not have a Bcc header: every recipient is named openly",
            "KEP iletisinde Bcc (gizli alıcı) başlığı olamaz: her alıcı açıkça yazılmalıdır",
        )
    named = _addresses(head.to) | _addresses(head.cc)
    missing = [r for r in recipients if r.lower() not in named]
    if missing:
        raise refuse(
            550,
            "5.7.1",
            Reason.RA02,
            f"recipient(s) {', '.join(missing)} must also appear in the To or Cc header",
            f"{', '.join(missing)} alıcısı To veya Cc başlığında da yer almalıdır",
        )
