"""Regenerate evidence/samples/: one signed evidence of every event, made with a throw-away key.

    .venv/bin/python evidence/make_samples.py

A fresh provider CA, transaction certificate and TSA are made each run; only the CA certificate is
written (samples/provider-ca.pem), never a private key, so nobody can make more evidence that
verifies against it. The certificates are valid until 2099 so that the committed samples keep
verifying with plain `openssl cms -verify`, which checks validity at the present time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from kepmta import pki
from kepmta.evidence.model import Evidence, Party, Reason
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.tsa import BuiltinTsa

OUT = Path(__file__).resolve().parent / "samples"
DOMAIN = "kep.test"
UNTIL = dt.datetime(2099, 12, 31, tzinfo=dt.UTC)
# One reason for each event; the negative ones show a typical cause.
SAMPLES = (
    Reason.RA01,
    Reason.RA05,
    Reason.RB01,
    Reason.RB06,
    Reason.RB09,
    Reason.RD01,
    Reason.RD04,
    Reason.RE01,
)


def _evidence(reason: Reason, at: dt.datetime, index: int) -> Evidence:
    submitted = at - dt.timedelta(minutes=10)
    return Evidence(
        evidence_id=f"{at:%Y%m%dT%H%M%SZ}.sample{index:02d}@{DOMAIN}",
        event=reason.event,
        reason=reason,
        details=reason.label,
        event_time=at,
        issuer_name="Örnek KEP Hizmet Sağlayıcısı A.Ş. (sample)",
        issuer_domain=DOMAIN,
        policy_ids=("urn:oid:1.3.6.1.4.1.99999.2.1",),
        sender=Party(f"ali.yilmaz@{DOMAIN}", "Ali Yılmaz"),
        sender_auth_time=submitted - dt.timedelta(seconds=5),
        sender_auth_method="SMTP AUTH over TLS (RFC 4954, RFC 8314)",
        recipients=(Party(f"ayse.kaya@{DOMAIN}", "Ayşe Kaya"), Party("bilgi@ornek.peer.test")),
        refers_to_recipient=(2 if reason.event.value.startswith("Relay") else 1)
        if reason.event.per_recipient
        else None,
        message_id=f"{submitted:%Y%m%dT%H%M%SZ}.0a1b2c3d4e5f6789@{DOMAIN}",
        ua_message_id="c3a1f0e2-sample@client.example",
        submission_time=submitted,
        # the digest of the published EN 319 532-3 sample original (shared/EVIDENCE.md)
        digest_sha256=bytes.fromhex("78f820650f7f5306deeae8bf9aa9fe9a864971f91d155225b86d41e1ade8bfd9"),
        subject="Kira sözleşmesinin feshi – İhtarname",
    )


async def main() -> None:
    org = "kepmta sample provider (throw-away key)"
    ca = pki.issue("kepmta Sample Provider CA", pki.Role.CA, organization=org, not_after=UNTIL)
    transaction = pki.issue(
        "kepmta Sample Transaction Certificate",
        pki.Role.EVIDENCE,
        ca,
        organization=org,
        email=f"rem-service@{DOMAIN}",
        not_after=UNTIL,
    )
    tsa = pki.issue("kepmta Sample Time-Stamp Authority", pki.Role.TSA, ca, organization=org, not_after=UNTIL)
    signer = EvidenceSigner(transaction, [ca.cert], BuiltinTsa(tsa, [ca.cert]))
    OUT.mkdir(exist_ok=True)
    for old in (*OUT.glob("*.p7m"), *OUT.glob("*.xml")):
        old.unlink()
    (OUT / "provider-ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for index, reason in enumerate(SAMPLES):
        signed = await signer.sign(_evidence(reason, now, index))
        (OUT / signed.filename).write_bytes(signed.der)
        (OUT / f"{reason.event.value}.xml").write_bytes(signed.xml)
        print(f"{OUT.name}/{signed.filename}: {reason.event.value} {reason.value}")


if __name__ == "__main__":
    asyncio.run(main())
