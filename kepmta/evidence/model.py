"""The evidence model: events, reasons and the evidence record (EN 319 522-2), as value objects.

Everything here is immutable and validated on construction, so an `Evidence` that exists can always
be serialised (EN 319 522-3 XML) and signed without further checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

EVENT_URI_BASE = "http://uri.etsi.org/19522/Event/"
REASON_URI_BASE = "http://uri.etsi.org/19522/EventReason/"
MESSAGE_TYPES = ("standart", "eYazisma", "eTebligat")


class Event(Enum):
    """ERDS events (EN 319 522-2 §8.3.2) that a KEP provider attests."""

    SUBMISSION_ACCEPTANCE = "SubmissionAcceptance"
    SUBMISSION_REJECTION = "SubmissionRejection"
    RELAY_ACCEPTANCE = "RelayAcceptance"
    RELAY_REJECTION = "RelayRejection"
    RELAY_FAILURE = "RelayFailure"
    CONTENT_CONSIGNMENT = "ContentConsignment"
    CONTENT_CONSIGNMENT_FAILURE = "ContentConsignmentFailure"
    CONTENT_HANDOVER = "ContentHandover"

    @property
    def uri(self) -> str:
        """The ERDSEventId (EN 319 522-3, component G03)."""
        return EVENT_URI_BASE + self.value

    @property
    def ptt_code(self) -> int:
        """The evidence code Turkish KEP providers (PTT) show for this event."""
        return _PTT_CODES[self]

    @property
    def per_recipient(self) -> bool:
        """Whether one evidence is issued per recipient (EN 319 522-2 component I09).

        Submission events cover the whole message; relay, consignment and handover happen to each
        recipient separately, so their evidence names the one recipient it refers to.
        """
        return self not in (Event.SUBMISSION_ACCEPTANCE, Event.SUBMISSION_REJECTION)

    @classmethod
    def from_uri(cls, uri: str) -> Event:
        if uri.startswith(EVENT_URI_BASE):
            try:
                return cls(uri[len(EVENT_URI_BASE) :])
            except ValueError:
                pass
        raise ValueError(f"unknown ERDS event URI {uri!r}")


_PTT_CODES = {
    Event.SUBMISSION_ACCEPTANCE: 10,
    Event.SUBMISSION_REJECTION: 11,
    Event.RELAY_ACCEPTANCE: 20,
    Event.RELAY_REJECTION: 21,
    Event.RELAY_FAILURE: 31,
    Event.CONTENT_CONSIGNMENT: 40,
    Event.CONTENT_CONSIGNMENT_FAILURE: 41,
    Event.CONTENT_HANDOVER: 60,
}


class Reason(Enum):
    """Event reasons; the value is the code carried in the first EventReason Details."""

    RA01 = "RA01"
    RA02 = "RA02"
    RA03 = "RA03"
    RA04 = "RA04"
    RA05 = "RA05"
    RB01 = "RB01"
    RB02 = "RB02"
    RB03 = "RB03"
    RB04 = "RB04"
    RB05 = "RB05"
    RB06 = "RB06"
    RB07 = "RB07"
    RB08 = "RB08"
    RB09 = "RB09"
    RB10 = "RB10"
    RD01 = "RD01"
    RD02 = "RD02"
    RD03 = "RD03"
    RD04 = "RD04"
    RD05 = "RD05"
    RD06 = "RD06"
    RE01 = "RE01"

    @property
    def event(self) -> Event:
        return _REASONS[self][0]

    @property
    def name_id(self) -> str:
        """The reason name used in the EventReason Code URI."""
        return _REASONS[self][1]

    @property
    def uri(self) -> str:
        """The EventReason Code (EN 319 522-3, component G04)."""
        return REASON_URI_BASE + self.name_id

    @property
    def label(self) -> str:
        """A short English sentence for people."""
        return _REASONS[self][2]


_A, _R, _F = Event.SUBMISSION_ACCEPTANCE, Event.RELAY_REJECTION, Event.RELAY_FAILURE
_REASONS: dict[Reason, tuple[Event, str, str]] = {
    Reason.RA01: (_A, "MessageAccepted", "The message was accepted for delivery."),
    Reason.RA02: (Event.SUBMISSION_REJECTION, "InvalidMessageFormat", "The message format is invalid."),
    Reason.RA03: (Event.SUBMISSION_REJECTION, "MalwareFound", "Malware was found in the message."),
    Reason.RA04: (
        Event.SUBMISSION_REJECTION,
        "SenderCertificateInvalid",
        "The sender's certificate has expired or been revoked.",
    ),
    Reason.RA05: (
        Event.SUBMISSION_REJECTION,
        "PolicyViolation",
        "The message breaks the provider's policy (size, type, recipient or quota).",
    ),
    Reason.RB01: (
        Event.RELAY_ACCEPTANCE,
        "MessageRelayed",
        "The recipient's provider accepted the relayed message.",
    ),
    Reason.RB02: (_R, "InvalidMessageFormat", "The recipient's provider found the message format invalid."),
    Reason.RB03: (_R, "MalwareFound", "The recipient's provider found malware in the message."),
    Reason.RB04: (_R, "InvalidSignature", "The recipient's provider could not verify the signature."),
    Reason.RB05: (_R, "InvalidCertificate", "The recipient's provider did not accept the certificate."),
    Reason.RB06: (_R, "PolicyViolation", "The message breaks the recipient provider's policy."),
    Reason.RB07: (_F, "TechnicalMalfunction", "A technical malfunction prevented relaying the message."),
    Reason.RB08: (_F, "RecipientProviderNotIdentified", "The recipient's provider could not be identified."),
    Reason.RB09: (_F, "R_ERDS_Unreachable", "The recipient's provider could not be reached."),
    Reason.RB10: (_F, "UnknownRecipient", "The recipient address is unknown."),
    Reason.RD01: (
        Event.CONTENT_CONSIGNMENT,
        "MessageConsignedToRecipient",
        "The message was placed in the recipient's mailbox.",
    ),
    Reason.RD02: (
        Event.CONTENT_CONSIGNMENT,
        "MessageConsignedToDelegate",
        "The message was placed in the mailbox of the recipient's delegate.",
    ),
    Reason.RD03: (
        Event.CONTENT_CONSIGNMENT_FAILURE,
        "ConsignmentTimeLimitExceeded",
        "No consignment information arrived within the time limit.",
    ),
    Reason.RD04: (
        Event.CONTENT_CONSIGNMENT_FAILURE,
        "MailboxQuotaExceeded",
        "The recipient's mailbox is full.",
    ),
    Reason.RD05: (
        Event.CONTENT_CONSIGNMENT_FAILURE,
        "TechnicalMalfunction",
        "A technical malfunction prevented placing the message in the mailbox.",
    ),
    Reason.RD06: (
        Event.CONTENT_CONSIGNMENT_FAILURE,
        "MessageTypeNotAccepted",
        "The recipient's mailbox does not accept this type of message.",
    ),
    Reason.RE01: (Event.CONTENT_HANDOVER, "MessageOpenedByRecipient", "The recipient opened the message."),
}
del _A, _R, _F


# What _check_text refuses, as one character class: Unicode's Cc (C0, DEL, C1) and Cs (surrogates)
# code points, which are fixed ranges, and the non-characters U+FFFE and U+FFFF (outside XML 1.0
# §2.2 Char). A regular expression scans in C; a per-character unicodedata call costs microseconds.
_FORBIDDEN_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
# What _check_token refuses besides: `\s` on a str pattern is exactly str.isspace() (CPython's re
# and str both use Py_UNICODE_ISSPACE), plus the angle brackets that delimit a Message-ID.
_TOKEN_BREAK = re.compile(r"[\s<>]")


def _check_text(field: str, value: str, *, allow_empty: bool = False) -> None:
    """Text must be storable in XML 1.0 and survive parsing unchanged.

    Control characters are refused outright: XML 1.0 forbids most of them, and a parser normalises
    CR and CRLF to LF (XML 1.0 §2.11), which would change what was signed.
    """
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, not {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{field} must not be empty")
    bad = _FORBIDDEN_CHAR.search(value)
    if bad is not None:
        raise ValueError(f"{field} contains the control or non-character U+{ord(bad.group()):04X}")


def _check_token(field: str, value: str) -> None:
    """An identifier: non-empty, no whitespace, no angle brackets (Message-ID form without <>)."""
    _check_text(field, value)
    if _TOKEN_BREAK.search(value) is not None:
        raise ValueError(f"{field} must not contain whitespace or angle brackets: {value!r}")


def _check_utc(field: str, value: datetime) -> datetime:
    """Aware UTC, kept to whole seconds: EN 319 522-3 times are written as YYYY-MM-DDTHH:MM:SSZ."""
    if not isinstance(value, datetime):
        raise ValueError(f"{field} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field} must be timezone-aware UTC, got a naive datetime")
    if value.utcoffset() != timedelta(0):
        raise ValueError(f"{field} must be in UTC, got offset {value.utcoffset()}")
    return value.replace(microsecond=0, tzinfo=UTC)


@dataclass(frozen=True)
class Party:
    """A sender, recipient or operator: a KEP address and an optional display name."""

    address: str
    name: str | None = None

    def __post_init__(self) -> None:
        _check_token("address", self.address)
        local, at, domain = self.address.rpartition("@")
        if not at or not local or not domain:
            raise ValueError(f"address must be local@domain, got {self.address!r}")
        if self.name is not None:
            _check_text("name", self.name)


@dataclass(frozen=True)
class Provider:
    """Another ERDS (a KEP provider): the one a relay event names (EN 319 522-2 component M05)."""

    name: str  # legal name
    domain: str

    def __post_init__(self) -> None:
        _check_text("provider name", self.name)
        _check_token("provider domain", self.domain)


@dataclass(frozen=True)
class Evidence:
    """One evidence record (EN 319 522-2 §9): the facts an ERDS attests about one event."""

    evidence_id: str
    event: Event
    reason: Reason
    details: str
    event_time: datetime
    issuer_name: str
    issuer_domain: str
    policy_ids: tuple[str, ...]
    sender: Party
    sender_auth_time: datetime | None
    sender_auth_method: str | None
    recipients: tuple[Party, ...]
    refers_to_recipient: int | None
    message_id: str
    ua_message_id: str | None
    submission_time: datetime
    digest_sha256: bytes | None
    subject: str
    message_type: str = "standart"
    operator: Party | None = None
    external_provider: Provider | None = None

    def __post_init__(self) -> None:
        # Sequences given as lists would make the record unhashable and mutable underneath.
        object.__setattr__(self, "policy_ids", tuple(self.policy_ids))
        object.__setattr__(self, "recipients", tuple(self.recipients))
        _check_token("evidence_id", self.evidence_id)
        _check_token("message_id", self.message_id)
        if self.ua_message_id is not None:
            _check_token("ua_message_id", self.ua_message_id)
        if not isinstance(self.event, Event):
            raise ValueError(f"event must be an Event, not {self.event!r}")
        if not isinstance(self.reason, Reason):
            raise ValueError(f"reason must be a Reason, not {self.reason!r}")
        if self.reason.event is not self.event:
            raise ValueError(
                f"reason {self.reason.value} belongs to {self.reason.event.value}, not to {self.event.value}"
            )
        _check_text("details", self.details)
        _check_text("issuer_name", self.issuer_name)
        _check_token("issuer_domain", self.issuer_domain)
        if not self.policy_ids:
            raise ValueError("policy_ids needs at least one policy (EN 319 522-2 component R01)")
        for policy in self.policy_ids:
            _check_token("policy id", policy)
        if not isinstance(self.sender, Party):
            raise ValueError("sender must be a Party")
        if any(not isinstance(r, Party) for r in self.recipients):
            raise ValueError("every recipient must be a Party")
        if self.sender_auth_method is not None:
            _check_text("sender_auth_method", self.sender_auth_method)
        for field in ("event_time", "submission_time", "sender_auth_time"):
            value = getattr(self, field)
            if value is not None or field != "sender_auth_time":
                object.__setattr__(self, field, _check_utc(field, value))
        if self.event.per_recipient:
            index = self.refers_to_recipient
            if isinstance(index, bool) or not isinstance(index, int):
                raise ValueError(
                    f"{self.event.value} is issued per recipient: refers_to_recipient must be an int"
                )
            if not 1 <= index <= len(self.recipients):
                raise ValueError(
                    f"refers_to_recipient {index} is outside 1..{len(self.recipients)} (1-based index)"
                )
        elif self.refers_to_recipient is not None:
            raise ValueError(f"{self.event.value} covers the whole message: refers_to_recipient must be None")
        if self.digest_sha256 is not None and (
            not isinstance(self.digest_sha256, bytes) or len(self.digest_sha256) != 32
        ):
            raise ValueError("digest_sha256 must be 32 bytes (a SHA-256 value) or None")
        _check_text("subject", self.subject, allow_empty=True)
        if self.message_type not in MESSAGE_TYPES:
            raise ValueError(
                f"message_type must be one of {', '.join(MESSAGE_TYPES)}, not {self.message_type!r}"
            )
        if self.operator is not None and not isinstance(self.operator, Party):
            raise ValueError("operator must be a Party or None")
        if self.external_provider is not None and not isinstance(self.external_provider, Provider):
            raise ValueError("external_provider must be a Provider or None")

    @property
    def recipient(self) -> Party | None:
        """The recipient a per-recipient evidence refers to."""
        if self.refers_to_recipient is None:
            return None
        return self.recipients[self.refers_to_recipient - 1]
