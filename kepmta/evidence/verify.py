"""Offline evidence verification ("Kanıt Doğrulama"): every check separate, nothing raised.

A person or a court holds an evidence file years later; this says, check by check, whether it is
intact, signed by the provider, time-stamped by a trusted TSA, and what it attests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asn1crypto.cms
from cryptography import x509

from kepmta.evidence import archive
from kepmta.evidence.errors import TimeStampError
from kepmta.evidence.model import Evidence
from kepmta.evidence.revocation import check_not_revoked
from kepmta.evidence.tsa import TokenInfo, check_token
from kepmta.evidence.xml import from_xml
from kepmta.smime import cms

STRUCTURE = "structure"
SIGNATURE = "signature"
SIGNING_CERTIFICATE = "signing-certificate-v2"
CHAIN = "chain"
TIMESTAMP = "time-stamp"
CONTENT = "content"
CHECK_NAMES = (STRUCTURE, SIGNATURE, SIGNING_CERTIFICATE, CHAIN, TIMESTAMP, CONTENT)
# What an evidence proves by itself, without trust anchors: the rest needs the issuer's CAs.
SELF_CONTAINED = (STRUCTURE, SIGNATURE, SIGNING_CERTIFICATE, CONTENT)
# Only for renewed evidence, checked against its RFC 4998 evidence record.
ARCHIVE = "archive-time-stamp"
REVOCATION = "revocation"
# The TSA stamps right after signing, so an event time later than the stamp (beyond the TSA's
# accuracy and clock skew) means the record and its time-stamp do not belong together.
_EVENT_AFTER_STAMP_LEEWAY = timedelta(minutes=5)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]
    evidence: Evidence | None
    signer_subject: str | None
    timestamp_time: datetime | None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


def _run(name: str, body: Callable[[], str]) -> Check:
    """Run one check; any exception is that check's failure, never the verifier's."""
    try:
        return Check(name, True, body())
    except Exception as exc:  # a verifier must report, not crash, whatever the input holds
        return Check(name, False, str(exc) or type(exc).__name__)


def _skipped(reason: str) -> tuple[Check, ...]:
    return tuple(Check(n, False, f"not checked: {reason}") for n in CHECK_NAMES[1:])


def verify_evidence(
    der: bytes,
    provider_trust: Sequence[x509.Certificate],
    tsa_trust: Sequence[x509.Certificate],
    *,
    evidence_record: bytes | None = None,
    at: datetime | None = None,
    weak: Mapping[str, datetime] | None = None,
) -> Report:
    """Check a signed evidence file (`<EventName>.p7m`) against the given trust anchors, as of `at`
    (now by default).

    The signature time-stamp proves the signature existed at its time, but only while its TSA
    certificate is valid: after that, a renewed evidence's RFC 4998 `evidence_record` must prove
    the time-stamp existed before the TSA certificate expired (EN 319 102-1 §5.6.2.4, proofs of
    existence). With an evidence record, its chain and the CRLs it archives are checked too, and
    its chains against the hash algorithms `weak` names (archive.verify_record).
    """
    now = at or datetime.now(UTC)
    parsed: dict[str, object] = {}

    def structure() -> str:
        ci = cms.load(bytes(der))
        cms.check_structure(ci)
        if ci["content"]["encap_content_info"]["content_type"].native != "data":
            raise cms.CmsError("the signed content is not id-data")
        content = cms.encapsulated_content(ci)
        if content is None:
            raise cms.CmsError("the evidence XML is not attached (detached signature)")
        if not content.lstrip().startswith(b"<"):
            raise cms.CmsError("the signed content is not XML")
        parsed["ci"] = ci
        parsed["content"] = content
        return "CMS SignedData (RFC 5652) with attached XML content"

    first = _run(STRUCTURE, structure)
    if not first.ok:
        return Report((first, *_skipped("the file is not a signed evidence")), None, None, None)
    ci = parsed["ci"]
    assert isinstance(ci, asn1crypto.cms.ContentInfo)
    content = parsed["content"]
    assert isinstance(content, bytes)
    signer_holder: list[x509.Certificate] = []

    def signature() -> str:
        cert = cms.signer_certificate(ci)
        signer_holder.append(cert)
        cms.check_message_digest(ci, content=content)
        cms.check_signature(ci, cert)
        return f"content digest matches; ECDSA signature verifies with {cert.subject.rfc4514_string()}"

    def signing_certificate() -> str:
        if not signer_holder:
            raise cms.CmsError("no signer certificate to compare")
        cms.check_signing_certificate_v2(ci, signer_holder[0])
        return "signingCertificateV2 identifies the signer certificate (RFC 5035)"

    stamp: list[TokenInfo] = []
    proof: list[archive.ArchiveProof] = []

    def archived() -> str:
        assert evidence_record is not None
        found = archive.verify_record(archive.parse(evidence_record), der, tsa_trust, now, weak)
        proof.append(found)
        return "RFC 4998 evidence record holds: " + "; ".join(
            f"chain {n} {chain.label}"
            + (" (hash-tree renewal)" if n > 1 else "")
            + f", {len(chain.times)} archive time-stamp(s) at "
            + ", ".join(f"{t:%Y-%m-%d %H:%M:%SZ}" for t in chain.times)
            for n, chain in enumerate(found.chains, 1)
        )

    def timestamp() -> str:
        token = cms.signature_timestamp_token(ci)
        if token is None:
            raise TimeStampError("no signature time-stamp (the evidence is not CAdES-B-T)")
        imprint = hashlib.sha256(cms.signature_value(ci)).digest()
        info = check_token(token, imprint, tsa_trust)
        # The token speaks for its time only while its TSA certificate is valid: now, or when an
        # archive time-stamp first covered it.
        relied_at, basis = (proof[0].first_time, "the first archive time-stamp") if proof else (now, "now")
        tsa_cert = cms.signer_certificate(cms.load(token), extra=tsa_trust)
        try:
            cms.validate_chain(
                tsa_cert, intermediates=cms.certificates(cms.load(token)), trust=tsa_trust, at=relied_at
            )
        except cms.ChainError as exc:
            hint = (
                ""
                if proof
                else "; an archive time-stamp made before it expired is needed (kepmta evidence renew)"
            )
            raise TimeStampError(f"the TSA certificate is not valid at {basis}: {exc}{hint}") from exc
        stamp.append(info)
        when = f"{info.gen_time:%Y-%m-%d %H:%M:%SZ}"
        return f"RFC 3161 token by {info.tsa_subject} at {when}, serial {info.serial}"

    def chain() -> str:
        if not signer_holder:
            raise cms.CmsError("no signer certificate to check")
        # Validity is judged at the time-stamp time: the token proves the signature existed then
        # (EN 319 102-1 validates with such proofs of existence). Without a good token, only the
        # present moment can be trusted.
        at, when = (stamp[0].gen_time, "at the time-stamp time") if stamp else (now, "now")
        path = cms.validate_chain(
            signer_holder[0],
            intermediates=cms.certificates(ci),
            trust=provider_trust,
            at=at,
            all_intermediates_used=True,
        )
        path_holder.extend(path)
        names = " → ".join(c.subject.rfc4514_string() for c in path)
        return f"chains to a trusted provider CA, valid {when}: {names}"

    path_holder: list[x509.Certificate] = []

    def revocation() -> str:
        if not stamp or len(path_holder) < 2:
            raise TimeStampError("needs a verified time-stamp and signer chain")
        crl = check_not_revoked(path_holder[0], path_holder[1], proof[0].crls, stamp[0].gen_time)
        return f"not revoked at the time-stamp time (archived CRL of {crl.last_update_utc:%Y-%m-%d})"

    evidence_holder: list[Evidence] = []

    def content_check() -> str:
        ev = from_xml(content)
        evidence_holder.append(ev)
        if stamp and ev.event_time > stamp[0].gen_time + _EVENT_AFTER_STAMP_LEEWAY:
            raise ValueError("the event time is after the time-stamp time")
        return f"EN 319 522-3 evidence {ev.evidence_id}"

    sig = _run(SIGNATURE, signature)
    cert_check = _run(SIGNING_CERTIFICATE, signing_certificate)
    renewal = (_run(ARCHIVE, archived),) if evidence_record is not None else ()
    ts = _run(TIMESTAMP, timestamp)
    chain_check = _run(CHAIN, chain)
    content_result = _run(CONTENT, content_check)
    revoked = (_run(REVOCATION, revocation),) if proof else ()
    return Report(
        checks=(first, sig, cert_check, chain_check, ts, content_result, *renewal, *revoked),
        evidence=evidence_holder[0] if evidence_holder else None,
        signer_subject=signer_holder[0].subject.rfc4514_string() if signer_holder else None,
        timestamp_time=stamp[0].gen_time if stamp else None,
    )


def _when(value: datetime | None) -> str:
    return "unknown" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


def describe(report: Report) -> str:
    """The report in words for a person: what the evidence says, then each check."""
    lines: list[str] = []
    ev = report.evidence
    if ev is not None:
        lines.append(f"Evidence {ev.evidence_id}: {ev.event.value} (KEP code {ev.event.ptt_code})")
        lines.append(f"  Reason:       {ev.reason.value} – {ev.reason.label}")
        lines.append(f"  Details:      {ev.details}")
        lines.append(f"  Event time:   {_when(ev.event_time)}")
        lines.append(f"  Issued by:    {ev.issuer_name} ({ev.issuer_domain})")
        sender = ev.sender.address if ev.sender.name is None else f"{ev.sender.name} <{ev.sender.address}>"
        lines.append(f"  Sender:       {sender}")
        for i, r in enumerate(ev.recipients, 1):
            marker = "  ← this evidence" if i == ev.refers_to_recipient else ""
            who = r.address if r.name is None else f"{r.name} <{r.address}>"
            lines.append(f"  Recipient {i}:  {who}{marker}")
        lines.append(f"  Subject:      {ev.subject}")
        lines.append(f"  Message id:   {ev.message_id}")
        lines.append(f"  Submitted:    {_when(ev.submission_time)}")
        digest = ev.digest_sha256.hex() if ev.digest_sha256 is not None else "none"
        lines.append(f"  SHA-256 of the original: {digest}")
    else:
        lines.append("The file could not be read as a KEP evidence.")
    lines.append(f"  Signed by:    {report.signer_subject or 'unknown'}")
    lines.append(f"  Time-stamped: {_when(report.timestamp_time)}")
    lines.append("Result: VALID" if report.ok else "Result: NOT VALID")
    for c in report.checks:
        lines.append(f"  {'✓' if c.ok else '✗'} {c.name}: {c.detail}")
    return "\n".join(lines)
