"""CMS SignedData (RFC 5652) for signatures that OpenSSL and CAdES validators accept.

The structure is built with asn1crypto and signed with `cryptography`. Every signature carries the
CAdES-B-B signed attributes (EN 319 122-1, baseline level B-B); adding a signature time-stamp as an
unsigned attribute turns it into CAdES-B-T (EN 319 122-1 §5.3). The same module reads these
structures back for verification, so that signer, TSA and verifier share one interpretation.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asn1crypto.cms
import asn1crypto.core
import asn1crypto.parser
import asn1crypto.tsp  # registers signingCertificateV2 and TSTInfo with asn1crypto.cms
import asn1crypto.x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kepmta.pki import KeyPair

__all__ = [
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


def _ess_cert_id_v2(cert: x509.Certificate) -> dict[str, Any]:
    """RFC 5035 ESSCertIDv2: the SHA-256 hash of the whole certificate plus its issuer and serial."""
    a = _asn1_cert(cert)
    return {
        # hash_algorithm is left at its DEFAULT (sha256): DER (X.690 §11.5) omits default values.
        "cert_hash": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest(),
        "issuer_serial": {
            "issuer": [asn1crypto.x509.GeneralName(name="directory_name", value=a.issuer)],
            "serial_number": a.serial_number,
        },
    }


def _time(when: datetime) -> asn1crypto.cms.Time:
    """RFC 5652 §11.3: UTCTime for 1950-2049, GeneralizedTime otherwise."""
    return asn1crypto.cms.Time({"utc_time" if 1950 <= when.year < 2050 else "general_time": when})


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

    cert = _asn1_cert(signer.cert)
    signed_attrs = asn1crypto.cms.CMSAttributes(
        [
            # RFC 5652 §11.1: content-type must match eContentType.
            {"type": "content_type", "values": [content_type]},
            # RFC 5652 §11.2
            {"type": "message_digest", "values": [digest]},
            # RFC 5652 §11.3; EN 319 122-1 requires it at CAdES-B-B.
            {"type": "signing_time", "values": [_time(when)]},
            # RFC 5035 signingCertificateV2 (EN 319 122-1 B-B): binds the signer certificate to the signature.
            {
                "type": "signing_certificate_v2",
                "values": [{"certs": [_ess_cert_id_v2(signer.cert)]}],
            },
        ]
    )
    # RFC 5652 §5.4: the signature covers the DER of the attributes as a SET OF (tag 0x31), not
    # the [0] IMPLICIT form in which they travel.
    signature = signer.key.sign(signed_attrs.dump(), ec.ECDSA(hashes.SHA256()))

    signer_info = asn1crypto.cms.SignerInfo(
        {
            # RFC 5652 §5.3: version 1 with issuerAndSerialNumber.
            "version": "v1",
            "sid": asn1crypto.cms.SignerIdentifier(
                name="issuer_and_serial_number",
                value={"issuer": cert.issuer, "serial_number": cert.serial_number},
            ),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": signed_attrs,
            # RFC 5754 §3.3: ecdsa-with-SHA256, parameters absent.
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature": signature,
        }
    )
    encap: dict[str, Any] = {"content_type": content_type}
    if not detached:
        assert content is not None
        spec = asn1crypto.cms.EncapsulatedContentInfo._oid_specs.get(
            asn1crypto.cms.ContentType(content_type).native
        )
        # asn1crypto insists on its own type for known content types (TSTInfo for id-ct-TSTInfo);
        # `load` keeps the caller's exact bytes, so the message digest still covers them.
        encap["content"] = (
            spec.load(content) if spec is not None and spec is not asn1crypto.core.OctetString else content
        )
    signed = asn1crypto.cms.SignedData(
        {
            # RFC 5652 §5.1: version 3 whenever eContentType is not id-data.
            "version": "v1" if asn1crypto.cms.ContentType(content_type).native == "data" else "v3",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": encap,
            "certificates": [cert, *(_asn1_cert(c) for c in chain)],
            "signer_infos": [signer_info],
        }
    )
    ci = asn1crypto.cms.ContentInfo({"content_type": "signed_data", "content": signed})
    result: DerContentInfo = DerContentInfo.load(ci.dump())
    return result


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
    """
    for name in ("version", "digest_algorithms", "certificates"):
        signed[name].native  # noqa: B018 - the attribute access is the parse
    encap = signed["encap_content_info"]
    encap["content_type"].native  # noqa: B018
    encap["content"].contents  # noqa: B018
    for info in signed["signer_infos"]:
        for name in (
            "version",
            "sid",
            "digest_algorithm",
            "signed_attrs",
            "signature_algorithm",
            "signature",
        ):
            info[name].native  # noqa: B018
        unsigned = info["unsigned_attrs"]
        if not isinstance(unsigned, asn1crypto.core.Void):
            for attr in unsigned:
                attr["type"].native  # noqa: B018
                len(attr["values"])


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
        a = _asn1_cert(cert)
        if sid.name == "issuer_and_serial_number":
            # Exact DER, not asn1crypto's case-folding Name equality: the sid is unsigned, so a
            # loose match would let its bytes change unnoticed.
            same_issuer = _encoded(a.issuer) == _encoded(sid.chosen["issuer"])
            if same_issuer and a.serial_number == sid.chosen["serial_number"].native:
                return cert
        elif sid.name == "subject_key_identifier" and a.key_identifier == sid.chosen.native:
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
    §5.3), so adding one leaves the signature valid. The attribute is assembled from DER so the
    existing bytes, signed or not, are carried over untouched (and asn1crypto does not re-encode
    the whole tree, which it does slowly).
    """
    ci = load(ci)
    info = signer_info(ci)
    value_der = value if isinstance(value, bytes) else _encoded(value)
    attr_der = _der(16, asn1crypto.cms.CMSAttributeType(attr_type).dump() + _der(17, value_der))
    existing = info["unsigned_attrs"]
    members = [] if isinstance(existing, asn1crypto.core.Void) else [_encoded(a) for a in existing]
    # X.690 §11.6: DER orders the members of a SET OF by their encodings.
    unsigned = asn1crypto.parser.emit(2, 1, 1, b"".join(sorted([*members, attr_der])))  # [1] IMPLICIT
    kept = b"".join(
        _encoded(info[name])
        for name, _, _ in asn1crypto.cms.SignerInfo._fields
        if name != "unsigned_attrs" and not isinstance(info[name], asn1crypto.core.Void)
    )
    return _reassemble(ci, {"signer_infos": _der(17, _der(16, kept + unsigned))})


def _reassemble(ci: asn1crypto.cms.ContentInfo, replace: dict[str, bytes]) -> DerContentInfo:
    """`ci` with SignedData fields replaced by the given DER (b"" drops an optional field).

    Built from the received bytes of every other field, never from a re-encoding of them.
    """
    signed = ci["content"]
    body = b"".join(
        replace[name] if name in replace else _encoded(signed[name])
        for name, _, _ in asn1crypto.cms.SignedData._fields
        if name in replace or not isinstance(signed[name], asn1crypto.core.Void)
    )
    outer = _encoded(ci["content_type"]) + asn1crypto.parser.emit(2, 1, 0, _der(16, body))  # [0] EXPLICIT
    result: DerContentInfo = DerContentInfo.load(_der(16, outer))
    return result


def _der(tag: int, contents: bytes) -> bytes:
    """A universal constructed DER value: SEQUENCE (16) or SET (17)."""
    return bytes(asn1crypto.parser.emit(0, 1, tag, contents))


def add_signature_timestamp(
    ci: asn1crypto.cms.ContentInfo, token: asn1crypto.cms.ContentInfo | bytes
) -> asn1crypto.cms.ContentInfo:
    """Attach an RFC 3161 token as id-aa-signatureTimeStampToken: CAdES-B-T (EN 319 122-1 §5.3).

    The caller obtains `token` over SHA-256(signature_value(ci)) (RFC 3161 Appendix A).
    """
    der = _encoded(token) if isinstance(token, asn1crypto.cms.ContentInfo) else bytes(token)
    load(der)  # refuse anything that is not SignedData before it goes into the evidence
    return add_unsigned_attribute(ci, "signature_time_stamp_token", der)


def signature_timestamp_token(ci: asn1crypto.cms.ContentInfo) -> bytes | None:
    """DER of the first signature time-stamp token in the unsigned attributes, if any."""
    attrs = signer_info(ci)["unsigned_attrs"]
    if isinstance(attrs, asn1crypto.core.Void):
        return None
    for attr in attrs:
        if attr["type"].native == "signature_time_stamp_token" and len(attr["values"]) >= 1:
            return _encoded(attr["values"][0])
    return None


def without_certificates(ci: asn1crypto.cms.ContentInfo) -> asn1crypto.cms.ContentInfo:
    """A copy of `ci` with the `certificates` field left out.

    The field sits outside the signature (RFC 5652 §5.1), so the signature stays valid; RFC 3161
    §2.4.1 needs this when a requester sets certReq to false.
    """
    return _reassemble(load(ci), {"certificates": b""})


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
