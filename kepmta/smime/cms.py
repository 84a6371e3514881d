"""CMS SignedData (RFC 5652) for signatures that OpenSSL and CAdES validators accept.

The DER is written directly (kepmta.smime.der) from per-certificate pieces prepared once, signed
with `cryptography`, and read back with asn1crypto, whose building from Python data costs
milliseconds per signature. Every signature carries the CAdES-B-B signed attributes (EN 319 122-1,
baseline level B-B); adding a signature time-stamp as an unsigned attribute turns it into CAdES-B-T
(EN 319 122-1 §5.3). The same module reads these
structures back for verification, so that signer, TSA and verifier share one interpretation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import asn1crypto.cms
import asn1crypto.core
import asn1crypto.tsp  # registers signingCertificateV2 and TSTInfo with asn1crypto.cms
import asn1crypto.x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kepmta.pki import KeyPair
from kepmta.smime import der

__all__ = [
    "SHA256_NULL",
    "ChainError",
    "CmsError",
    "DerContentInfo",
    "add_signature_timestamp",
    "add_unsigned_attribute",
    "certificates",
    "check_message_digest",
    "check_signature",
    "check_signing_certificate_v2",
    "check_structure",
    "encapsulated_content",
    "load",
    "sign",
    "signature_timestamp_token",
    "signature_value",
    "signed_attribute",
    "signer_certificate",
    "signer_info",
    "subject_der",
    "validate_chain",
    "without_certificates",
]


class CmsError(ValueError):
    """A CMS structure is malformed, or one of its cryptographic checks fails."""


def _encoded(value: Any) -> bytes:
    """The bytes a parsed asn1crypto value was read from (its DER encoding if it was built).

    asn1crypto 1.5's dump() takes any header whose last byte is 0x80 (a length of 128, 384, …) for
    an indefinite length and then re-encodes the whole subtree: seconds for a SignedData holding a
    time-stamp token, and different bytes for input that was not DER. Reading back the received
    bytes avoids both; building a value from Python data has no header yet, so dump() is safe.
    """
    if isinstance(value, asn1crypto.core.Choice):
        # A Choice has no encoding of its own beyond an optional explicit tag around the chosen one.
        if value._header is None:
            return bytes(value.dump())
        return bytes(value._header) + _encoded(value.chosen)
    contents = value.contents  # first: re-encoding a changed value clears its header
    header = value._header
    if header is None:
        return bytes(value.dump())
    return bytes(header + contents + value._trailer)


class DerContentInfo(asn1crypto.cms.ContentInfo):  # type: ignore[misc]
    """A ContentInfo whose dump() returns the bytes it was loaded from (see `_encoded`)."""

    def dump(self, force: bool = False) -> bytes:
        if not force:
            contents = self.contents  # first: re-encoding a changed value clears its header
            if self._header is not None:
                return bytes(self._header + contents + self._trailer)
        return bytes(super().dump(force))


def _asn1_cert(cert: x509.Certificate) -> asn1crypto.x509.Certificate:
    return asn1crypto.x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


# OIDs written into every signature, encoded once.
_DATA = "1.2.840.113549.1.7.1"  # RFC 5652 §4 id-data
_SIGNED_DATA = der.oid("1.2.840.113549.1.7.2")  # RFC 5652 §5.1 id-signedData
_CONTENT_TYPE = der.oid("1.2.840.113549.1.9.3")  # RFC 5652 §11.1
_MESSAGE_DIGEST = der.oid("1.2.840.113549.1.9.4")  # RFC 5652 §11.2
_SIGNING_TIME = der.oid("1.2.840.113549.1.9.5")  # RFC 5652 §11.3
_SIGNING_CERTIFICATE_V2 = der.oid("1.2.840.113549.1.9.16.2.47")  # RFC 5035 §3
# RFC 5754 §2 has verifiers accept id-sha256 with NULL parameters as well as absent ones; NULL is
# what these signatures have always carried, so the octets stay as they were.
SHA256_NULL = der.sequence(der.oid("2.16.840.1.101.3.4.2.1"), der.tlv(der.NULL, b""))
# RFC 5754 §3.3: ecdsa-with-SHA256 with the parameters absent.
_ECDSA_WITH_SHA256 = der.sequence(der.oid("1.2.840.10045.4.3.2"))
# RFC 5652 §5.1 digestAlgorithms: the one algorithm every signature here uses.
_DIGEST_ALGORITHMS = der.set_of((SHA256_NULL,))
_VERSION_1 = der.integer(1)
_VERSION_3 = der.integer(3)
_TBS_VERSION = 0xA0  # RFC 5280 §4.1: TBSCertificate version [0] EXPLICIT


@dataclass(frozen=True)
class _SignerParts:
    """The DER every signature by one certificate repeats, written once per certificate."""

    sid: bytes  # RFC 5652 §10.2.4 IssuerAndSerialNumber
    signing_certificate_v2: bytes  # the whole RFC 5035 attribute


@lru_cache(maxsize=256)
def _certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _tbs_fields(cert: x509.Certificate) -> list[bytes]:
    """TBSCertificate fields from serialNumber on, as encoded in the certificate (RFC 5280 §4.1).

    The issuer and subject are copied, never re-encoded: the sid and ESSCertIDv2 must match the
    certificate octet for octet.
    """
    tbs = der.elements(der.contents(_certificate_der(cert), der.SEQUENCE))[0]
    fields = der.elements(der.contents(tbs, der.SEQUENCE))
    return fields[1:] if fields[0][0] == _TBS_VERSION else fields  # absent means v1


def subject_der(cert: x509.Certificate) -> bytes:
    """The certificate's subject Name exactly as encoded in it."""
    return _tbs_fields(cert)[4]


@lru_cache(maxsize=256)
def _issuer_and_serial(cert: x509.Certificate) -> tuple[bytes, int]:
    """The issuer Name as encoded in the certificate, and its serialNumber (RFC 5280 §4.1.2.2)."""
    serial, _, issuer = _tbs_fields(cert)[:3]
    return issuer, int.from_bytes(der.contents(serial, der.INTEGER), "big", signed=True)


@lru_cache(maxsize=256)
def _key_identifier(cert: x509.Certificate) -> bytes | None:
    """The subjectKeyIdentifier (RFC 5280 §4.2.1.2), as asn1crypto reads it."""
    key_identifier: bytes | None = _asn1_cert(cert).key_identifier
    return key_identifier


@lru_cache(maxsize=64)
def _signer_parts(cert: x509.Certificate) -> _SignerParts:
    serial, _, issuer = _tbs_fields(cert)[:3]
    cert_der = _certificate_der(cert)
    # RFC 5035 ESSCertIDv2: hashAlgorithm stays at its DEFAULT (sha256), which DER omits
    # (X.690 §11.5); issuerSerial is GeneralNames { directoryName } plus the serial. directoryName
    # is [4] EXPLICIT because Name is a CHOICE (X.680 §31.2.7).
    ess_cert_id = der.sequence(
        der.octet_string(hashlib.sha256(cert_der).digest()),
        der.sequence(der.sequence(der.explicit(4, issuer)), serial),
    )
    return _SignerParts(
        sid=der.sequence(issuer, serial),
        # SigningCertificateV2 ::= SEQUENCE { certs SEQUENCE OF ESSCertIDv2 } (policies absent).
        signing_certificate_v2=_attribute(_SIGNING_CERTIFICATE_V2, der.sequence(der.sequence(ess_cert_id))),
    )


@lru_cache(maxsize=64)
def _certificate_set(cert: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> bytes:
    """certificates [0] IMPLICIT CertificateSet with the signer certificate and `chain`.

    RFC 5652 §10.2.3 CertificateSet is a SET OF: DER (X.690 §11.6) fixes the order, not the caller.
    """
    return der.implicit(0, der.set_of([_certificate_der(cert), *(_certificate_der(c) for c in chain)]))


def _attribute(attr_type: bytes, value: bytes) -> bytes:
    """RFC 5652 §5.3 Attribute with one value: SEQUENCE { attrType, SET OF { value } }."""
    return der.sequence(attr_type, der.set_of((value,)))


@lru_cache(maxsize=64)
def _content_type_attribute(dotted: str) -> bytes:
    """RFC 5652 §11.1 content-type attribute; it must match eContentType."""
    return _attribute(_CONTENT_TYPE, der.oid(dotted))


@lru_cache(maxsize=64)
def _content_type_oid(name: str) -> str:
    dotted: str = asn1crypto.cms.ContentType(name).dotted
    return dotted


@lru_cache(maxsize=64)
def _attribute_type_oid(name: str) -> str:
    dotted: str = asn1crypto.cms.CMSAttributeType(name).dotted
    return dotted


def _time(when: datetime) -> bytes:
    """RFC 5652 §11.3: UTCTime for 1950-2049, GeneralizedTime otherwise."""
    return der.utc_time(when) if 1950 <= when.year < 2050 else der.generalized_time(when)


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("signing_time must be timezone-aware")
    # RFC 5652 §11.3 writes signing-time to the second (YYMMDDHHMMSSZ); drop the rest here so
    # the attribute and any value the caller compares it with agree.
    return value.astimezone(UTC).replace(microsecond=0)


def sign(
    signer: KeyPair,
    *,
    content: bytes | None = None,
    content_digest: bytes | None = None,
    detached: bool,
    chain: Sequence[x509.Certificate] = (),
    content_type: str = "data",
    signing_time: datetime | None = None,
) -> asn1crypto.cms.ContentInfo:
    """Sign `content` (or its precomputed SHA-256 `content_digest`) as CAdES-B-B SignedData.

    `content_type` is an asn1crypto content type name ("data", "tst_info") or a dotted OID.
    A detached signature may be made from `content_digest` alone, so a caller can stream a large
    file through SHA-256 instead of holding it in memory.
    """
    if not detached and content is None:
        raise ValueError("an attached signature needs the content bytes")
    if content is None and content_digest is None:
        raise ValueError("give content or content_digest")
    digest = hashlib.sha256(content).digest() if content is not None else content_digest
    assert digest is not None
    if len(digest) != 32:
        raise ValueError("content_digest must be a 32-byte SHA-256 value")
    if content_digest is not None and not hmac.compare_digest(digest, content_digest):
        raise ValueError("content_digest is not the SHA-256 of content")
    when = _to_utc(signing_time or datetime.now(UTC))
    ctype = _content_type_oid(content_type)
    parts = _signer_parts(signer.cert)
    signed_attrs = der.set_of(
        (
            _content_type_attribute(ctype),
            # RFC 5652 §11.2
            _attribute(_MESSAGE_DIGEST, der.octet_string(digest)),
            # RFC 5652 §11.3; EN 319 122-1 requires it at CAdES-B-B.
            _attribute(_SIGNING_TIME, _time(when)),
            # RFC 5035 signingCertificateV2 (EN 319 122-1 B-B): binds the signer certificate to the signature.
            parts.signing_certificate_v2,
        )
    )
    # RFC 5652 §5.4: the signature covers the DER of the attributes as a SET OF (tag 0x31), not
    # the [0] IMPLICIT form in which they travel.
    signature = signer.key.sign(signed_attrs, ec.ECDSA(hashes.SHA256()))
    info = der.sequence(
        _VERSION_1,  # RFC 5652 §5.3: version 1 with issuerAndSerialNumber.
        parts.sid,
        SHA256_NULL,
        der.implicit(0, signed_attrs),
        _ECDSA_WITH_SHA256,
        der.octet_string(signature),
    )
    encap = der.oid(ctype)
    if not detached:
        assert content is not None
        # RFC 5652 §5.2: eContent [0] EXPLICIT OCTET STRING, whatever the content type; the octets
        # are the caller's, so the message digest covers exactly them.
        encap += der.explicit(0, der.octet_string(content))
    signed = der.sequence(
        # RFC 5652 §5.1: version 3 whenever eContentType is not id-data.
        _VERSION_1 if ctype == _DATA else _VERSION_3,
        _DIGEST_ALGORITHMS,
        der.sequence(encap),
        _certificate_set(signer.cert, tuple(chain)),
        der.set_of((info,)),
    )
    return _content_info(signed)


def load(data: bytes | asn1crypto.cms.ContentInfo) -> asn1crypto.cms.ContentInfo:
    """Parse DER into a ContentInfo holding SignedData, failing early with CmsError."""
    if isinstance(data, asn1crypto.cms.ContentInfo):
        ci = data
    else:
        try:
            ci = DerContentInfo.load(bytes(data), strict=True)
        except Exception as exc:  # asn1crypto raises ValueError, TypeError and others on bad input
            raise CmsError(f"not a DER CMS ContentInfo: {exc}") from exc
    try:
        if ci["content_type"].native != "signed_data":
            raise CmsError(f"content type is {ci['content_type'].native}, not signed-data")
        _parse_fields(ci["content"])
    except CmsError:
        raise
    except Exception as exc:  # asn1crypto parses lazily and raises several types on bad input
        raise CmsError(f"malformed SignedData: {exc}") from exc
    return ci


def _parse_fields(signed: asn1crypto.cms.SignedData) -> None:
    """Parse every field this module reads, so malformed input fails in `load`, not later.

    Not `.native` on the whole structure: that pushes nested attribute values through
    asn1crypto's re-encoding (see `_encoded`), which takes seconds with a time-stamp token inside.
    The larger fields are parsed as values of their own, from their octets (`_check_parses`), so
    the DEFAULT values asn1crypto fills in (certificate extensions, ESSCertIDv2) do not mark the
    received tree as changed, after which `_encoded` would re-encode it instead of returning the
    received bytes, slowly.
    """
    signed["version"].native  # noqa: B018 - the attribute access is the parse
    _check_members(signed["digest_algorithms"])
    certificates = signed["certificates"]
    if not isinstance(certificates, asn1crypto.core.Void):
        _check_members(certificates)
    encap = signed["encap_content_info"]
    encap["content_type"].native  # noqa: B018
    encap["content"].contents  # noqa: B018
    for info in signed["signer_infos"]:
        info["version"].native  # noqa: B018
        info["signature"].native  # noqa: B018
        for name in ("sid", "digest_algorithm", "signature_algorithm"):
            _check_parses(type(info[name]), _encoded(info[name]))
        signed_attrs = info["signed_attrs"]
        if not isinstance(signed_attrs, asn1crypto.core.Void):
            _check_members(signed_attrs)
        unsigned = info["unsigned_attrs"]
        if not isinstance(unsigned, asn1crypto.core.Void):
            for attr in unsigned:
                attr["type"].native  # noqa: B018
                len(attr["values"])


def _check_members(values: asn1crypto.core.SequenceOf) -> None:
    """Parse each member of a SET OF or SEQUENCE OF in full, as `.native` on all of it would."""
    for member in values:
        _check_parses(type(member), _encoded(member))


# Encodings up to this size have their full parse remembered; larger ones are parsed every time,
# so that what a client sends cannot make the cache hold much memory.
_PARSE_MEMO_LIMIT = 16 * 1024


def _check_parses(spec: Any, encoding: bytes) -> None:
    """Raise what asn1crypto raises if `encoding` does not parse in full as a value of the
    asn1crypto type `spec`."""
    if len(encoding) > _PARSE_MEMO_LIMIT:
        _parse_in_full(spec, encoding)
    else:
        _parse_in_full_once(spec, encoding)


def _parse_in_full(spec: Any, encoding: bytes) -> None:
    spec.load(encoding, strict=True).native  # noqa: B018 - the attribute access is the parse


# A submitter signs each message with the same certificates, algorithms and most signed
# attributes; their full parse (about a millisecond for a certificate chain) depends on the
# octets alone, so it is done once per distinct encoding. Failures are not cached.
_parse_in_full_once = lru_cache(maxsize=512)(_parse_in_full)


def check_structure(ci: asn1crypto.cms.ContentInfo) -> None:
    """The unsigned framing fields hold exactly what RFC 5652 prescribes for the profile `sign`
    produces: one signer, SHA-256, no attribute certificates.

    These fields are outside the signature, so a verifier that wants every byte accounted for
    must pin them: versions (RFC 5652 §5.1, §5.3) and the digest algorithm list (§5.1).
    """
    signed = ci["content"]
    info = signer_info(ci)
    ctype = signed["encap_content_info"]["content_type"].native
    sid_kind = info["sid"].name
    want_sd = "v1" if ctype == "data" and sid_kind == "issuer_and_serial_number" else "v3"
    if signed["version"].native != want_sd:
        raise CmsError(f"SignedData version is {signed['version'].native}, expected {want_sd}")
    want_si = "v1" if sid_kind == "issuer_and_serial_number" else "v3"
    if info["version"].native != want_si:
        raise CmsError(f"SignerInfo version is {info['version'].native}, expected {want_si}")
    algos = [(a["algorithm"].native, a["parameters"].native) for a in signed["digest_algorithms"]]
    own = (info["digest_algorithm"]["algorithm"].native, info["digest_algorithm"]["parameters"].native)
    if algos != [own] or own != ("sha256", None):
        raise CmsError(f"digestAlgorithms must list sha256 once, found {algos}")
    if info["signature_algorithm"]["parameters"].native is not None:
        raise CmsError("ecdsa-with-SHA256 takes no parameters (RFC 5754 §3.3)")


def signer_info(ci: asn1crypto.cms.ContentInfo) -> asn1crypto.cms.SignerInfo:
    """The one SignerInfo; our objects never carry more than one signer."""
    infos = ci["content"]["signer_infos"]
    if len(infos) != 1:
        raise CmsError(f"expected exactly one SignerInfo, found {len(infos)}")
    info: asn1crypto.cms.SignerInfo = infos[0]
    return info


def signature_value(ci: asn1crypto.cms.ContentInfo) -> bytes:
    """The SignerInfo signature octets: what a signature time-stamp imprints (EN 319 122-1 §5.3)."""
    layout = _walk(ci)
    if layout is not None:
        return der.contents(layout.signer_info[-1])  # RFC 5652 §5.3: signature, before unsignedAttrs
    return bytes(signer_info(ci)["signature"].native)


def encapsulated_content(ci: asn1crypto.cms.ContentInfo) -> bytes | None:
    """The attached content bytes, or None for a detached signature."""
    content = ci["content"]["encap_content_info"]["content"]
    if isinstance(content, asn1crypto.core.Void):
        return None
    if isinstance(content, asn1crypto.core.ParsableOctetString):
        # A parsed inner type (TSTInfo) still keeps the octets it was parsed from.
        return bytes(content)
    # OctetString.native joins the segments of a BER constructed encoding as well.
    return bytes(content.native)


def certificates(ci: asn1crypto.cms.ContentInfo) -> list[x509.Certificate]:
    """The X.509 certificates in the SignedData `certificates` field (a DER-sorted SET OF)."""
    out: list[x509.Certificate] = []
    certs = ci["content"]["certificates"]
    if isinstance(certs, asn1crypto.core.Void):
        return out
    for choice in certs:
        if choice.name == "certificate":
            try:
                out.append(x509.load_der_x509_certificate(_encoded(choice.chosen)))
            except (ValueError, x509.InvalidVersion) as exc:
                raise CmsError(f"an embedded certificate does not parse: {exc}") from exc
    return out


def signer_certificate(
    ci: asn1crypto.cms.ContentInfo, extra: Sequence[x509.Certificate] = ()
) -> x509.Certificate:
    """The certificate the SignerInfo's sid names (RFC 5652 §5.3).

    Looked for in the SignedData `certificates`, then in `extra` (certificates the caller already
    holds, for signatures that leave the signer certificate out).
    """
    sid = signer_info(ci)["sid"]
    for cert in (*certificates(ci), *extra):
        if sid.name == "issuer_and_serial_number":
            # Exact DER, not asn1crypto's case-folding Name equality: the sid is unsigned, so a
            # loose match would let its bytes change unnoticed.
            issuer, serial = _issuer_and_serial(cert)
            if issuer == _encoded(sid.chosen["issuer"]) and serial == sid.chosen["serial_number"].native:
                return cert
        elif sid.name == "subject_key_identifier" and _key_identifier(cert) == sid.chosen.native:
            return cert
    raise CmsError("the signer certificate is not in the SignedData certificates")


def signed_attribute(ci: asn1crypto.cms.ContentInfo, attr_type: str) -> Any:
    """The single value of signed attribute `attr_type` (asn1crypto name), or None if absent."""
    attrs = signer_info(ci)["signed_attrs"]
    if isinstance(attrs, asn1crypto.core.Void):
        return None
    found = [a for a in attrs if a["type"].native == attr_type]
    if not found:
        return None
    # RFC 5652 §11: these attributes are single-valued and may appear once only.
    if len(found) > 1 or len(found[0]["values"]) != 1:
        raise CmsError(f"signed attribute {attr_type} must occur once with one value")
    return found[0]["values"][0]


def check_message_digest(
    ci: asn1crypto.cms.ContentInfo, *, content: bytes | None = None, content_digest: bytes | None = None
) -> None:
    """RFC 5652 §5.6: the message-digest attribute equals SHA-256 of the content."""
    info = signer_info(ci)
    if info["digest_algorithm"]["algorithm"].native != "sha256":
        raise CmsError(f"digest algorithm {info['digest_algorithm']['algorithm'].native} is not sha256")
    if content is None and content_digest is None:
        content = encapsulated_content(ci)
        if content is None:
            raise CmsError("detached signature: the content is needed to check the digest")
    want = hashlib.sha256(content).digest() if content is not None else content_digest
    attr = signed_attribute(ci, "message_digest")
    if attr is None:
        raise CmsError("no message-digest signed attribute")
    assert want is not None
    if not hmac.compare_digest(bytes(attr.native), want):
        raise CmsError("message-digest attribute does not match the content")
    ctype = signed_attribute(ci, "content_type")
    # RFC 5652 §11.1: the content-type attribute must repeat eContentType.
    if ctype is None or ctype.dotted != ci["content"]["encap_content_info"]["content_type"].dotted:
        raise CmsError("content-type attribute missing or not equal to eContentType")


def check_signature(ci: asn1crypto.cms.ContentInfo, cert: x509.Certificate) -> None:
    """RFC 5652 §5.6: the signature over the DER SET OF signed attributes verifies with `cert`."""
    info = signer_info(ci)
    attrs = info["signed_attrs"]
    if isinstance(attrs, asn1crypto.core.Void):
        raise CmsError("no signed attributes")
    algo = info["signature_algorithm"]["algorithm"].native
    if algo != "sha256_ecdsa":
        raise CmsError(f"signature algorithm {algo} is not ecdsa-with-SHA256")
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise CmsError(f"the signer public key is unusable: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CmsError("the signer key is not an ECDSA key")
    # Re-tag the received [0] IMPLICIT bytes as SET OF without re-encoding them, so the check runs
    # over exactly what arrived (RFC 5652 §5.4).
    to_check = b"\x31" + _encoded(attrs)[1:]
    try:
        key.verify(bytes(info["signature"].native), to_check, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise CmsError("the signature does not verify with the signer certificate") from exc


def check_signing_certificate_v2(ci: asn1crypto.cms.ContentInfo, cert: x509.Certificate) -> None:
    """RFC 5035 signingCertificateV2: its first ESSCertIDv2 identifies `cert`."""
    attr = signed_attribute(ci, "signing_certificate_v2")
    if attr is None:
        raise CmsError("no signingCertificateV2 signed attribute")
    ids = attr["certs"]
    if len(ids) == 0:
        raise CmsError("signingCertificateV2 lists no certificate")
    first = ids[0]
    algo = first["hash_algorithm"]["algorithm"].native
    if algo not in ("sha256", "sha384", "sha512"):
        raise CmsError(f"signingCertificateV2 hash algorithm {algo} is not accepted")
    der = cert.public_bytes(serialization.Encoding.DER)
    if not hmac.compare_digest(hashlib.new(algo, der).digest(), bytes(first["cert_hash"].native)):
        raise CmsError("signingCertificateV2 hash does not match the signer certificate")
    serial = first["issuer_serial"]
    if not isinstance(serial, asn1crypto.core.Void):
        a = _asn1_cert(cert)
        names = [g.chosen for g in serial["issuer"] if g.name == "directory_name"]
        if serial["serial_number"].native != a.serial_number or a.issuer not in names:
            raise CmsError("signingCertificateV2 issuerSerial does not match the signer certificate")


def add_unsigned_attribute(
    ci: asn1crypto.cms.ContentInfo, attr_type: str, value: bytes | asn1crypto.core.Asn1Value
) -> asn1crypto.cms.ContentInfo:
    """A copy of `ci` whose SignerInfo carries one more unsigned attribute.

    `attr_type` is an asn1crypto attribute name or a dotted OID; `value` is the attribute value as
    DER or as an asn1crypto object. Unsigned attributes sit outside the signature (RFC 5652
    §5.3), so adding one leaves the signature valid. The attribute is spliced in: only the
    SignerInfo and the lengths enclosing it are written anew, every other field, signed or not, is
    carried over as received.
    """
    layout = _walk(ci) or _parsed_layout(ci)
    value_der = value if isinstance(value, bytes) else _encoded(value)
    attribute = _attribute(der.oid(_attribute_type_oid(attr_type)), value_der)
    # RFC 5652 §5.3: unsignedAttrs [1] IMPLICIT SET OF Attribute, the last SignerInfo field.
    unsigned = der.implicit(1, der.set_of([*layout.unsigned, attribute]))
    signer_infos = der.set_of((der.sequence(*layout.signer_info, unsigned),))
    return _content_info(der.sequence(layout.signed_data, signer_infos))


def add_signature_timestamp(
    ci: asn1crypto.cms.ContentInfo, token: asn1crypto.cms.ContentInfo | bytes
) -> asn1crypto.cms.ContentInfo:
    """Attach an RFC 3161 token as id-aa-signatureTimeStampToken: CAdES-B-T (EN 319 122-1 §5.3).

    The caller obtains `token` over SHA-256(signature_value(ci)) (RFC 3161 Appendix A).
    """
    der_token = _encoded(token) if isinstance(token, asn1crypto.cms.ContentInfo) else bytes(token)
    # Refuse anything not framed as SignedData before it goes into the evidence. Its fields are
    # read down to their headers only: the token's content and signature are the verifier's to
    # check (`check_token`), and reading them all here would cost more than the rest together.
    # A token as TSAs write it passes the walk; anything else is read by asn1crypto.
    try:
        _layout(der_token)
    except der.DerError:
        token_fields = _signed_data(der_token)
        with _malformed():
            for name, _, _ in asn1crypto.cms.SignedData._fields:
                token_fields[name]  # the item access is the parse
    return add_unsigned_attribute(ci, "signature_time_stamp_token", der_token)


@contextmanager
def _malformed() -> Iterator[None]:
    """Turn what asn1crypto raises on input that does not parse into CmsError."""
    try:
        yield
    except CmsError:
        raise
    except Exception as exc:  # asn1crypto parses lazily and raises several types on bad input
        raise CmsError(f"malformed SignedData: {exc}") from exc


def _signed_data(ci: asn1crypto.cms.ContentInfo | bytes) -> asn1crypto.cms.SignedData:
    """The SignedData in `ci`, parsed no further than its own header (RFC 5652 §3, §5.1)."""
    if not isinstance(ci, asn1crypto.cms.ContentInfo):
        try:
            ci = DerContentInfo.load(bytes(ci), strict=True)
        except Exception as exc:  # asn1crypto raises ValueError, TypeError and others on bad input
            raise CmsError(f"not a DER CMS ContentInfo: {exc}") from exc
    with _malformed():
        if ci["content_type"].native != "signed_data":
            raise CmsError(f"content type is {ci['content_type'].native}, not signed-data")
        signed: asn1crypto.cms.SignedData = ci["content"]
        return signed


def _reassemble(signed: asn1crypto.cms.SignedData, replace: dict[str, bytes]) -> DerContentInfo:
    """ContentInfo around `signed` with fields replaced by the given DER (b"" drops an optional one).

    Every other field is carried over as received (see `_encoded`), never re-encoded.
    """
    with _malformed():
        body = [
            replace[name] if name in replace else _encoded(signed[name])
            for name, _, _ in asn1crypto.cms.SignedData._fields
            if name in replace or not isinstance(signed[name], asn1crypto.core.Void)
        ]
    return _content_info(der.sequence(*body))


def _content_info(signed_data: bytes) -> DerContentInfo:
    """ContentInfo around SignedData DER (RFC 5652 §3); loading it parses the outer header only."""
    result: DerContentInfo = DerContentInfo.load(der.sequence(_SIGNED_DATA, der.explicit(0, signed_data)))
    return result


# -- our own objects, read without asn1crypto --------------------------------------------------------

# RFC 3161 Appendix A: id-aa-timeStampToken, the contents octets of the OID.
_TIME_STAMP_TOKEN = der.contents(der.oid("1.2.840.113549.1.9.16.2.14"))
# The identifier octets of the fields, in order, of SignedData (RFC 5652 §5.1: version,
# digestAlgorithms, encapContentInfo, [0] certificates, [1] crls, signerInfos) and SignerInfo
# (§5.3: version, sid as issuerAndSerialNumber or [0] subjectKeyIdentifier, digestAlgorithm,
# [0] signedAttrs, signatureAlgorithm, signature, [1] unsignedAttrs).
_SIGNED_DATA_FIELDS = re.compile(b"\x02\x31\x30\xa0?\xa1?\x31")
_SIGNER_INFO_FIELDS = re.compile(b"\x02[\x30\x80]\x30\xa0?\x30\x04\xa1?")
_EXPLICIT_0 = 0xA0
_UNSIGNED_ATTRS = 0xA1
# X.690 §8.19.2: a subidentifier whose first octet is 0x80 is not in the fewest octets.
_PADDED_SUBIDENTIFIER = re.compile(b"(?:^|[\x00-\x7f])\x80")


@dataclass(frozen=True)
class _Layout:
    """The encodings of the fields of a SignedData with one SignerInfo (RFC 5652 §5.1, §5.3)."""

    signed_data: bytes  # the SignedData fields before signerInfos, one after the other
    signer_info: list[bytes]  # the SignerInfo fields before unsignedAttrs
    unsigned: list[bytes]  # the unsigned attributes, each an Attribute SEQUENCE


def _inside(data: bytes, span: tuple[int, int, int, int], identifier: int) -> list[tuple[int, int, int, int]]:
    """`der.spans` of the contents of `span`, which must have `identifier`."""
    if span[0] != identifier:
        raise der.DerError(f"identifier 0x{span[0]:02x} where 0x{identifier:02x} was expected")
    return der.spans(data, span[2], span[3])


def _layout(data: bytes) -> _Layout:
    """The fields of the ContentInfo DER `data`, read by a walk over the TLV headers.

    For objects we made or stored, where asn1crypto's parse costs tens of microseconds. The walk
    takes only input that reads one way: definite lengths, nothing after the end, one SignerInfo,
    every identifier where RFC 5652 puts it; asn1crypto reads the same fields from that. Anything
    else raises DerError, and the caller asks asn1crypto instead, so that unusual input gets the
    answer, or the error, it always got.
    """
    top = der.spans(data)
    if len(top) != 1:
        raise der.DerError("not one encoding")
    outer = _inside(data, top[0], der.SEQUENCE)  # RFC 5652 §3 ContentInfo
    if len(outer) != 2 or data[outer[0][1] : outer[0][3]] != _SIGNED_DATA:
        raise der.DerError("not a ContentInfo holding signed-data")
    wrapped = _inside(data, outer[1], _EXPLICIT_0)  # content [0] EXPLICIT
    if len(wrapped) != 1:
        raise der.DerError("content [0] does not hold one value")
    signed = _inside(data, wrapped[0], der.SEQUENCE)
    if not _SIGNED_DATA_FIELDS.fullmatch(bytes(field[0] for field in signed)):
        raise der.DerError("SignedData fields are not the RFC 5652 §5.1 ones")
    infos = _inside(data, signed[-1], der.SET)
    if len(infos) != 1:
        raise der.DerError("not one SignerInfo")
    info = _inside(data, infos[0], der.SEQUENCE)
    if not _SIGNER_INFO_FIELDS.fullmatch(bytes(field[0] for field in info)):
        raise der.DerError("SignerInfo fields are not the RFC 5652 §5.3 ones")
    unsigned = []
    if info[-1][0] == _UNSIGNED_ATTRS:
        unsigned = _inside(data, info.pop(), _UNSIGNED_ATTRS)
    if any(attr[0] != der.SEQUENCE for attr in unsigned):
        raise der.DerError("an unsigned attribute is not a SEQUENCE")
    return _Layout(
        signed_data=data[signed[0][1] : signed[-1][1]],
        signer_info=[data[field[1] : field[3]] for field in info],
        unsigned=[data[attr[1] : attr[3]] for attr in unsigned],
    )


def _walk(ci: asn1crypto.cms.ContentInfo) -> _Layout | None:
    """`_layout` of the octets `ci` was loaded from, while none of it has been parsed (so none
    of it has been changed); None otherwise, or for what the walk leaves to asn1crypto."""
    if ci.children is not None or ci._header is None:
        return None
    try:
        return _layout(bytes(ci._header + ci._contents + ci._trailer))
    except der.DerError:
        return None


def _parsed_layout(ci: asn1crypto.cms.ContentInfo) -> _Layout:
    """`_layout` read by asn1crypto, field by field; CmsError if `ci` is malformed."""
    signed = _signed_data(ci)
    with _malformed():
        infos = signed["signer_infos"]
        if len(infos) != 1:
            raise CmsError(f"expected exactly one SignerInfo, found {len(infos)}")
        info = infos[0]
        existing = info["unsigned_attrs"]
        unsigned = [] if isinstance(existing, asn1crypto.core.Void) else [_encoded(a) for a in existing]
        # Field by field: asn1crypto marks a value it filled with a DEFAULT while being read as
        # changed, and re-encoding a whole changed tree through it takes far longer than signing.
        signer_info = [
            _encoded(info[name])
            for name, _, _ in asn1crypto.cms.SignerInfo._fields
            if name != "unsigned_attrs" and not isinstance(info[name], asn1crypto.core.Void)
        ]
        signed_data = b"".join(
            _encoded(signed[name])
            for name, _, _ in asn1crypto.cms.SignedData._fields
            if name != "signer_infos" and not isinstance(signed[name], asn1crypto.core.Void)
        )
    return _Layout(signed_data, signer_info, unsigned)


def _time_stamp_token(layout: _Layout) -> bytes | None:
    """What `signature_timestamp_token` finds, read from `layout` (DerError: ask asn1crypto)."""
    for attr in layout.unsigned:
        # RFC 5652 §5.3 Attribute ::= SEQUENCE { attrType, attrValues SET OF }
        fields = _inside(attr, der.spans(attr)[0], der.SEQUENCE)
        if len(fields) != 2 or fields[0][0] != der.OID or fields[1][0] != der.SET:
            raise der.DerError("not an Attribute")
        attr_type = attr[fields[0][2] : fields[0][3]]
        if attr_type == _TIME_STAMP_TOKEN:
            values = der.spans(attr, fields[1][2], fields[1][3])
            if values:
                if values[0][0] != der.SEQUENCE:
                    raise der.DerError("the time-stamp token is not a ContentInfo")
                return attr[values[0][1] : values[0][3]]
        # asn1crypto compares the OID it decodes, which padded octets can spell like ours.
        elif not attr_type or attr_type[-1] & 0x80 or _PADDED_SUBIDENTIFIER.search(attr_type):
            raise der.DerError("an attribute type that is not in DER")
    return None


def signature_timestamp_token(ci: asn1crypto.cms.ContentInfo) -> bytes | None:
    """DER of the first signature time-stamp token in the unsigned attributes, if any."""
    layout = _walk(ci)
    if layout is not None:
        try:
            return _time_stamp_token(layout)
        except der.DerError:
            pass  # an attribute the walk does not read: asn1crypto gives the answer below
    attrs = signer_info(ci)["unsigned_attrs"]
    if isinstance(attrs, asn1crypto.core.Void):
        return None
    for attr in attrs:
        if attr["type"].native == "signature_time_stamp_token" and len(attr["values"]) >= 1:
            return _encoded(attr["values"][0])
    return None


def is_time_stamped(der: bytes) -> bool:
    """Whether our own signature `der` carries its signature time-stamp (CAdES-B-T).

    For objects this process made or stored: only the path to the unsigned attributes is read
    (load's full check of certificates and attributes costs milliseconds per call), by the walk
    of `_layout` when `der` has the shape `sign` writes."""
    return signature_timestamp_token(DerContentInfo.load(der)) is not None


def without_certificates(ci: asn1crypto.cms.ContentInfo) -> asn1crypto.cms.ContentInfo:
    """A copy of `ci` with the `certificates` field left out.

    The field sits outside the signature (RFC 5652 §5.1), so the signature stays valid; RFC 3161
    §2.4.1 needs this when a requester sets certReq to false.
    """
    return _reassemble(_signed_data(ci), {"certificates": b""})


class ChainError(CmsError):
    """A certificate does not chain to a trust anchor, or is not valid at the time asked."""


_MAX_PATH = 8


def _valid_at(cert: x509.Certificate, at: datetime) -> bool:
    return cert.not_valid_before_utc <= at <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    """RFC 5280 §4.2.1.9 / §4.2.1.3: an issuer must be a CA allowed to sign certificates."""
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return False
    except ValueError:  # extensions that do not parse
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def validate_chain(
    cert: x509.Certificate,
    *,
    intermediates: Sequence[x509.Certificate],
    trust: Sequence[x509.Certificate],
    at: datetime,
    all_intermediates_used: bool = False,
) -> list[x509.Certificate]:
    """The path from `cert` up to a certificate in `trust`, each link checked at time `at`.

    A deliberately small RFC 5280 §6 subset for our own closed PKIs: issuer/subject linkage,
    signatures, validity at `at`, and CA basic constraints with keyCertSign. Revocation is not
    checked here. Trust anchors are preferred over `intermediates` as issuers. With
    `all_intermediates_used`, every certificate in `intermediates` must be on the path or be a
    trust anchor: the certificates field of a SignedData is unsigned, so this is how a damaged or
    foreign certificate in it gets noticed. Raises ChainError naming the first failing link.
    """
    try:
        path = _build_path(cert, intermediates=intermediates, trust=trust, at=at.astimezone(UTC))
    except ValueError as exc:  # a certificate field that does not parse
        if isinstance(exc, ChainError):
            raise
        raise ChainError(f"a certificate on the path does not parse: {exc}") from exc
    if all_intermediates_used:
        unused = [c for c in intermediates if c not in path and c not in trust]
        if unused:
            names = ", ".join(c.subject.rfc4514_string() for c in unused)
            raise ChainError(f"certificates outside the signer's chain are included: {names}")
    return path


def _build_path(
    cert: x509.Certificate,
    *,
    intermediates: Sequence[x509.Certificate],
    trust: Sequence[x509.Certificate],
    at: datetime,
) -> list[x509.Certificate]:
    pool = [*trust, *intermediates]
    path = [cert]
    current = cert
    for _ in range(_MAX_PATH):
        if not _valid_at(current, at):
            raise ChainError(
                f"certificate {current.subject.rfc4514_string()} is not valid at {at:%Y-%m-%d %H:%M:%SZ} "
                f"(valid {current.not_valid_before_utc:%Y-%m-%d} to {current.not_valid_after_utc:%Y-%m-%d})"
            )
        if current in trust:
            return path
        issuers = [c for c in pool if c.subject == current.issuer and c != current and _is_ca(c)]
        issuer = next((c for c in issuers if _issued_by(current, c)), None)
        if issuer is None:
            raise ChainError(
                f"no trusted issuer found for {current.subject.rfc4514_string()} "
                f"(issuer {current.issuer.rfc4514_string()})"
            )
        path.append(issuer)
        current = issuer
    raise ChainError(f"certificate path longer than {_MAX_PATH}")
