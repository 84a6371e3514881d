"""Is a submitted message S/MIME signed by its sender? (KEP.md, "signed sender")

Four checks are reported separately, because the rejection evidence must name the one that failed
(EN 319 522-2 §8.3.3, reason RA04 for the certificate ones):

* integrity: the CMS signature verifies over the signed content (RFC 5652 §5.4, §5.6),
* chain: the signer certificate chains to a trusted qualified CA (RFC 5280 §6.1, simplified),
* validity: the signer certificate is in force and fit for e-mail signatures (RFC 8550 §4.4), and
  not revoked at signing time by a CRL of the trust store (RFC 5280 §6.3),
* identity: the certificate names the submitting account (RFC 8550 §3).

The spool file may hold 100 MB, so the signed part of a multipart/signed message is read and hashed
slice by slice, never held whole. OCSP is not consulted: CRLs come from the trust store.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import asn1crypto.cms
import asn1crypto.core
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kepmta.message import transfer
from kepmta.message.buffer import Buffer, FileBuffer, hash_range
from kepmta.message.content import parse_content_type
from kepmta.message.header import Header, read_header
from kepmta.message.multipart import MultipartError, strict_parts
from kepmta.policy.identity import is_national_id
from kepmta.smime import cms
from kepmta.smime.errors import MimeStructureError, NotSignedError, SmimeError

__all__ = ["CHECKS", "NOT_SIGNED", "SenderVerdict", "SignatureCheck", "verify_sender"]

CHECKS = ("integrity", "chain", "validity", "identity")

# RFC 8551 §3.5.3 and §3.2.2; the x- forms are what older clients, OpenSSL's `smime` among them, send.
_SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
_OPAQUE_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
# RFC 8551 §2.1: SHA-256 must be supported; SHA-1 and MD5 are no longer acceptable for signatures.
_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# A header block larger than this is not a mail message; it would otherwise be copied into memory.
_HEADER_LIMIT = 1 << 20
_MAX_CHAIN = 8
NOT_SIGNED = "message is not S/MIME signed"
_E = TypeVar("_E", bound=x509.ExtensionType)


@dataclass(frozen=True)
class SignatureCheck:
    name: str  # one of CHECKS
    ok: bool
    detail: str


@dataclass(frozen=True)
class SenderVerdict:
    checks: tuple[SignatureCheck, ...]  # the four of CHECKS, in that order
    signer: x509.Certificate | None
    signing_time: datetime | None

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> SignatureCheck | None:
        return next((check for check in self.checks if not check.ok), None)


@dataclass(frozen=True)
class _Signature:
    info: asn1crypto.cms.ContentInfo
    content: bytes | None  # the encapsulated content (application/pkcs7-mime)
    span: tuple[int, int]  # else the first part of multipart/signed, as offsets into the message


@dataclass(frozen=True)
class SignerIdentity:
    """Who must have signed: the account's address, and what else identifies its holder."""

    address: str
    registered_cert: x509.Certificate | None = None  # the account's registered signing certificate
    national_id: str | None = None  # T.C. kimlik no, carried as the certificate's serialNumber


def verify_sender(
    path: Path,
    sender: str | SignerIdentity,
    trust: Sequence[x509.Certificate],
    now: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> SenderVerdict:
    """Run the four checks on the message in `path`, submitted by account `sender`, at time `now`.

    `crls` are revocation lists of the trusted CAs (from the trust store); a signer certificate
    revoked before it signed fails the validity check."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    identity = sender if isinstance(sender, SignerIdentity) else SignerIdentity(sender)
    with path.open("rb") as f:
        return _verdict(FileBuffer(f.fileno()), identity, trust, crls, now)


def _verdict(
    buf: Buffer,
    sender: SignerIdentity,
    trust: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    now: datetime,
) -> SenderVerdict:
    signer: x509.Certificate | None = None
    signing_time: datetime | None = None
    pool: list[x509.Certificate] = []
    try:
        signature = _read_signature(buf)
        signer_info = _only_signer(signature.info)
        pool = cms.certificates(signature.info)
        signer = _signer_certificate(signature.info)
        signing_time = _signing_time(signature.info)
        _verify(signature, signer_info, signer, buf)
        integrity = SignatureCheck("integrity", True, f"signature by {_label(signer.subject)} is intact")
    except SmimeError as exc:
        integrity = SignatureCheck("integrity", False, str(exc))
    except ValueError as exc:  # CmsError, and asn1crypto/cryptography parse errors
        integrity = SignatureCheck("integrity", False, f"signature could not be read: {exc}")
    if signer is None:
        why = f"not checked: there is no signer certificate ({integrity.detail})"
        rest = tuple(SignatureCheck(name, False, why) for name in CHECKS[1:])
        return SenderVerdict((integrity, *rest), None, signing_time)
    cert = signer
    checks = (
        integrity,
        _guarded("chain", lambda: _check_chain(cert, pool, trust, now)),
        _guarded("validity", lambda: _check_validity(cert, signing_time, now, [*pool, *trust], crls)),
        _guarded("identity", lambda: _check_identity(cert, sender)),
    )
    return SenderVerdict(checks, signer, signing_time)


def _guarded(name: str, check: Callable[[], SignatureCheck]) -> SignatureCheck:
    # The certificates come from the submitter; a malformed extension, or a key of a kind
    # cryptography does not know (UnsupportedAlgorithm), must fail the check, not the submission
    # handler.
    try:
        return check()
    except (ValueError, UnsupportedAlgorithm) as exc:
        return SignatureCheck(name, False, f"a certificate could not be read: {exc}")


# -- finding the signature -------------------------------------------------------------------------


def _read_signature(buf: Buffer) -> _Signature:
    limit = min(len(buf), _HEADER_LIMIT)
    head = read_header(buf, 0, limit)
    body = head.body_start
    if body == limit < len(buf):
        raise MimeStructureError("message header block does not end within 1 MiB")
    ctype = parse_content_type(head.get("Content-Type"))
    if ctype.mime_type == "multipart/signed":
        if (ctype.param("protocol") or "").lower() not in _SIGNATURE_TYPES:
            raise NotSignedError(NOT_SIGNED)
        return _detached(buf, ctype.boundary, body)
    if ctype.mime_type in _OPAQUE_TYPES:
        # RFC 8551 §3.2.2: smime-type tells signed-data from enveloped-data. It is optional, so
        # without it the body must still parse as SignedData below.
        smime_type = ctype.param("smime-type")
        if smime_type is not None and smime_type.lower() != "signed-data":
            raise NotSignedError(NOT_SIGNED)
        info = _load(_decode(head, buf[body : len(buf)], "message body"))
        content = cms.encapsulated_content(info)
        if content is None:
            raise SmimeError("application/pkcs7-mime signature carries no content")
        return _Signature(info, content, (0, 0))
    raise NotSignedError(NOT_SIGNED)


def _detached(buf: Buffer, boundary: str | None, body: int) -> _Signature:
    if not boundary:
        raise MimeStructureError("multipart/signed header has no boundary parameter")
    try:
        parts = strict_parts(buf, body, len(buf), boundary)
    except MultipartError as exc:
        raise MimeStructureError(str(exc)) from exc
    # RFC 1847 §2.1: exactly two parts, the content and then the control information.
    if len(parts) != 2:
        raise MimeStructureError(f"multipart/signed has {len(parts)} body parts instead of 2")
    start, end = parts[1]
    sig_head = read_header(buf, start, end)
    sig_type = parse_content_type(sig_head.get("Content-Type")).mime_type
    if sig_type not in _SIGNATURE_TYPES:
        raise MimeStructureError(
            f"second part of multipart/signed is {sig_type}, not application/pkcs7-signature"
        )
    info = _load(_decode(sig_head, buf[sig_head.body_start : end], "signature part"))
    if cms.encapsulated_content(info) is not None:
        raise SmimeError("multipart/signed carries an attached signature instead of a detached one")
    return _Signature(info, None, parts[0])


def _decode(head: Header, body: bytes, what: str) -> bytes:
    encoding = (head.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if encoding == "base64":
        try:
            # RFC 2045 §6.8: line breaks and other whitespace are not part of the encoding.
            return transfer.strict_base64(body)
        except binascii.Error as exc:
            raise MimeStructureError(f"{what} is not valid base64") from exc
    if encoding in ("7bit", "8bit", "binary"):
        return body
    raise MimeStructureError(f"{what} uses transfer encoding {encoding}, not base64")


def _load(der: bytes) -> asn1crypto.cms.ContentInfo:
    try:
        return cms.load(der)
    except cms.CmsError as exc:
        raise SmimeError("signature is not a CMS SignedData structure") from exc


# -- integrity -------------------------------------------------------------------------------------


def _signing_time(info: asn1crypto.cms.ContentInfo) -> datetime | None:
    value = cms.signed_attribute(info, "signing_time")
    if value is None:
        return None
    when: datetime = value.native
    return when.astimezone(UTC)


def _only_signer(info: asn1crypto.cms.ContentInfo) -> asn1crypto.cms.SignerInfo:
    # One message, one accountable sender: a second signer would not be checked against the account.
    signers = info["content"]["signer_infos"]
    if len(signers) != 1:
        raise SmimeError(f"signature has {len(signers)} signers; exactly one is required")
    signer: asn1crypto.cms.SignerInfo = signers[0]
    return signer


def _signer_certificate(info: asn1crypto.cms.ContentInfo) -> x509.Certificate:
    try:
        return cms.signer_certificate(info)
    except cms.CmsError as exc:
        raise SmimeError("signature does not include the signer's certificate") from exc


def _verify(
    signature: _Signature, info: asn1crypto.cms.SignerInfo, signer: x509.Certificate, buf: Buffer
) -> None:
    algorithm = info["digest_algorithm"]["algorithm"].native
    if algorithm not in _DIGESTS:
        raise SmimeError(f"digest algorithm {algorithm} is not SHA-256, SHA-384 or SHA-512")
    hasher = hashlib.new(algorithm)
    if signature.content is not None:
        hasher.update(signature.content)
    else:
        hash_range(buf, *signature.span, hasher)
    content_digest = hasher.digest()

    attrs = info["signed_attrs"]
    if isinstance(attrs, asn1crypto.core.Void) or len(attrs) == 0:
        # RFC 5652 §5.4: without signed attributes the signature covers the content digest itself.
        _check_signature_value(info, signer, algorithm, content_digest)
        return
    claimed = cms.signed_attribute(signature.info, "message_digest")
    if claimed is None:
        raise SmimeError("signature has no message-digest attribute")
    if not hmac.compare_digest(bytes(claimed.native), content_digest):
        raise SmimeError("message digest does not match the signed content: the message was altered")
    ctype = cms.signed_attribute(signature.info, "content_type")
    # RFC 5652 §11.1: with signed attributes, content-type must be present and equal eContentType.
    if (
        ctype is None
        or ctype.dotted != signature.info["content"]["encap_content_info"]["content_type"].dotted
    ):
        raise SmimeError("content-type attribute is missing or differs from the signed content type")
    # RFC 5652 §5.4: the signature covers the attributes' DER as SET OF (tag 0x31), not the [0]
    # IMPLICIT tag they travel under; re-tagging the received bytes keeps the signer's encoding.
    attrs_digest = hashlib.new(algorithm, b"\x31" + attrs.dump()[1:]).digest()
    _check_signature_value(info, signer, algorithm, attrs_digest)


def _check_signature_value(
    info: asn1crypto.cms.SignerInfo, signer: x509.Certificate, algorithm: str, digest: bytes
) -> None:
    try:
        key = signer.public_key()
    except UnsupportedAlgorithm as exc:
        raise SmimeError(f"the signer certificate's key is not supported: {exc}") from exc
    value = bytes(info["signature"].native)
    signed_with = info["signature_algorithm"]
    try:
        scheme = signed_with.signature_algo
    except ValueError as exc:
        raise SmimeError(f"signature algorithm {signed_with['algorithm'].dotted} is not supported") from exc
    prehashed = Prehashed(_DIGESTS[algorithm]())
    try:
        if scheme == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(value, digest, ec.ECDSA(prehashed))
        elif scheme == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
            key.verify(value, digest, padding.PKCS1v15(), prehashed)
        elif scheme == "rsassa_pss" and isinstance(key, rsa.RSAPublicKey):
            key.verify(value, digest, _pss(signed_with["parameters"], algorithm), prehashed)
        else:
            raise SmimeError(f"signature scheme {scheme} does not fit the signer certificate's key")
    except InvalidSignature as exc:
        raise SmimeError("signature value does not verify with the signer certificate's key") from exc
    except UnsupportedAlgorithm as exc:
        raise SmimeError(f"signature scheme {scheme} is not supported: {exc}") from exc


def _pss(params: asn1crypto.core.Asn1Value, algorithm: str) -> padding.PSS:
    # RFC 4055 §3.1: the PSS hash must be the one the signer digested with; MGF1 is the only mask.
    if params["hash_algorithm"]["algorithm"].native != algorithm:
        raise SmimeError("RSASSA-PSS hash differs from the digest algorithm")
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1" or mgf["parameters"]["algorithm"].native not in _DIGESTS:
        raise SmimeError("RSASSA-PSS mask generation is not MGF1 with SHA-2")
    mgf_hash = _DIGESTS[mgf["parameters"]["algorithm"].native]()
    return padding.PSS(mgf=padding.MGF1(mgf_hash), salt_length=params["salt_length"].native)


# -- certificates ----------------------------------------------------------------------------------


def _label(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={cns[0].value!s}" if cns else name.rfc4514_string()


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _issued_by(cert: x509.Certificate, candidates: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The candidate whose name is `cert`'s issuer and whose key verifies `cert`'s signature."""
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        if _signed_by(cert, candidate):
            return candidate
    return None


# A submitter's chain and the trust store's CRLs are the same message after message, and each
# signature check on them is a public-key operation (milliseconds over a large CRL), each CRL
# lookup a scan of the whole list. The answers depend on the octets alone, so they are
# remembered; errors are not. Certificates compare and hash by their contents, so one with the
# same names and another key or signature is another entry.


@lru_cache(maxsize=256)
def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s key verifies the signature on `cert` (RFC 5280 §6.1.3 (a)(1))."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        # UnsupportedAlgorithm: the issuer's key is of a kind (say, a curve) cryptography does not
        # know; it verifies nothing, as cms._issued_by has it.
        return False
    return True


class _SameCrl:
    """A CRL as a cache key, by identity: CRL objects have no hash, and the trust store keeps its
    CRLs while it is in use. The key holds its CRL, so the id is not reused while cached, and the
    caches below hold a bounded number of CRLs."""

    __slots__ = ("crl",)

    def __init__(self, crl: x509.CertificateRevocationList) -> None:
        self.crl = crl

    def __hash__(self) -> int:
        return id(self.crl)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SameCrl) and other.crl is self.crl


@lru_cache(maxsize=64)
def _crl_signed_by(crl: _SameCrl, key_der: bytes) -> bool:
    """Whether the public key (SubjectPublicKeyInfo DER) verifies the CRL's signature."""
    key = serialization.load_der_public_key(key_der)
    return crl.crl.is_signature_valid(key)  # type: ignore[arg-type]


@lru_cache(maxsize=1024)
def _crl_entry(crl: _SameCrl, serial: int) -> x509.RevokedCertificate | None:
    return crl.crl.get_revoked_certificate_by_serial_number(serial)


def _ca_problem(ca: x509.Certificate, below: int, now: datetime) -> str | None:
    """Why `ca` may not issue here, `below` CA certificates under it in the path (RFC 5280 §6.1.4)."""
    label = _label(ca.subject)
    if now < ca.not_valid_before_utc:
        return f"CA certificate {label} is not valid until {_iso(ca.not_valid_before_utc)}"
    if now > ca.not_valid_after_utc:
        return f"CA certificate {label} expired on {_iso(ca.not_valid_after_utc)}"
    constraints = _extension(ca, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        return f"issuing certificate {label} is not a CA certificate"
    if constraints.path_length is not None and below > constraints.path_length:
        return f"CA certificate {label} allows {constraints.path_length} CAs below it, not {below}"
    usage = _extension(ca, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        return f"CA certificate {label} may not sign certificates"
    return None


def _check_chain(
    signer: x509.Certificate,
    pool: Sequence[x509.Certificate],
    trust: Sequence[x509.Certificate],
    now: datetime,
) -> SignatureCheck:
    # The signer's own dates belong to the validity check, so that an expired certificate is
    # reported as such and not as a broken chain.
    path = [signer]
    while len(path) <= _MAX_CHAIN:
        current = path[-1]
        anchor = _issued_by(current, trust)
        if anchor is not None:
            problem = _ca_problem(anchor, len(path) - 1, now)
            if problem is not None:
                return SignatureCheck("chain", False, problem)
            return SignatureCheck("chain", True, f"chains to trusted CA {_label(anchor.subject)}")
        issuer = _issued_by(current, [c for c in pool if c not in path])
        if issuer is None:
            if current is signer and current.issuer == current.subject:
                detail = "signer certificate is self-signed, not issued by a trusted qualified CA"
            else:
                detail = f"issuer {_label(current.issuer)} is not a trusted qualified CA"
            return SignatureCheck("chain", False, detail)
        problem = _ca_problem(issuer, len(path) - 1, now)
        if problem is not None:
            return SignatureCheck("chain", False, problem)
        path.append(issuer)
    return SignatureCheck("chain", False, f"certificate chain is longer than {_MAX_CHAIN} certificates")


def _revoked(
    signer: x509.Certificate,
    issuers: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    at: datetime,
    now: datetime,
) -> str | None:
    """Why the signer certificate counts as revoked at `at`, per a CRL of its issuer; else None."""
    for crl in crls:
        if crl.issuer != signer.issuer:
            continue
        # RFC 5280 §6.3.3 (f): the CRL must be signed by the certificate's issuer
        keys = [c.public_key() for c in issuers if c.subject == crl.issuer]
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if not any(
            _crl_signed_by(_SameCrl(crl), k.public_bytes(serialization.Encoding.DER, spki)) for k in keys
        ):
            continue
        next_update = crl.next_update_utc
        if next_update is not None and next_update < now:
            # RFC 5280 §6.3.3 (a): a CRL past its nextUpdate says nothing about the present
            return (
                f"the CRL of {_label(crl.issuer)} expired on {_iso(next_update)}; "
                "revocation cannot be checked"
            )
        entry = _crl_entry(_SameCrl(crl), signer.serial_number)
        if entry is not None and entry.revocation_date_utc <= at:
            return f"signer certificate was revoked on {_iso(entry.revocation_date_utc)}"
    return None


def _check_validity(
    signer: x509.Certificate,
    signing_time: datetime | None,
    now: datetime,
    issuers: Sequence[x509.Certificate] = (),
    crls: Sequence[x509.CertificateRevocationList] = (),
) -> SignatureCheck:
    start, end = signer.not_valid_before_utc, signer.not_valid_after_utc
    if now < start:
        return SignatureCheck("validity", False, f"signer certificate is not valid until {_iso(start)}")
    if now > end:
        return SignatureCheck("validity", False, f"signer certificate expired on {_iso(end)}")
    if signing_time is not None and not start <= signing_time <= end:
        return SignatureCheck(
            "validity",
            False,
            f"signing time {_iso(signing_time)} is outside the signer certificate's validity "
            f"({_iso(start)} to {_iso(end)})",
        )
    # RFC 8550 §4.4.2: a signing certificate's keyUsage, if present, must allow signatures.
    usage = _extension(signer, x509.KeyUsage)
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        return SignatureCheck(
            "validity",
            False,
            "signer certificate's key usage allows neither digitalSignature nor nonRepudiation",
        )
    # RFC 8550 §4.4.4: an extended key usage, if present, must allow e-mail protection.
    purposes = _extension(signer, x509.ExtendedKeyUsage)
    if purposes is not None and not {
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    } & set(purposes):
        return SignatureCheck(
            "validity", False, "signer certificate's extended key usage does not include emailProtection"
        )
    revoked = _revoked(signer, issuers, crls, signing_time or now, now)
    if revoked is not None:
        return SignatureCheck("validity", False, revoked)
    return SignatureCheck("validity", True, f"signer certificate is valid from {_iso(start)} to {_iso(end)}")


def _addresses(cert: x509.Certificate) -> list[str]:
    found: list[str] = []
    names = _extension(cert, x509.SubjectAlternativeName)
    if names is not None:
        found.extend(names.get_values_for_type(x509.RFC822Name))
    # RFC 8550 §3: emailAddress in the subject is the legacy place for the address.
    found.extend(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS))
    return list(dict.fromkeys(found))


def _serial_digits(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    # Turkish qualified certificates carry the T.C. kimlik no in serialNumber, some with a prefix.
    return "".join(ch for v in values for ch in str(v.value) if ch.isdigit())


def _check_identity(signer: x509.Certificate, identity: SignerIdentity) -> SignatureCheck:
    sender = identity.address
    if identity.registered_cert is not None and signer == identity.registered_cert:
        return SignatureCheck("identity", True, f"certificate is the one registered for {sender}")
    # Only a real T.C. kimlik no identifies anyone: a serialNumber of zeros or one whose check
    # digits are wrong matches no account, whatever was stored for it.
    serial = _serial_digits(signer)
    if identity.national_id and is_national_id(serial) and serial == identity.national_id:
        return SignatureCheck("identity", True, f"certificate's serialNumber is the national id of {sender}")
    addresses = _addresses(signer)
    wanted = sender.strip().lower()
    if wanted in (a.lower() for a in addresses):
        return SignatureCheck("identity", True, f"certificate is for {sender}")
    if not addresses:
        return SignatureCheck(
            "identity", False, f"certificate names no e-mail address, so it is not {sender}"
        )
    return SignatureCheck("identity", False, f"certificate is for {', '.join(addresses)}, not {sender}")
