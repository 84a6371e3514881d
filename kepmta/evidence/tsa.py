"""RFC 3161 time-stamps: a built-in TSA for development and tests, and token verification.

The built-in TSA answers real RFC 3161 requests (so `openssl ts -query` works against it) and
issues tokens directly for the evidence signer. `check_token` is what the offline verifier uses.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import asn1crypto.cms
import asn1crypto.core
import asn1crypto.tsp
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from kepmta.evidence.errors import (
    TimeStampError,
    TokenCertificateError,
    TokenFormatError,
    TokenImprintError,
    TokenSignatureError,
)
from kepmta.pki import KeyPair
from kepmta.smime import cms, der

DEFAULT_POLICY = "1.3.6.1.4.1.99999.1.1"
# Digest lengths a request's messageImprint may use; the token keeps the requester's algorithm.
_DIGEST_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
# RFC 5754 §2: the SHA-2 AlgorithmIdentifiers, parameters NULL as RFC 3161 requesters send them.
_DIGEST_IDS = {
    "sha256": cms.SHA256_NULL,
    "sha384": der.sequence(der.oid("2.16.840.1.101.3.4.2.2"), der.tlv(der.NULL, b"")),
    "sha512": der.sequence(der.oid("2.16.840.1.101.3.4.2.3"), der.tlv(der.NULL, b"")),
}
_VERSION_1 = der.integer(1)
# RFC 3161 §2.4.2 Accuracy { seconds 1 }.
_ACCURACY_ONE_SECOND = der.sequence(der.integer(1))
# RFC 3161 §2.4.2 PKIStatus values and the PKIFailureInfo bits _Rejection names.
_GRANTED = der.sequence(der.integer(0))
_REJECTION = der.integer(2)
_FAIL_INFO_BITS = {
    "bad_alg": 0,
    "bad_request": 2,
    "bad_data_format": 5,
    "unaccepted_policy": 15,
    "unaccepted_extensions": 16,
}


@dataclass(frozen=True)
class Token:
    """A TimeStampToken (ContentInfo DER) and the messageImprint it covers (RFC 3161 §2.4.2), as
    the TimeStamper that returns it wrote or checked it, so that callers need not parse it back."""

    der: bytes
    algorithm: str  # the messageImprint hashAlgorithm: sha256, sha384 or sha512
    imprint: bytes  # the messageImprint hashedMessage


class TimeStamper(Protocol):
    """Where time-stamp tokens come from. A TimeStamper stands behind the imprint in the `Token` it
    returns: it wrote the messageImprint itself (BuiltinTsa) or checked the token as RFC 3161
    §2.4.2 asks of a requester (HttpTsa)."""

    async def token(self, imprint: bytes, algorithm: str = "sha256") -> Token:
        """A token over `imprint`, a digest made with `algorithm` (sha256, sha384 or sha512)."""
        ...

    async def timestamp(self, imprint: bytes, algorithm: str = "sha256") -> bytes:
        """The DER of `token(imprint, algorithm)`."""
        return (await self.token(imprint, algorithm)).der


@dataclass(frozen=True)
class TokenInfo:
    gen_time: datetime
    policy: str
    serial: int
    tsa_subject: str
    nonce: int | None  # RFC 3161 §2.4.2: the requester's nonce echoed, None if it sent none


class _Rejection(Exception):
    """A request the TSA refuses: RFC 3161 §2.4.2 PKIFailureInfo bit name and a text."""

    def __init__(self, fail_info: str, text: str) -> None:
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text


class BuiltinTsa(TimeStamper):
    """A TSA signing with a local key: development and tests, not a qualified service."""

    def __init__(
        self, pair: KeyPair, chain: Sequence[x509.Certificate] = (), policy: str = DEFAULT_POLICY
    ) -> None:
        eku = _eku(pair.cert)
        if eku is None or ExtendedKeyUsageOID.TIME_STAMPING not in eku.value:
            # RFC 3161 §2.3: verifiers reject tokens from a certificate without id-kp-timeStamping.
            raise ValueError("the TSA certificate needs the extended key usage id-kp-timeStamping")
        self._pair = pair
        self._chain = tuple(chain)
        self._policy = policy
        self._policy_der = der.oid(policy)
        # RFC 3161 §2.4.2 tsa [0] GeneralName, here directoryName [4] with the certificate's subject;
        # both tags are EXPLICIT because GeneralName and Name are CHOICEs (X.680 §31.2.7).
        self._tsa_name = der.explicit(0, der.explicit(4, cms.subject_der(pair.cert)))

    def respond(self, request_der: bytes) -> bytes:
        """Answer a DER TimeStampReq with a DER TimeStampResp (RFC 3161 §2.4.1, §2.4.2)."""
        try:
            request = _parse_request(request_der, self._policy)
            token = self._issue(
                # RFC 3161 §2.4.2: messageImprint is the request's, octet for octet.
                imprint=der.elements(der.contents(request_der))[1],
                nonce=request["nonce"].native,
                cert_req=bool(request["cert_req"].native),
            )
        except _Rejection as rejection:
            # RFC 3161 §2.4.2: PKIStatusInfo { rejection, statusString (PKIFreeText, a SEQUENCE OF
            # UTF8String), failInfo }; timeStampToken is OPTIONAL and absent on rejection.
            status = der.sequence(
                _REJECTION,
                der.sequence(der.utf8_string(rejection.text)),
                der.bit_string((_FAIL_INFO_BITS[rejection.fail_info],)),
            )
            return der.sequence(status)
        return der.sequence(_GRANTED, token)

    async def token(self, imprint: bytes, algorithm: str = "sha256") -> Token:
        """A token over `imprint`, a digest made with `algorithm`, with the TSA certificate
        included for verifiers."""
        if algorithm not in _DIGEST_SIZES:
            raise ValueError(f"hash algorithm {algorithm} is not one of {', '.join(_DIGEST_SIZES)}")
        if len(imprint) != _DIGEST_SIZES[algorithm]:
            raise ValueError(f"imprint must be a {_DIGEST_SIZES[algorithm]}-byte {algorithm} value")
        message_imprint = der.sequence(_DIGEST_IDS[algorithm], der.octet_string(imprint))
        # On the loop: a software ECDSA signature and a few hundred bytes of DER take a fraction
        # of a millisecond, less than the two thread switches a worker would cost.
        token = self._issue(imprint=message_imprint, nonce=None, cert_req=True)
        # The messageImprint is the one written just above: reading it back out of the token
        # would only find it again.
        return Token(token, algorithm, imprint)

    def _issue(self, *, imprint: bytes, nonce: int | None, cert_req: bool) -> bytes:
        """TimeStampToken DER over the encoded MessageImprint `imprint` (RFC 3161 §2.4.2)."""
        # RFC 3161 §2.4.2: genTime is UTC; whole seconds plus a one-second accuracy keep it exact.
        now = datetime.now(UTC).replace(microsecond=0)
        tst_info = der.sequence(
            _VERSION_1,
            self._policy_der,
            imprint,
            # RFC 3161 §2.4.2: serialNumber unique per token; 127 random bits make collisions
            # negligible without any shared counter, and +1 keeps it positive and non-zero.
            der.integer(secrets.randbits(127) + 1),
            der.generalized_time(now),
            _ACCURACY_ONE_SECOND,
            # ordering is left at its DEFAULT FALSE, which DER omits (X.690 §11.5); the nonce
            # echoes the requester's.
            *(() if nonce is None else (der.integer(nonce),)),
            self._tsa_name,
        )
        token = cms.sign(
            self._pair,
            content=tst_info,
            detached=False,
            chain=self._chain,
            content_type="tst_info",
            signing_time=now,
        )
        # RFC 3161 §2.4.1: without certReq the TSA certificate must not be included.
        return bytes((token if cert_req else cms.without_certificates(token)).dump())


def _parse_request(request_der: bytes, policy: str) -> asn1crypto.tsp.TimeStampReq:
    try:
        request = asn1crypto.tsp.TimeStampReq.load(request_der, strict=True)
        request.native  # noqa: B018 - forces the full parse so a malformed field fails here
    except Exception as exc:  # asn1crypto raises several exception types on garbage
        raise _Rejection("bad_data_format", f"not a DER TimeStampReq: {exc}") from exc
    if request["version"].native != "v1":
        raise _Rejection("bad_request", "only TimeStampReq version 1 is supported")
    algo = request["message_imprint"]["hash_algorithm"]["algorithm"].native
    if algo not in _DIGEST_SIZES:
        raise _Rejection("bad_alg", f"hash algorithm {algo} is not accepted")
    if len(request["message_imprint"]["hashed_message"].native) != _DIGEST_SIZES[algo]:
        raise _Rejection("bad_data_format", f"the {algo} imprint has the wrong length")
    requested = request["req_policy"]
    if not isinstance(requested, asn1crypto.core.Void) and requested.dotted != policy:
        raise _Rejection("unaccepted_policy", f"policy {requested.dotted} is not offered")
    if not isinstance(request["extensions"], asn1crypto.core.Void) and len(request["extensions"]) > 0:
        raise _Rejection("unaccepted_extensions", "request extensions are not supported")
    return request


def _eku(cert: x509.Certificate) -> x509.Extension[x509.ExtendedKeyUsage] | None:
    try:
        return cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # extensions that do not parse
        raise TokenCertificateError(f"the TSA certificate extensions do not parse: {exc}") from exc


def _tst_info(ci: asn1crypto.cms.ContentInfo) -> asn1crypto.tsp.TSTInfo:
    encap = ci["content"]["encap_content_info"]
    if encap["content_type"].native != "tst_info":
        raise TokenFormatError("the token's content is not a TSTInfo (id-ct-TSTInfo)")
    content = cms.encapsulated_content(ci)
    if content is None:
        raise TokenFormatError("the token carries no TSTInfo")
    try:
        info = asn1crypto.tsp.TSTInfo.load(content, strict=True)
        info.native  # noqa: B018 - forces the full parse
    except Exception as exc:  # asn1crypto raises several exception types on garbage
        raise TokenFormatError(f"the TSTInfo does not parse: {exc}") from exc
    if info["version"].native != "v1":
        raise TokenFormatError("TSTInfo version is not 1")
    return info


def _load_token(token: bytes) -> tuple[asn1crypto.cms.ContentInfo, asn1crypto.tsp.TSTInfo]:
    try:
        ci = cms.load(token)
        cms.check_structure(ci)
    except cms.CmsError as exc:
        raise TokenFormatError(f"the token is not CMS SignedData: {exc}") from exc
    return ci, _tst_info(ci)


def _imprint(info: asn1crypto.tsp.TSTInfo, algorithm: str) -> bytes:
    """The TSTInfo's messageImprint hashedMessage, which must be made with `algorithm`."""
    imprint = info["message_imprint"]
    found = imprint["hash_algorithm"]["algorithm"].native
    if found != algorithm:
        raise TokenImprintError(f"the token imprint is {found}, not {algorithm}")
    return bytes(imprint["hashed_message"].native)


def token_imprint(token: bytes, algorithm: str = "sha256") -> bytes:
    """The `algorithm` imprint a token claims to cover, read without verifying anything (and
    without parsing the token's certificates, which costs milliseconds)."""
    try:
        info = _tst_info(asn1crypto.cms.ContentInfo.load(token))
    except (ValueError, TypeError, KeyError) as exc:
        raise TokenFormatError(f"the token is not CMS SignedData: {exc}") from exc
    return _imprint(info, algorithm)


def check_token(
    token: bytes, imprint: bytes, trust: Sequence[x509.Certificate], algorithm: str = "sha256"
) -> TokenInfo:
    """Verify an RFC 3161 token over `imprint` (an `algorithm` digest), with its TSA chained to
    `trust`.

    Raises a TimeStampError subclass naming the failed check.
    """
    ci, info = _load_token(token)
    if not hmac.compare_digest(_imprint(info, algorithm), imprint):
        raise TokenImprintError("the token time-stamps different data (messageImprint mismatch)")
    try:
        embedded = cms.certificates(ci)
    except cms.CmsError as exc:
        raise TokenFormatError(str(exc)) from exc
    try:
        # RFC 3161 §2.4.1: certificates may be omitted, so the TSA may also be one of the anchors.
        signer = cms.signer_certificate(ci, extra=trust)
    except cms.CmsError as exc:
        raise TokenCertificateError("the TSA certificate is neither in the token nor trusted") from exc
    try:
        cms.check_message_digest(ci)
        cms.check_signature(ci, signer)
        # RFC 3161 §2.4.1 (as updated by RFC 5816): the ESS signing certificate is mandatory.
        cms.check_signing_certificate_v2(ci, signer)
    except cms.CmsError as exc:
        raise TokenSignatureError(f"the token signature is invalid: {exc}") from exc
    eku = _eku(signer)
    # RFC 3161 §2.3: exactly the one purpose id-kp-timeStamping, in a critical extension.
    if eku is None or list(eku.value) != [ExtendedKeyUsageOID.TIME_STAMPING] or not eku.critical:
        raise TokenCertificateError(
            "the TSA certificate must carry only the critical extended key usage timeStamping"
        )
    gen_time: datetime = info["gen_time"].native
    try:
        cms.validate_chain(
            signer, intermediates=embedded, trust=trust, at=gen_time, all_intermediates_used=True
        )
    except cms.ChainError as exc:
        raise TokenCertificateError(f"the TSA certificate is not trusted: {exc}") from exc
    return TokenInfo(
        gen_time=gen_time.astimezone(UTC),
        policy=info["policy"].dotted,
        serial=int(info["serial_number"].native),
        tsa_subject=signer.subject.rfc4514_string(),
        nonce=None if info["nonce"].native is None else int(info["nonce"].native),
    )


def imprint_of(data: bytes) -> bytes:
    """SHA-256 of `data`: what a signature time-stamp imprints (RFC 3161 Appendix A)."""
    return hashlib.sha256(data).digest()


__all__ = [
    "DEFAULT_POLICY",
    "BuiltinTsa",
    "TimeStampError",
    "TimeStamper",
    "Token",
    "TokenInfo",
    "check_token",
    "imprint_of",
    "token_imprint",
]
