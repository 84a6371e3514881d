"""What `kepmta check-config` and a reload check beyond parsing: the keys and certificates the
configuration names.

Parsing is kepmta.config's (and kepmta.peers' for the registry): its ConfigError line is the one
problem reported when a file does not load. Once it loads, every key and certificate file is
checked and each problem is one line in the same form, `FILE: section.key: problem`, where FILE is
the configuration (or peers) file holding the key. Our own certificates are errors when expired or
not yet valid and warnings within 30 days of expiry; certificates we only trust (the qualified CAs,
a TSA's or a peer's CA) are warnings when expired, as the bundle stays usable for the others.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from kepmta import config, peers, pki

WARN_BEFORE = dt.timedelta(days=30)
# What each certificate must be for (RFC 5280 §4.2.1.12), by the name a person reads.
_USAGES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
}
# RFC 8301 §3.1: signers must use RSA keys of at least 1024 bits and should use 2048.
_DKIM_RSA_MIN, _DKIM_RSA_GOOD = 1024, 2048


@dataclass(frozen=True)
class Problem:
    line: str  # FILE: section.key: what is wrong
    error: bool  # False: a warning, the configuration still serves

    def __str__(self) -> str:
        return self.line if self.error else f"warning: {self.line}"


def check_file(path: Path, now: dt.datetime | None = None) -> list[Problem]:
    """Every problem of the configuration at `path`: its one parse error, or the key and
    certificate problems of a configuration that loads."""
    try:
        settings = config.load(path)
    except config.ConfigError as e:
        return [Problem(str(e), True)]
    return check(settings, now)


def check(s: config.Settings, now: dt.datetime | None = None) -> list[Problem]:
    """The key and certificate problems of loaded settings."""
    return list(_Checker(s, now or pki.utcnow()).run())


def _label(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or cert.issuer.rfc4514_string()


def _public(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


def _name_matches(pattern: str, name: str) -> bool:
    # RFC 6125 §6.4.3: a wildcard stands for the whole of the left-most label only.
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier] | None:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None  # RFC 5280 §4.2.1.12: no extension, no restriction


class _Checker:
    def __init__(self, s: config.Settings, now: dt.datetime) -> None:
        self.s, self.now = s, now

    def where(self, key: str, file: Path | None = None) -> str:
        return f"{file or self.s.source}: {key}"

    def run(self) -> Iterator[Problem]:
        s = self.s
        anchors, found = self.certificates("evidence.provider_ca", s.provider_ca, ours=True)
        yield from found
        yield from self.pair(
            "tls",
            s.tls_cert,
            ("tls.key", s.tls_key),
            None,
            ExtendedKeyUsageOID.SERVER_AUTH,
            ("server.hostname", s.hostname),
        )
        # A key in a PKCS#11 token is the token's to check (kepmta.evidence.keys at start).
        key = ("evidence.key", s.evidence_key) if s.evidence_key is not None else None
        yield from self.pair("evidence", s.evidence_cert, key, anchors, ExtendedKeyUsageOID.EMAIL_PROTECTION)
        if s.tsa_cert is not None and s.tsa_key is not None:
            yield from self.pair(
                "evidence.tsa",
                s.tsa_cert,
                ("evidence.tsa_key", s.tsa_key),
                anchors,
                ExtendedKeyUsageOID.TIME_STAMPING,
            )
        if s.tsa is not None:
            yield from self.certificates("tsa.ca", s.tsa.ca, ours=False)[1]
        yield from self.trust("trust.qualified_ca", s.qualified_ca)
        for i, crl_path in enumerate(s.evidence_crls):
            yield from self.crls(f"evidence.crls[{i}]", crl_path)
        if s.relay is not None:
            yield from self.pair(
                "relay.client",
                s.relay.client_cert,
                ("relay.client_key", s.relay.client_key),
                anchors,
                ExtendedKeyUsageOID.CLIENT_AUTH,
                # kepmta.inbound: a peer knows our connection by our domain in its certificate.
                ("server.domain", s.domain),
            )
            for i, dkim in enumerate(s.relay.dkim):
                yield from self.dkim(f"relay.dkim[{i}].key", dkim)
        for i, peer in enumerate(s.peers):
            for name, path in (("tls_ca", peer.tls_ca), ("evidence_ca", peer.evidence_ca)):
                if path is not None:
                    yield from self.trust(f"peer[{i}].{name}", path, s.peers_file)

    def dates(self, where: str, path: Path, cert: x509.Certificate, *, ours: bool) -> Iterator[Problem]:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        label = _label(cert)
        if self.now < start:
            yield Problem(f"{where}: {path}: {label} is not valid before {start:%Y-%m-%d %H:%M} UTC", ours)
        elif self.now >= end:
            yield Problem(f"{where}: {path}: {label} expired on {end:%Y-%m-%d}", ours)
        elif ours and end - self.now <= WARN_BEFORE:
            days = (end - self.now).days
            yield Problem(f"{where}: {path}: {label} expires on {end:%Y-%m-%d}, in {days} days", False)

    def certificates(
        self, key: str, path: Path, *, ours: bool, file: Path | None = None
    ) -> tuple[list[x509.Certificate], list[Problem]]:
        where = self.where(key, file)
        try:
            certs = pki.load_certs(path)
        except (OSError, ValueError):
            return [], [Problem(f"{where}: {path} holds no PEM certificate", True)]
        if not certs:
            return [], [Problem(f"{where}: {path} holds no PEM certificate", True)]
        return certs, [p for c in certs for p in self.dates(where, path, c, ours=ours)]

    def trust(self, key: str, path: Path, file: Path | None = None) -> Iterator[Problem]:
        """A bundle of trusted CAs, and the CRLs it may hold (kepmta.pki.load_trust)."""
        certs, problems = self.certificates(key, path, ours=False, file=file)
        yield from problems
        if certs:
            yield from self.due(self.where(key, file), path, pki.load_trust(path)[1])

    def crls(self, key: str, path: Path) -> Iterator[Problem]:
        """One CRL file of the provider CA chain, PEM or DER."""
        try:
            data = path.read_bytes()
            crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
        except (OSError, ValueError):
            yield Problem(f"{self.where(key)}: {path} holds no readable CRL", True)
            return
        yield from self.due(self.where(key), path, [crl])

    def due(self, where: str, path: Path, found: list[x509.CertificateRevocationList]) -> Iterator[Problem]:
        for crl in found:
            next_update = crl.next_update_utc
            if next_update is not None and next_update <= self.now:
                yield Problem(
                    f"{where}: {path}: the CRL of {crl.issuer.rfc4514_string()} was due to be renewed "
                    f"on {next_update:%Y-%m-%d}",
                    False,
                )

    def private_key(self, key: str, path: Path) -> tuple[PrivateKeyTypes | None, list[Problem]]:
        try:
            return serialization.load_pem_private_key(path.read_bytes(), password=None), []
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
            where = self.where(key)
            return None, [Problem(f"{where}: {path} is not an unencrypted PEM private key", True)]

    def pair(
        self,
        section: str,
        cert_path: Path,
        key: tuple[str, Path] | None,
        anchors: Sequence[x509.Certificate] | None,
        usage: x509.ObjectIdentifier,
        name: tuple[str, str] | None = None,
    ) -> Iterator[Problem]:
        """A certificate file (the certificate, then its chain) and its key: dates, the key, the
        chain up to `anchors` (None: the chain in the file only), the usage and the name."""
        cert_key = f"{section}.cert" if section in ("tls", "evidence") else f"{section}_cert"
        certs, problems = self.certificates(cert_key, cert_path, ours=True)
        yield from problems
        if not certs:
            return
        where = self.where(cert_key)
        leaf = certs[0]
        if key is not None:
            key_name, key_path = key
            private, problems = self.private_key(key_name, key_path)
            yield from problems
            if private is not None and _public(private.public_key()) != _public(leaf.public_key()):
                yield Problem(
                    f"{self.where(key_name)}: {key_path} is not the key of {_label(leaf)} in {cert_path}",
                    True,
                )
        for i, (cert, issuer) in enumerate(itertools.pairwise(certs)):
            if not _issued_by(cert, issuer):
                yield Problem(
                    f"{where}: {cert_path}: certificate {i + 2} ({_label(issuer)}) did not issue "
                    f"certificate {i + 1} ({_label(cert)})",
                    True,
                )
        top = certs[-1]
        if anchors is not None and not any(a == top or _issued_by(top, a) for a in anchors):
            yield Problem(
                f"{where}: {cert_path}: {_label(top)} does not chain to evidence.provider_ca "
                f"({self.s.provider_ca})",
                True,
            )
        usages = _usages(leaf)
        if usages is not None and usage not in usages:
            yield Problem(f"{where}: {cert_path}: {_label(leaf)} is not for {_USAGES[usage]}", True)
        if name is not None:
            setting, wanted = name
            names = _names(leaf)
            if not any(_name_matches(n, wanted.lower()) for n in names):
                yield Problem(
                    f"{where}: {cert_path}: {_label(leaf)} does not name {setting} {wanted} "
                    f"(it names {', '.join(names) or 'nothing'})",
                    True,
                )

    def dkim(self, key: str, signing: config.DkimSigning) -> Iterator[Problem]:
        private, problems = self.private_key(key, signing.key)
        yield from problems
        if private is None:
            return
        where = f"{self.where(key)}: {signing.key}"
        algorithm = peers.dkim_algorithm(private)
        if algorithm != signing.algorithm:
            yield Problem(f"{where} is {algorithm or 'a key DKIM cannot use'}, not {signing.algorithm}", True)
        elif isinstance(private, rsa.RSAPrivateKey) and private.key_size < _DKIM_RSA_GOOD:
            yield Problem(
                f"{where} is a {private.key_size}-bit RSA key; RFC 8301 §3.1 asks for {_DKIM_RSA_GOOD}",
                private.key_size < _DKIM_RSA_MIN,
            )
