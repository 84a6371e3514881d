"""Every error of the integration API is one JSON object with a stable `code`, an English and a
Turkish sentence; a refused submission also carries what the same refusal over SMTP carries: the
ETSI reason code of its SubmissionRejection evidence, the SMTP reply code and the RFC 3463
enhanced status code."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from kepmta.evidence.model import Reason
from kepmta.policy.refusal import Refusal


class Step(StrEnum):
    """The submission step that refused, as the SMTP command that would have been refused."""

    SENDER = "sender"  # MAIL FROM
    RECIPIENT = "recipient"  # RCPT TO
    MESSAGE = "message"  # DATA


# The code of each refusal the submission policy (kepmta.policy, kepmta.submission) makes, by the
# step that refused and the refusal's SMTP code, enhanced status and ETSI reason. A refusal this
# table does not know (a rule added later) is `<step>_refused`, never an unexplained error.
_REFUSAL_CODES: dict[tuple[Step | None, int, str, Reason], str] = {
    (None, 421, "4.7.0", Reason.RA05): "too_many_refusals",
    (None, 552, "5.3.4", Reason.RA05): "message_too_big",
    (Step.SENDER, 553, "5.1.7", Reason.RA05): "sender_address_invalid",
    (Step.SENDER, 550, "5.7.1", Reason.RA05): "sender_cannot_send",
    (Step.SENDER, 553, "5.7.1", Reason.RA05): "sender_not_permitted",
    (Step.SENDER, 552, "5.2.2", Reason.RA05): "sender_over_quota",
    (Step.RECIPIENT, 501, "5.1.3", Reason.RA05): "recipient_address_invalid",
    (Step.RECIPIENT, 550, "5.1.1", Reason.RA05): "recipient_unknown",
    (Step.RECIPIENT, 550, "5.7.1", Reason.RA05): "recipient_not_kep",
    (Step.RECIPIENT, 550, "5.2.1", Reason.RA05): "recipient_cannot_receive",
    (Step.MESSAGE, 554, "5.6.0", Reason.RA02): "message_malformed",
    (Step.MESSAGE, 550, "5.7.1", Reason.RA02): "message_formal_check",
    (Step.MESSAGE, 554, "5.7.1", Reason.RA05): "signature_refused",
    (Step.MESSAGE, 554, "5.7.7", Reason.RA02): "signature_integrity",
    (Step.MESSAGE, 554, "5.7.5", Reason.RA04): "signer_certificate_invalid",
    (Step.MESSAGE, 554, "5.7.1", Reason.RA03): "malware_found",
}

# HTTP status of a refusal, by its enhanced status code; anything else is 422.
_REFUSAL_STATUS = {"5.3.4": 413, "5.2.2": 403, "4.7.0": 429}


def refusal_code(step: Step, refusal: Refusal) -> str:
    key = (refusal.smtp_code, refusal.enhanced, refusal.reason)
    return _REFUSAL_CODES.get((None, *key)) or _REFUSAL_CODES.get((step, *key)) or f"{step.value}_refused"


class ApiError(Exception):
    """An error answer: HTTP status, stable code, English and Turkish text, and for a refused
    submission the codes SMTP would give; `details` holds one object per refused recipient or bad
    field."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        message_tr: str,
        refusal: Refusal | None = None,
        *,
        headers: dict[str, str] | None = None,
        details: tuple[dict[str, Any], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.message_tr = message_tr
        self.refusal = refusal
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message, "message_tr": self.message_tr}
        if self.refusal is not None:
            body["etsi_reason"] = self.refusal.reason.value
            body["smtp_code"] = self.refusal.smtp_code
            body["enhanced_status"] = self.refusal.enhanced
        if self.details:
            body["details"] = list(self.details)
        return body


def refused(step: Step, refusal: Refusal, details: tuple[dict[str, Any], ...] = ()) -> ApiError:
    status = 503 if refusal.smtp_code < 500 and refusal.enhanced != "4.7.0" else 422
    return ApiError(
        _REFUSAL_STATUS.get(refusal.enhanced, status),
        refusal_code(step, refusal),
        refusal.text,
        refusal.text_tr,
        refusal,
        details=details,
    )


def refusal_detail(step: Step, given: str, refusal: Refusal) -> dict[str, Any]:
    """One refused recipient, as the `details` of the error."""
    return {
        "address": given,
        "code": refusal_code(step, refusal),
        "message": refusal.text,
        "message_tr": refusal.text_tr,
        "etsi_reason": refusal.reason.value,
        "smtp_code": refusal.smtp_code,
        "enhanced_status": refusal.enhanced,
    }
