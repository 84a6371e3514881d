"""What a refused submission carries to every edge: SMTP reply, ETSI reason, and a sentence in
English and Turkish that a user understands."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from kepmta.evidence.model import Reason


@dataclass(frozen=True)
class Refusal:
    smtp_code: int
    enhanced: str  # RFC 3463 enhanced status code
    reason: Reason  # EN 319 522-2 reason for the SubmissionRejection evidence
    text: str  # English
    text_tr: str  # Turkish

    def smtp_reply(self) -> str:
        """Two reply lines (RFC 5321 §4.2.1 multiline), English then Turkish, each with the codes."""
        tag = f"[{self.reason.value}]"
        return (
            f"{self.smtp_code}-{self.enhanced} {ascii_text(self.text)} {tag}\r\n"
            f"{self.smtp_code} {self.enhanced} {ascii_text(self.text_tr)} {tag}"
        )

    @property
    def details(self) -> str:
        """The sentence for the evidence, where Unicode is fine."""
        return f"{self.text} / {self.text_tr}"


_TURKISH = str.maketrans("çğıİöşüÇĞÖŞÜ§", "cgiIosuCGOSUS")


def ascii_text(text: str) -> str:
    """SMTP replies are ASCII (RFC 5321 §4.2); the evidence keeps the full text."""
    folded = unicodedata.normalize("NFKD", text.translate(_TURKISH))
    return "".join(ch if ord(ch) < 128 else "?" for ch in folded if not unicodedata.combining(ch))


class PolicyError(Exception):
    """Raised by a rule that refuses; the edge turns `refusal` into its protocol's answer."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.text)
        self.refusal = refusal


def refuse(smtp_code: int, enhanced: str, reason: Reason, text: str, text_tr: str) -> PolicyError:
    return PolicyError(Refusal(smtp_code, enhanced, reason, text, text_tr))
