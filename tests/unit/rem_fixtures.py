"""Test PKI and outside signers for the S/MIME and REM tests.

Messages are signed the way an outside client signs them: with `cryptography`'s PKCS#7 builder or
the OpenSSL command line, never with kepmta's own CMS code, so the verifier is tested against
signatures it did not produce.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from kepmta.pki import KeyPair, Role, issue, save, utcnow

OPENSSL = shutil.which("openssl")
SENDER = "ali.yilmaz@kep.test"
OTHER = "ayse.kaya@kep.test"

# A MIME entity as a mail client composes it before signing: CRLF, UTF-8 Turkish text.
BODY = (
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Merhaba Ayşe Hanım,\r\n"
    "sözleşmenin imzalı hâli ektedir. Görüşmek üzere.\r\n"
).encode()


@dataclass(frozen=True)
class Pki:
    root: KeyPair  # the trusted qualified CA
    sub: KeyPair  # an intermediate under it, which issues the people's certificates
    provider: KeyPair  # the KEP provider's transaction certificate, issued by root
    ali: KeyPair
    ayse: KeyPair
    rogue_root: KeyPair  # a CA nobody trusts
    rogue_ali: KeyPair  # ali's address, issued by the rogue CA
    self_signed_ali: KeyPair
    expired_ali: KeyPair
    rsa_ali: KeyPair
    tls_ali: KeyPair  # right address, wrong purpose (serverAuth only)


@functools.cache
def pki() -> Pki:
    now = utcnow()
    root = issue("KEP Test Kök SM", Role.CA, organization="Test Kamu SM")
    sub = issue("KEP Test Nitelikli SM", Role.CA, root, organization="Test Kamu SM")
    provider = issue("KEP Test Hizmet Sağlayıcı", Role.EVIDENCE, root, email="rem-service@kep.test")
    rogue_root = issue("Rogue CA", Role.CA)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Pki(
        root=root,
        sub=sub,
        provider=provider,
        ali=issue("Ali Yılmaz", Role.SMIME, sub, email=SENDER, serial_number="12345678901"),
        ayse=issue("Ayşe Kaya", Role.SMIME, sub, email=OTHER),
        rogue_root=rogue_root,
        rogue_ali=issue("Ali Yılmaz", Role.SMIME, rogue_root, email=SENDER),
        self_signed_ali=issue("Ali Yılmaz", Role.SMIME, email=SENDER),
        expired_ali=issue(
            "Ali Yılmaz",
            Role.SMIME,
            sub,
            email=SENDER,
            not_before=now - dt.timedelta(days=800),
            not_after=now - dt.timedelta(days=35),
        ),
        rsa_ali=issue("Ali Yılmaz", Role.SMIME, sub, email=SENDER, key=rsa_key),  # type: ignore[arg-type]
        tls_ali=issue("Ali Yılmaz", Role.TLS_SERVER, sub, email=SENDER),
    )


def envelope_headers(sender: str = SENDER, to: str = OTHER, subject: str = "Sözleşme") -> bytes:
    """What a client puts above the S/MIME structure it got from its crypto library."""
    return (
        f"From: Ali Yilmaz <{sender}>\r\n"
        f"To: <{to}>\r\n"
        "Subject: =?utf-8?q?S=C3=B6zle=C5=9Fme?=\r\n"
        "Date: Sat, 28 Nov 2026 10:30:00 +0300\r\n"
        "Message-ID: <client.1@mail.example>\r\n"
    ).encode()


def to_crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def sign_cryptography(
    signer: KeyPair,
    body: bytes = BODY,
    *,
    extra: tuple[x509.Certificate, ...] | None = None,
    digest: hashes.HashAlgorithm | None = None,
    pss: bool = False,
) -> bytes:
    """A multipart/signed message from `cryptography`'s PKCS#7 builder, as a client would send it."""
    extra = (pki().sub.cert,) if extra is None else extra
    digest = digest or hashes.SHA256()
    rsa_padding = padding.PSS(padding.MGF1(digest), padding.PSS.DIGEST_LENGTH) if pss else None
    builder = pkcs7.PKCS7SignatureBuilder().set_data(body)
    builder = builder.add_signer(signer.cert, signer.key, digest, rsa_padding=rsa_padding)  # type: ignore[arg-type]
    for cert in extra:
        builder = builder.add_certificate(cert)
    smime = builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    return envelope_headers() + to_crlf(smime)


def sign_openssl(
    tmp: Path,
    signer: KeyPair,
    body: bytes = BODY,
    *,
    command: str = "cms",
    detached: bool = True,
    extra: tuple[x509.Certificate, ...] | None = None,
    options: tuple[str, ...] = (),
) -> bytes:
    """A message signed by `openssl cms -sign` or `openssl smime -sign`."""
    assert OPENSSL is not None
    extra = (pki().sub.cert,) if extra is None else extra
    save(signer, tmp / "signer.pem", tmp / "signer.key")
    (tmp / "body.eml").write_bytes(body)
    args = [OPENSSL, command, "-sign", "-in", str(tmp / "body.eml"), "-signer", str(tmp / "signer.pem")]
    args += ["-inkey", str(tmp / "signer.key"), "-out", str(tmp / "signed.eml"), *options]
    if extra:
        write_certs(tmp / "extra.pem", extra)
        args += ["-certfile", str(tmp / "extra.pem")]
    if not detached:
        args.append("-nodetach")
    subprocess.run(args, check=True, capture_output=True)
    return envelope_headers() + to_crlf((tmp / "signed.eml").read_bytes())


def write_certs(path: Path, certs: tuple[x509.Certificate, ...]) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def plain_message(body: bytes = BODY) -> bytes:
    return envelope_headers() + b"MIME-Version: 1.0\r\n" + body


def openssl_smime_verify(tmp: Path, message: bytes, ca: x509.Certificate) -> bytes:
    """`openssl smime -verify` of a multipart/signed message; returns the signed content it output."""
    assert OPENSSL is not None
    (tmp / "to-verify.eml").write_bytes(message)
    write_certs(tmp / "verify-ca.pem", (ca,))
    result = subprocess.run(
        [
            OPENSSL,
            "smime",
            "-verify",
            "-in",
            str(tmp / "to-verify.eml"),
            "-CAfile",
            str(tmp / "verify-ca.pem"),
            "-out",
            str(tmp / "verified.out"),
        ],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"Verification successful" in result.stderr
    return (tmp / "verified.out").read_bytes()
