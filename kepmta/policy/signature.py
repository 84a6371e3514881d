"""Signed sender: the message must be S/MIME signed by the sender's qualified certificate."""

from __future__ import annotations

from kepmta.evidence.model import Reason
from kepmta.policy.refusal import refuse
from kepmta.smime.sender import NOT_SIGNED, SenderVerdict

# Each of the four separate results (KEP.md "signed sender") refuses with its own codes:
# RFC 3463 X.7.7 message integrity failure, X.7.5 cryptographic failure, X.7.1 not authorised;
# EN 319 522-2 RA02 (format / integrity), RA04 (sender certificate), RA05 (policy).
_CODES = {
    "integrity": ("5.7.7", Reason.RA02, "imza bütünlüğü"),
    "chain": ("5.7.5", Reason.RA04, "güvenilir nitelikli sertifika zinciri"),
    "validity": ("5.7.5", Reason.RA04, "sertifika geçerliliği"),
    "identity": ("5.7.1", Reason.RA05, "imzalayan kimliği"),
}


def check_signature(verdict: SenderVerdict) -> None:
    failed = verdict.failed
    if failed is None:
        return
    if failed.name == "integrity" and failed.detail == NOT_SIGNED:
        raise refuse(
            554,
            "5.7.1",
            Reason.RA05,
            "the message is not S/MIME signed; KEP mail must carry the sender's qualified e-signature",
            "ileti S/MIME ile imzalanmamış; KEP iletisi göndericinin nitelikli "
            "elektronik imzasını taşımalıdır",
        )
    enhanced, reason, name_tr = _CODES[failed.name]
    raise refuse(
        554,
        enhanced,
        reason,
        f"sender signature check '{failed.name}' failed: {failed.detail}",
        f"gönderici imzası denetimi ({name_tr}) başarısız: {failed.detail}",
    )
