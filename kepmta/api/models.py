"""The JSON the integration API answers with, as pydantic models: they make its OpenAPI 3 document."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from kepmta.api.directory import Answer, Entry
from kepmta.api.service import Accepted, Event, Status
from kepmta.evidence.timeline import EVENT_NAMES_EN, EVENT_NAMES_TR


class ErrorBody(BaseModel):
    """Every error. A refused submission also has the codes the same refusal has over SMTP."""

    code: str = Field(description="stable, for programs: e.g. token_invalid, message_too_big")
    message: str = Field(description="in English")
    message_tr: str = Field(description="in Turkish")
    etsi_reason: str | None = Field(
        None, description="a refused submission: the EN 319 522 reason of its SubmissionRejection"
    )
    smtp_code: int | None = Field(None, description="a refused submission: the SMTP reply code")
    enhanced_status: str | None = Field(None, description="a refused submission: RFC 3463 status")
    details: list[dict[str, Any]] | None = Field(
        None, description="each refused recipient, or each invalid field, with its own code"
    )


class AcceptedOut(BaseModel):
    message_id: str = Field(description="the provider message id: what the evidence names")
    sender: str
    operator: str | None = Field(description="the person who sent for a legal entity")
    recipients: list[str]

    @classmethod
    def of(cls, a: Accepted) -> AcceptedOut:
        return cls(
            message_id=a.message_id, sender=a.sender, operator=a.operator, recipients=list(a.recipients)
        )


class EventOut(BaseModel):
    evidence_id: str
    event: str = Field(description="EN 319 522 event, e.g. SubmissionAcceptance")
    ptt_code: int = Field(description="the event's KEP code as PTT numbers it")
    name_en: str
    name_tr: str
    reason: str = Field(description="EN 319 522 reason code, e.g. RA01")
    details: str
    time: dt.datetime = Field(description="the event time the evidence states")
    recipient: str | None = Field(description="the recipient a per-recipient evidence is about")
    issuer_domain: str = Field(description="the KEP domain of the provider that signed the evidence")
    received: bool = Field(description="issued by the recipient's provider, not by us")

    @classmethod
    def of(cls, e: Event) -> EventOut:
        ev = e.evidence
        return cls(
            evidence_id=e.evidence_id,
            event=ev.event.value,
            ptt_code=ev.event.ptt_code,
            name_en=EVENT_NAMES_EN[ev.event],
            name_tr=EVENT_NAMES_TR[ev.event],
            reason=ev.reason.value,
            details=ev.details,
            time=ev.event_time,
            recipient=ev.recipient.address if ev.recipient else None,
            issuer_domain=ev.issuer_domain,
            received=e.received,
        )


class RecipientOut(BaseModel):
    position: int
    address: str
    events: list[EventOut] = Field(description="the evidence about this recipient so far, oldest first")


class StatusOut(BaseModel):
    message_id: str
    sender: str
    operator: str | None
    subject: str
    submitted_at: dt.datetime
    size: int | None
    sha256: str | None = Field(description="of the original as attached to the dispatch")
    events: list[EventOut] = Field(description="the evidence about the whole message")
    recipients: list[RecipientOut]

    @classmethod
    def of(cls, s: Status) -> StatusOut:
        whole = [EventOut.of(e) for e in s.events if e.evidence.refers_to_recipient is None]
        return cls(
            message_id=s.message_id,
            sender=s.sender,
            operator=s.operator,
            subject=s.subject,
            submitted_at=s.submitted_at,
            size=s.size,
            sha256=s.digest.hex() if s.digest else None,
            events=whole,
            recipients=[
                RecipientOut(
                    position=n,
                    address=address,
                    events=[EventOut.of(e) for e in s.events if e.evidence.refers_to_recipient == n],
                )
                for n, address in enumerate(s.recipients, 1)
            ],
        )


class EvidenceItem(EventOut):
    href: str = Field(description="where its .p7m is downloaded")


class EvidenceListOut(BaseModel):
    message_id: str
    evidence: list[EvidenceItem]
    bundle: str = Field(description="where the whole bundle (ZIP) is downloaded")


class QuotaOut(BaseModel):
    address: str
    used: int = Field(description="bytes")
    limit: int = Field(description="bytes")
    percent: int


class DirectoryEntryOut(BaseModel):
    address: str
    name: str
    kind: str = Field(description="person or entity")
    mersis: str | None = Field(description="a legal entity's MERSİS number")
    active: bool = Field(description="it can receive KEP now")

    @classmethod
    def of(cls, e: Entry) -> DirectoryEntryOut:
        return cls(address=e.address, name=e.name, kind=e.kind, mersis=e.mersis, active=e.active)


class DirectoryOut(BaseModel):
    entries: list[DirectoryEntryOut]


class CheckIn(BaseModel):
    addresses: list[str] = Field(description="at most the policy's [api] bulk_check_max")


class CheckAnswerOut(BaseModel):
    address: str = Field(description="as given")
    listed: bool = Field(
        description="a KEP address in the directory; false alike for no such address and for a "
        "person who did not opt in"
    )
    active: bool | None = Field(description="listed: whether it can receive KEP now")

    @classmethod
    def of(cls, a: Answer) -> CheckAnswerOut:
        return cls(address=a.address, listed=a.listed, active=a.active)


class CheckOut(BaseModel):
    results: list[CheckAnswerOut]
