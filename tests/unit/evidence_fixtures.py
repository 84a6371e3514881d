"""Shared helpers for the CMS and evidence tests: a throw-away PKI and a sample evidence."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kepmta import pki
from kepmta.evidence.model import Event, Evidence, Party, Reason


@dataclass(frozen=True)
class Pki:
    dir: Path
    provider_ca: pki.KeyPair
    evidence: pki.KeyPair  # the provider's transaction certificate
    tsa_ca: pki.KeyPair
    tsa: pki.KeyPair

    def pem(self, name: str) -> Path:
        return self.dir / f"{name}.pem"


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def make_pki(directory: Path) -> Pki:
    """A provider CA with an evidence certificate, and a separate TSA CA with a TSA certificate."""
    provider_ca = pki.issue("Test KEP Provider CA", pki.Role.CA, organization="Test KEP A.Ş.")
    evidence = pki.issue(
        "Test KEP İşlem Sertifikası", pki.Role.EVIDENCE, provider_ca, organization="Test KEP A.Ş."
    )
    tsa_ca = pki.issue("Test TSA CA", pki.Role.CA)
    tsa = pki.issue("Test TSA", pki.Role.TSA, tsa_ca)
    write_pem(directory / "provider_ca.pem", provider_ca.cert)
    write_pem(directory / "evidence.pem", evidence.cert)
    write_pem(directory / "tsa_ca.pem", tsa_ca.cert)
    write_pem(directory / "tsa.pem", tsa.cert)
    return Pki(directory, provider_ca, evidence, tsa_ca, tsa)


def openssl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the openssl CLI and return the completed process (never raises on failure)."""
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, cwd=cwd, check=False, timeout=60
    )


def sample_evidence(**changes: object) -> Evidence:
    """A ContentConsignment evidence with Turkish text and characters that need XML escaping."""
    fields: dict[str, object] = {
        "evidence_id": "ev-0001@hs01.kep.tr",
        "event": Event.CONTENT_CONSIGNMENT,
        "reason": Reason.RD01,
        "details": "İleti alıcının posta kutusuna bırakıldı <tamam> & kaydedildi.",
        "event_time": datetime(2024, 5, 2, 10, 15, 30, tzinfo=UTC),
        "issuer_name": "Test KEP Hizmet Sağlayıcı A.Ş.",
        "issuer_domain": "hs01.kep.tr",
        "policy_ids": ("urn:oid:1.3.6.1.4.1.99999.2.1",),
        "sender": Party("ayse.yilmaz@hs01.kep.tr", "Ayşe Yılmaz"),
        "sender_auth_time": datetime(2024, 5, 2, 10, 0, 0, tzinfo=UTC),
        "sender_auth_method": "password+sms-otp",
        "recipients": (Party("mehmet.ozturk@hs01.kep.tr", "Mehmet Öztürk"), Party("info@ornek.kep.tr")),
        "refers_to_recipient": 1,
        "message_id": "20240502101530.abc123@hs01.kep.tr",
        "ua_message_id": "client-42@laptop.local",
        "submission_time": datetime(2024, 5, 2, 10, 15, 0, tzinfo=UTC),
        "digest_sha256": bytes(range(32)),
        "subject": "Sözleşme & ödeme <ek>",
    }
    fields.update(changes)
    return Evidence(**fields)  # type: ignore[arg-type]
