"""The REM receipt: the provider-signed message that hands the sender one evidence.

EN 319 532-3 (condensed in EVIDENCE.md): shaped like the dispatch without the original: a
bilingual introduction (text and HTML), the evidence XML section and the signed `<EventName>.p7m`
(CMS SignedData, DER) the sender's client finds as an attachment, the REM-* header fields, and
In-Reply-To the dispatch's Message-ID (the provider message id).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from kepmta.evidence.model import Event
from kepmta.pki import KeyPair
from kepmta.rem.mime import (
    address_header,
    bilingual,
    detached_signer,
    evidence_parts,
    introduction,
    multipart,
    new_boundary,
    plain_header,
    rem_fields,
    rfc5322_date,
    text_header,
    write_multipart_signed,
)

__all__ = ["ReceiptInfo", "build_receipt"]

# EN 319 522-2 event names in words; the reason sentence comes from the evidence itself.
_EVENTS: dict[str, tuple[str, str]] = {
    "SubmissionAcceptance": ("iletiniz KEP sistemine kabul edildi", "your message was accepted for delivery"),
    "SubmissionRejection": ("iletiniz KEP sistemince reddedildi", "your message was rejected"),
    "RelayAcceptance": (
        "iletiniz alıcının KEP hizmet sağlayıcısınca kabul edildi",
        "your message was accepted by the recipient's provider",
    ),
    "RelayRejection": (
        "iletiniz alıcının KEP hizmet sağlayıcısınca reddedildi",
        "your message was rejected by the recipient's provider",
    ),
    "RelayFailure": (
        "iletiniz alıcının KEP hizmet sağlayıcısına iletilemedi",
        "your message could not be relayed to the recipient's provider",
    ),
    "ContentConsignment": (
        "iletiniz alıcının posta kutusuna teslim edildi",
        "your message was delivered to the recipient's mailbox",
    ),
    "ContentConsignmentFailure": (
        "iletiniz alıcının posta kutusuna teslim edilemedi",
        "your message could not be delivered to the recipient's mailbox",
    ),
    "ContentHandover": ("iletiniz alıcı tarafından açıldı", "your message was opened by the recipient"),
}


# The evidence codes Turkish KEP users know (PTT), by event name.
_PTT_CODES = {event.value: str(event.ptt_code) for event in Event}


@dataclass(frozen=True)
class ReceiptInfo:
    event_name: str  # "SubmissionAcceptance" …
    evidence_id: str
    event_uri: str
    reason_uri: str
    reason_code: str  # "RA01" …
    details: str  # the reason as a sentence
    provider_message_id: str  # without <>
    ua_message_id: str | None  # with <>
    sender: str
    recipients: tuple[str, ...]  # those the event refers to
    subject: str  # the original's subject, decoded
    event_time: datetime
    service_address: str  # rem-service@<domain>
    policy_ids: tuple[str, ...]
    digest_b64: str | None  # REM-DigestValue of the original, when known
    message_type: str = "standart"  # X-TR-REM-iletiTip: standart | eYazisma | eTebligat


def build_receipt(
    info: ReceiptInfo,
    evidence_xml: bytes,
    evidence_der: bytes,
    signer: KeyPair,
    chain: Sequence[x509.Certificate],
) -> bytes:
    """The signed receipt carrying `evidence_der` as `<event_name>.p7m`, as message bytes."""
    domain = info.service_address.rpartition("@")[2]
    fields = [
        address_header("From", [("", info.service_address)]),
        address_header("To", [("", info.sender)]),
        # "REM <EventName>: <original subject>" (EVIDENCE.md); no dangling space for an empty subject.
        text_header("Subject", f"REM {info.event_name}: {info.subject}".rstrip()),
        plain_header("Date", rfc5322_date(info.event_time)),
        # Derived from the evidence id, so a receipt rebuilt for the same evidence is recognisable
        # as a duplicate.
        plain_header("Message-ID", f"<receipt.{info.evidence_id.replace('@', '.')}@{domain}>"),
        plain_header("In-Reply-To", f"<{info.provider_message_id}>"),
        plain_header("References", f"<{info.provider_message_id}>"),
        # RFC 3834 §5: keeps vacation responders and the like from answering the receipt.
        plain_header("Auto-Submitted", "auto-generated"),
        *rem_fields(
            "receipt",
            policy_ids=info.policy_ids,
            digest_b64=info.digest_b64,
            ua_message_id=info.ua_message_id,
            event_uri=info.event_uri,
            evidence_id=info.evidence_id,
            reason_uri=info.reason_uri,
            sender=info.sender,
        ),
        # Turkish KEP carries these on every REM message, so a receipt is matched to its message
        # by the same id the dispatch shows.
        plain_header("X-TR-REM-iletiTip", info.message_type),
        plain_header("X-TR-REM-iletiID", info.provider_message_id),
    ]
    # Everything below is base64 or quoted-printable, where "=_" cannot occur.
    outer, mixed, alternative = (new_boundary(kind, lambda _: False) for kind in ("s", "m", "a"))
    plain, rich = _introduction_text(info)
    body = multipart(
        "multipart/mixed",
        mixed,
        [
            introduction(alternative, plain, rich),
            *evidence_parts(info.event_name, evidence_xml, evidence_der),
        ],
    )
    out = io.BytesIO()
    write_multipart_signed(out, fields, outer, body, detached_signer(signer, chain))
    return out.getvalue()


def _introduction_text(info: ReceiptInfo) -> tuple[str, str]:
    when = info.event_time.astimezone(UTC)
    tr_event, en_event = _EVENTS.get(info.event_name, (info.event_name, info.event_name))
    recipients = ", ".join(info.recipients) or "-"
    name = info.event_name
    code = _PTT_CODES.get(name, "-")
    turkish = [
        f"KEP kanıtı: {tr_event}.",
        f"Olay: {name} (KEP kanıt kodu {code})",
        f"Zaman: {when.strftime('%d.%m.%Y %H:%M:%S UTC')}",
        f"Alıcı: {recipients}",
        f"Gerekçe: {info.details} ({info.reason_code})",
        f"Konu: {info.subject}",
        f"İleti kimliği: <{info.provider_message_id}>",
        f"İmzalı ve zaman damgalı kanıt ekteki {name}.p7m dosyasındadır ({name}.xml okunabilir kopyasıdır).",
    ]
    english = [
        f"KEP evidence: {en_event}.",
        f"Event: {name} (KEP evidence code {code})",
        f"Time: {when.strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"Recipient: {recipients}",
        f"Reason: {info.details} ({info.reason_code})",
        f"Subject: {info.subject}",
        f"Message id: <{info.provider_message_id}>",
        f"The signed, time-stamped evidence is the attached {name}.p7m ({name}.xml is a readable copy).",
    ]
    return bilingual(turkish, english)
