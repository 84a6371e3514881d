"""The built-in RFC 3161 TSA against the openssl ts client, and token verification."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import asn1crypto.core
import asn1crypto.tsp
import pytest
from evidence_fixtures import Pki, make_pki, openssl

from kepmta import pki
from kepmta.evidence.errors import (
    TimeStampError,
    TokenCertificateError,
    TokenFormatError,
    TokenImprintError,
    TokenSignatureError,
)
from kepmta.evidence.tsa import DEFAULT_POLICY, BuiltinTsa, check_token, token_imprint
from kepmta.smime import cms

DATA = b"Zaman damgas\xc4\xb1 verisi\n"
IMPRINT = hashlib.sha256(DATA).digest()


@pytest.fixture
def p(tmp_path: Path) -> Pki:
    (tmp_path / "data.txt").write_bytes(DATA)
    return make_pki(tmp_path)


def _status(resp: bytes) -> tuple[str, set[str]]:
    """(status, failInfo bits) of a TimeStampResp, read without asn1crypto's mandatory token."""
    outer = asn1crypto.core.Sequence.load(resp)
    info = asn1crypto.tsp.PKIStatusInfo.load(outer[0].dump())
    fail = info["fail_info"]
    return info["status"].native, set() if isinstance(fail, asn1crypto.core.Void) else set(fail.native)


def _query(p: Pki, *extra: str) -> Path:
    out = p.dir / "req.tsq"
    r = openssl("ts", "-query", "-data", p.dir / "data.txt", "-sha256", *extra, "-out", out)
    assert r.returncode == 0, r.stderr
    return out


def _verify(p: Pki, resp: Path, *how: str | Path) -> tuple[int, str]:
    r = openssl("ts", "-verify", "-in", resp, *how, "-CAfile", p.pem("tsa_ca"), "-untrusted", p.pem("tsa"))
    return r.returncode, r.stdout + r.stderr


def test_openssl_query_is_answered_and_verified(p: Pki) -> None:
    req = _query(p, "-cert")
    resp = p.dir / "resp.tsr"
    resp.write_bytes(BuiltinTsa(p.tsa).respond(req.read_bytes()))
    assert _status(resp.read_bytes()) == ("granted", set())
    code, out = _verify(p, resp, "-queryfile", req)
    assert code == 0 and "Verification: OK" in out, out
    code, out = _verify(p, resp, "-data", p.dir / "data.txt")
    assert code == 0 and "Verification: OK" in out, out


def test_token_fields_follow_the_request(p: Pki) -> None:
    req_der = _query(p, "-cert").read_bytes()
    request = asn1crypto.tsp.TimeStampReq.load(req_der)
    resp = asn1crypto.tsp.TimeStampResp.load(BuiltinTsa(p.tsa, chain=[p.tsa_ca.cert]).respond(req_der))
    token = resp["time_stamp_token"]
    info = token["content"]["encap_content_info"]["content"].parsed
    assert info["version"].native == "v1"
    assert info["policy"].dotted == DEFAULT_POLICY
    assert info["nonce"].native == request["nonce"].native  # RFC 3161 §2.4.2: nonce echoed
    assert info["message_imprint"]["hashed_message"].native == IMPRINT
    assert info["gen_time"].native.tzinfo is not None
    assert set(cms.certificates(token)) == {p.tsa.cert, p.tsa_ca.cert}  # certReq honoured


def test_without_cert_req_the_token_has_no_certificates(p: Pki) -> None:
    req = _query(p, "-no_nonce")
    resp = p.dir / "resp.tsr"
    resp.write_bytes(BuiltinTsa(p.tsa).respond(req.read_bytes()))
    token = asn1crypto.tsp.TimeStampResp.load(resp.read_bytes())["time_stamp_token"]
    assert cms.certificates(token) == []
    code, out = _verify(p, resp, "-queryfile", req)
    assert code == 0 and "Verification: OK" in out, out
    # The verifier can still use a TSA certificate it already trusts.
    info = check_token(token.dump(), IMPRINT, [p.tsa.cert, p.tsa_ca.cert])
    assert info.tsa_subject == p.tsa.cert.subject.rfc4514_string()


def test_serial_numbers_are_unique(p: Pki) -> None:
    tsa = BuiltinTsa(p.tsa)
    req = _query(p, "-cert").read_bytes()
    serials = set()
    for _ in range(20):
        token = asn1crypto.tsp.TimeStampResp.load(tsa.respond(req))["time_stamp_token"]
        serials.add(token["content"]["encap_content_info"]["content"].parsed["serial_number"].native)
    assert len(serials) == 20


def _request(**fields: object) -> bytes:
    base: dict[str, object] = {
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": IMPRINT},
        "cert_req": True,
    }
    base.update(fields)
    return bytes(asn1crypto.tsp.TimeStampReq(base).dump())


@pytest.mark.parametrize(
    ("request_der", "fail"),
    [
        (b"not asn.1 at all", "bad_data_format"),
        (b"\x30\x03\x02\x01\x01", "bad_data_format"),
        (
            _request(message_imprint={"hash_algorithm": {"algorithm": "sha1"}, "hashed_message": b"a" * 20}),
            "bad_alg",
        ),
        (
            _request(
                message_imprint={"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": b"a" * 20}
            ),
            "bad_data_format",
        ),
        (_request(req_policy="1.2.3.4"), "unaccepted_policy"),
        (_request(version="v2"), "bad_request"),
        (
            _request(extensions=[{"extn_id": "1.2.3.5", "critical": False, "extn_value": b"\x05\x00"}]),
            "unaccepted_extensions",
        ),
    ],
    ids=["garbage", "truncated", "sha1", "short-imprint", "other-policy", "version-2", "extension"],
)
def test_bad_requests_are_rejected(p: Pki, request_der: bytes, fail: str) -> None:
    resp = BuiltinTsa(p.tsa).respond(request_der)
    assert _status(resp) == ("rejection", {fail})
    f = p.dir / "bad.tsr"
    f.write_bytes(resp)
    printed = openssl("ts", "-reply", "-in", f, "-text")
    assert printed.returncode == 0, printed.stderr
    assert "Status: Rejected." in printed.stdout


def test_tsa_needs_a_timestamping_certificate(p: Pki) -> None:
    with pytest.raises(ValueError, match="timeStamping"):
        BuiltinTsa(p.evidence)


async def test_async_timestamp_passes_check_token(p: Pki) -> None:
    token = await BuiltinTsa(p.tsa).timestamp(IMPRINT)
    info = check_token(token, IMPRINT, [p.tsa_ca.cert])
    assert info.policy == DEFAULT_POLICY
    assert info.serial > 0
    assert info.tsa_subject == p.tsa.cert.subject.rfc4514_string()
    assert token_imprint(token) == IMPRINT
    with pytest.raises(ValueError, match="32-byte"):
        await BuiltinTsa(p.tsa).timestamp(b"short")


async def test_check_token_refuses_another_imprint(p: Pki) -> None:
    token = await BuiltinTsa(p.tsa).timestamp(IMPRINT)
    with pytest.raises(TokenImprintError):
        check_token(token, hashlib.sha256(b"other").digest(), [p.tsa_ca.cert])


async def test_check_token_refuses_an_untrusted_tsa(p: Pki) -> None:
    token = await BuiltinTsa(p.tsa).timestamp(IMPRINT)
    with pytest.raises(TokenCertificateError, match="not trusted"):
        check_token(token, IMPRINT, [p.provider_ca.cert])


async def test_check_token_refuses_a_tsa_certificate_without_timestamping(p: Pki) -> None:
    # A token-shaped signature from an e-mail protection certificate is not a time-stamp.
    tst_info = asn1crypto.tsp.TSTInfo(
        {
            "version": "v1",
            "policy": DEFAULT_POLICY,
            "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": IMPRINT},
            "serial_number": 1,
            "gen_time": pki.utcnow().replace(microsecond=0),
        }
    )
    forged = cms.sign(p.evidence, content=tst_info.dump(), detached=False, content_type="tst_info")
    with pytest.raises(TokenCertificateError, match="timeStamping"):
        check_token(forged.dump(), IMPRINT, [p.provider_ca.cert])


async def test_check_token_refuses_tampering_and_garbage(p: Pki) -> None:
    token = bytearray(await BuiltinTsa(p.tsa).timestamp(IMPRINT))
    sig = cms.signature_value(cms.load(bytes(token)))
    at = bytes(token).find(sig) + 10
    token[at] ^= 0x01
    with pytest.raises(TokenSignatureError):
        check_token(bytes(token), IMPRINT, [p.tsa_ca.cert])
    with pytest.raises(TokenFormatError):
        check_token(b"garbage", IMPRINT, [p.tsa_ca.cert])
    not_tst = cms.sign(p.tsa, content=b"plain data", detached=False)
    with pytest.raises(TokenFormatError, match="not a TSTInfo"):
        check_token(not_tst.dump(), IMPRINT, [p.tsa_ca.cert])


async def test_check_token_refuses_an_expired_tsa(p: Pki) -> None:
    old = pki.issue(
        "Old TSA",
        pki.Role.TSA,
        p.tsa_ca,
        not_before=pki.utcnow() - dt.timedelta(days=10),
        not_after=pki.utcnow() - dt.timedelta(days=1),
    )
    token = await BuiltinTsa(old).timestamp(IMPRINT)
    with pytest.raises(TokenCertificateError, match="not valid at"):
        check_token(token, IMPRINT, [p.tsa_ca.cert])


async def test_any_flipped_token_byte_raises_a_timestamp_error(p: Pki) -> None:
    token = await BuiltinTsa(p.tsa).timestamp(IMPRINT)
    for i in range(0, len(token), 5):
        flipped = bytearray(token)
        flipped[i] ^= 0x01
        with pytest.raises(TimeStampError):
            check_token(bytes(flipped), IMPRINT, [p.tsa_ca.cert])


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
async def test_a_builtin_token_says_what_it_stamped(p: Pki, algorithm: str) -> None:
    imprint = hashlib.new(algorithm, DATA).digest()
    token = await BuiltinTsa(p.tsa).token(imprint, algorithm)
    assert (token.algorithm, token.imprint) == (algorithm, imprint)
    assert token_imprint(token.der, algorithm) == imprint
    assert check_token(token.der, imprint, [p.tsa_ca.cert], algorithm).nonce is None
