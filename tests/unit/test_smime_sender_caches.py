"""verify_sender remembers certificate and CRL signature checks; the answers must stay exact.

A certificate or CRL with the same names but other octets (another key) must never be taken for
the one checked before, and a CRL is looked up afresh for each CRL object.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from rem_fixtures import SENDER, pki, sign_cryptography

from kepmta.pki import KeyPair, Role, issue, issue_crl, utcnow
from kepmta.smime import sender
from kepmta.smime.sender import SenderVerdict, verify_sender


def verify(
    tmp_path: Path, message: bytes, crls: Sequence[x509.CertificateRevocationList] = ()
) -> SenderVerdict:
    path = tmp_path / "submitted.eml"
    path.write_bytes(message)
    return verify_sender(path, SENDER, [pki().root.cert], utcnow(), crls)


def look_alike(pair: KeyPair, issuer: KeyPair | None = None) -> KeyPair:
    """A certificate with `pair`'s subject name and another key."""
    (cn,) = (a.value for a in pair.cert.subject if a.oid == x509.NameOID.COMMON_NAME)
    return issue(str(cn), Role.CA, issuer, organization="Test Kamu SM")


def test_a_look_alike_chain_fails_after_the_genuine_one_was_checked(tmp_path: Path) -> None:
    assert verify(tmp_path, sign_cryptography(pki().ali)).ok
    before = sender._signed_by.cache_info()
    assert verify(tmp_path, sign_cryptography(pki().ali)).ok
    assert sender._signed_by.cache_info().hits > before.hits
    fake_sub = look_alike(pki().sub, look_alike(pki().root))
    assert fake_sub.cert.issuer == pki().root.cert.subject
    fake_ali = issue("Ali Yılmaz", Role.SMIME, fake_sub, email=SENDER)
    verdict = verify(tmp_path, sign_cryptography(fake_ali, extra=(fake_sub.cert,)))
    assert verdict.failed is not None
    assert (verdict.failed.name, verdict.failed.detail) == (
        "chain",
        "issuer CN=KEP Test Kök SM is not a trusted qualified CA",
    )


def test_each_crl_is_read_for_itself(tmp_path: Path) -> None:
    message = sign_cryptography(pki().ali)
    yesterday = utcnow() - dt.timedelta(days=1)
    clean = issue_crl(pki().sub)
    assert verify(tmp_path, message, [clean]).ok
    hits = sender._crl_signed_by.cache_info().hits
    assert verify(tmp_path, message, [clean]).ok
    assert sender._crl_signed_by.cache_info().hits > hits

    revoking = issue_crl(pki().sub, ((pki().ali.cert.serial_number, yesterday),), number=2)
    verdict = verify(tmp_path, message, [revoking])
    assert verdict.failed is not None and verdict.failed.name == "validity"
    assert verdict.failed.detail.startswith("signer certificate was revoked on ")
    assert verify(tmp_path, message, [clean]).ok

    # Same issuer name, another key: not the issuer's CRL, whatever was checked before.
    forged = issue_crl(look_alike(pki().sub), ((pki().ali.cert.serial_number, yesterday),))
    assert verify(tmp_path, message, [forged]).ok

    expired = issue_crl(
        pki().sub, this_update=utcnow() - dt.timedelta(days=10), next_update=utcnow() - dt.timedelta(days=1)
    )
    verdict = verify(tmp_path, message, [expired])
    assert verdict.failed is not None and verdict.failed.name == "validity"
    assert "revocation cannot be checked" in verdict.failed.detail


def test_the_crl_key_holds_its_crl() -> None:
    crl = issue_crl(pki().sub)
    twin = issue_crl(pki().sub)
    assert sender._SameCrl(crl) == sender._SameCrl(crl)
    assert hash(sender._SameCrl(crl)) == hash(sender._SameCrl(crl))
    assert sender._SameCrl(crl) != sender._SameCrl(twin)
    assert sender._SameCrl(crl).crl is crl
