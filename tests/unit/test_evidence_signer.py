"""Signed evidence: attached CAdES-B-T that the openssl CLI verifies with no extra options."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from evidence_fixtures import Pki, make_pki, openssl, sample_evidence

from kepmta.evidence.errors import TokenImprintError
from kepmta.evidence.model import Event, Reason
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.tsa import BuiltinTsa, TimeStamper, Token, check_token
from kepmta.evidence.xml import to_xml
from kepmta.smime import cms


@pytest.fixture
def p(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


async def test_signed_evidence_verifies_with_plain_openssl(p: Pki) -> None:
    ev = sample_evidence()
    signed = await EvidenceSigner(p.evidence, [], BuiltinTsa(p.tsa)).sign(ev)
    assert signed.filename == "ContentConsignment.p7m"
    assert signed.xml == to_xml(ev)
    f = p.dir / signed.filename
    f.write_bytes(signed.der)
    # Exactly the command a person is told to run: no -binary, -purpose or -noverify.
    r = openssl("cms", "-verify", "-inform", "DER", "-in", f, "-CAfile", p.pem("provider_ca"))
    assert r.returncode == 0, r.stderr
    assert "Verification successful" in r.stderr
    assert r.stdout == signed.xml.decode("utf-8")
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", f)
    assert printed.returncode == 0, printed.stderr
    assert "timeStampToken" in printed.stdout
    assert "unsignedAttrs" in printed.stdout


async def test_signed_evidence_is_cades_b_t_over_the_signature_value(p: Pki) -> None:
    signed = await EvidenceSigner(p.evidence, [p.provider_ca.cert], BuiltinTsa(p.tsa)).sign(sample_evidence())
    ci = cms.load(signed.der)
    assert cms.encapsulated_content(ci) == signed.xml
    assert p.provider_ca.cert in cms.certificates(ci)
    token = cms.signature_timestamp_token(ci)
    assert token is not None
    imprint = hashlib.sha256(cms.signature_value(ci)).digest()
    info = check_token(token, imprint, [p.tsa_ca.cert])
    assert info.tsa_subject == p.tsa.cert.subject.rfc4514_string()


async def test_filename_follows_the_event(p: Pki) -> None:
    ev = sample_evidence(event=Event.SUBMISSION_REJECTION, reason=Reason.RA05, refers_to_recipient=None)
    signed = await EvidenceSigner(p.evidence, [], BuiltinTsa(p.tsa)).sign(ev)
    assert signed.filename == "SubmissionRejection.p7m"


class _WrongTsa(TimeStamper):
    """A TSA that stamps something else than it was asked to, and says so."""

    def __init__(self, real: BuiltinTsa, data: bytes, algorithm: str) -> None:
        self.real, self.data, self.algorithm = real, data, algorithm

    async def token(self, imprint: bytes, algorithm: str = "sha256") -> Token:
        return await self.real.token(hashlib.new(self.algorithm, self.data).digest(), self.algorithm)


@pytest.mark.parametrize(
    ("data", "algorithm"), [(b"something else", "sha256"), (b"the signature value", "sha512")]
)
async def test_a_token_over_other_data_is_refused(p: Pki, data: bytes, algorithm: str) -> None:
    signer = EvidenceSigner(p.evidence, [], _WrongTsa(BuiltinTsa(p.tsa), data, algorithm))
    with pytest.raises(TokenImprintError):
        await signer.sign(sample_evidence())
