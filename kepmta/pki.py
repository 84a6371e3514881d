"""X.509 building blocks: keys, CAs and end-entity certificates, and their files.

Used to generate the development provider identity and by the tests' PKI. Keys are ECDSA P-256:
OpenSSL 3.0 neither makes nor verifies Ed25519 CMS, and every object we sign must verify there.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey


class Role(Enum):
    """What a certificate is for; decides its key usage and extended key usage."""

    CA = "ca"
    TLS_SERVER = "tls-server"
    TLS_CLIENT = "tls-client"  # our identity when relaying to a peer provider (mutual TLS)
    EVIDENCE = "evidence"  # the provider's transaction certificate (işlem sertifikası)
    TSA = "tsa"  # RFC 3161 §2.3: the one critical EKU id-kp-timeStamping
    SMIME = "smime"  # a person's signing certificate


@dataclass(frozen=True)
class KeyPair:
    cert: x509.Certificate
    key: PrivateKey
    # The private key is in a hardware token (PKCS#11): each signature is a round trip to it.
    in_token: bool = False


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str | None, email: str | None, serial: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "TR")]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    if serial:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    if email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attrs)


def issue(
    common_name: str,
    role: Role,
    issuer: KeyPair | None = None,
    *,
    organization: str | None = None,
    email: str | None = None,
    dns_names: tuple[str, ...] = (),
    serial_number: str | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key: PrivateKey | None = None,
) -> KeyPair:
    """A certificate for `role`, signed by `issuer` (self-signed when None)."""
    key = key or new_key()
    start = not_before or utcnow() - dt.timedelta(minutes=5)
    end = not_after or start + dt.timedelta(days=3650 if role is Role.CA else 825)
    subject = _name(common_name, organization, email, serial_number)
    issuer_name = issuer.cert.subject if issuer else subject
    signing_key = issuer.key if issuer else key
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(ski, critical=False)
    )
    if issuer:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
        builder = builder.add_extension(aki, critical=False)
    is_ca = role is Role.CA
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=not is_ca,
            content_commitment=role in (Role.EVIDENCE, Role.SMIME, Role.TSA),
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=role is Role.TLS_SERVER,
            key_cert_sign=is_ca,
            crl_sign=is_ca,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    eku = {
        Role.TLS_SERVER: [ExtendedKeyUsageOID.SERVER_AUTH],
        Role.TLS_CLIENT: [ExtendedKeyUsageOID.CLIENT_AUTH],
        Role.EVIDENCE: [ExtendedKeyUsageOID.EMAIL_PROTECTION],
        Role.SMIME: [ExtendedKeyUsageOID.EMAIL_PROTECTION],
        Role.TSA: [ExtendedKeyUsageOID.TIME_STAMPING],
    }.get(role)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=role is Role.TSA)
    san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    if email:
        san.append(x509.RFC822Name(email))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(signing_key, hashes.SHA256())
    return KeyPair(cert, key)


def issue_crl(
    ca: KeyPair,
    revoked: tuple[tuple[int, dt.datetime], ...] = (),
    *,
    number: int = 1,
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by `ca` listing (serial, revocation date) pairs."""
    start = this_update or utcnow() - dt.timedelta(minutes=5)
    end = next_update or start + dt.timedelta(days=365)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(start)
        .next_update(end)
        # RFC 5280 §5.2.1, §5.2.3: conforming CRLs carry the authority key identifier and a number.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial, when in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, hashes.SHA256())


def save_crl(crl: x509.CertificateRevocationList, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def write_private(path: Path, data: bytes) -> None:
    """Write `data` readable by the owner only, created so (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def save(pair: KeyPair, cert_path: Path, key_path: Path, chain: tuple[x509.Certificate, ...] = ()) -> None:
    """Write the certificate (followed by `chain`) as PEM and the key as unencrypted PKCS#8, 0600."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (pair.cert, *chain))
    cert_path.write_bytes(pem)
    write_private(
        key_path,
        pair.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def load_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def load_trust(path: Path) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList]]:
    """The certificates and CRLs of a PEM trust bundle, in any order."""
    data = path.read_bytes()
    crls = [
        x509.load_pem_x509_crl(block)
        for block in re.findall(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----", data, re.S)
    ]
    certs = [
        x509.load_pem_x509_certificate(block)
        for block in re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", data, re.S)
    ]
    if not certs:
        raise ValueError(f"{path}: no certificate in the trust bundle")
    return certs, crls


def load_pair(cert_path: Path, key_path: Path) -> KeyPair:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: only ECDSA keys are supported")
    return KeyPair(load_certs(cert_path)[0], key)
