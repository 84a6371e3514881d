"""Revocation data captured when evidence is made, for verification decades later.

An evidence proves something only if its signing certificate was not revoked when it was signed.
Years on, the CA may be gone and its CRLs with it, so the CRLs of the provider CA chain that are in
force when an evidence is made go into the ledger, once each, just before that evidence (EN 319 102-1
§5.6.2.3 validates with revocation data captured then). A renewal (`kepmta.evidence.archive`) puts
them under its archive time-stamp together with the certificates.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.db.schema import ledger as ledger_table
from kepmta.evidence.errors import EvidenceError
from kepmta.evidence.ledger import Kind, NewRecord, Writes

log = logging.getLogger(__name__)


class RevocationError(EvidenceError):
    """A certificate is revoked, or no CRL in force at the time asked covers it."""


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL from PEM or DER."""
    if b"-----BEGIN X509 CRL-----" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def crl_der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def record_id(crl: x509.CertificateRevocationList) -> str:
    """The ledger id of a CRL record: its SHA-256, so the same CRL is recorded once."""
    return f"crl.{hashlib.sha256(crl_der(crl)).hexdigest()}"


def in_force(crl: x509.CertificateRevocationList, at: dt.datetime) -> bool:
    nxt = crl.next_update_utc
    return crl.last_update_utc <= at and (nxt is None or at <= nxt)


def issued_by(
    crl: x509.CertificateRevocationList, issuers: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """The certificate among `issuers` whose key signed `crl` (RFC 5280 §6.3.3 (f)), if any."""
    for cert in issuers:
        if cert.subject != crl.issuer:
            continue
        try:
            if crl.is_signature_valid(cert.public_key()):  # type: ignore[arg-type]
                return cert
        except TypeError:  # a key type that cannot sign CRLs
            continue
    return None


def check_not_revoked(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: Sequence[x509.CertificateRevocationList],
    at: dt.datetime,
) -> x509.CertificateRevocationList:
    """The CRL by `issuer`, in force at `at`, that shows `cert` not revoked at `at` (RFC 5280 §6.3).

    A revocation dated after `at` does not count: the signature was made before it.
    """
    usable = [c for c in crls if c.issuer == cert.issuer and in_force(c, at) and issued_by(c, [issuer])]
    if not usable:
        raise RevocationError(
            f"no CRL of {cert.issuer.rfc4514_string()} in force at {at:%Y-%m-%d %H:%M:%SZ} is available"
        )
    crl = max(usable, key=lambda c: c.last_update_utc)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is not None and entry.revocation_date_utc <= at:
        raise RevocationError(
            f"certificate {cert.subject.rfc4514_string()} was revoked on {entry.revocation_date_utc:%Y-%m-%d}"
        )
    return crl


@dataclass
class _Loaded:
    mtime_ns: int
    crl: x509.CertificateRevocationList
    # Worked out once per file version: verifying the CRL's signature on every evidence costs.
    signed_by_chain: bool
    record_id: str


class RevocationCapture:
    """Puts each CRL of the provider CA chain into the ledger once, while it is in force."""

    def __init__(self, paths: Sequence[Path], chain: Sequence[x509.Certificate]) -> None:
        self._paths = tuple(paths)
        self._chain = tuple(chain)  # the provider CA certificates the CRLs must be signed by
        self._loaded: dict[Path, _Loaded] = {}
        self._warned: set[str] = set()
        # The CRL records seen committed in the server's ledger; rows are never removed, so this holds.
        self._recorded: set[str] = set()

    def current(self, at: dt.datetime) -> list[x509.CertificateRevocationList]:
        """The configured CRLs in force at `at`, re-read when their file changes (CAs publish anew)."""
        return [loaded.crl for loaded in self._current(at)]

    def _current(self, at: dt.datetime) -> list[_Loaded]:
        found = []
        for path in self._paths:
            try:
                mtime = path.stat().st_mtime_ns
                loaded = self._loaded.get(path)
                if loaded is None or loaded.mtime_ns != mtime:
                    crl = load_crl(path.read_bytes())
                    signed = issued_by(crl, self._chain) is not None
                    loaded = _Loaded(mtime, crl, signed, record_id(crl))
                    self._loaded[path] = loaded
            except (OSError, ValueError) as exc:
                self._warn_once(str(path), f"CRL {path} cannot be read: {exc}")
                continue
            crl = loaded.crl
            if not loaded.signed_by_chain:
                self._warn_once(str(path), f"CRL {path} is not signed by a provider CA certificate")
            elif not in_force(crl, at):
                self._warn_once(
                    f"{path}:{mtime}",
                    f"CRL {path} is not in force (next update {crl.next_update_utc}); "
                    "evidence is made without current revocation data until it is renewed",
                )
            else:
                found.append(loaded)
        return found

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", text)

    async def load_recorded(self, engine: AsyncEngine) -> None:
        """Before the first `capture`: learn which of the CRLs in force the ledger holds already."""
        ids = [loaded.record_id for loaded in self._current(dt.datetime.now(dt.UTC))]
        async with engine.connect() as conn:
            found = await conn.execute(
                select(ledger_table.c.evidence_id).where(ledger_table.c.evidence_id.in_(ids))
            )
            self._recorded.update(found.scalars())

    def capture(self, w: Writes) -> None:
        """In a ledger transaction: append the CRLs in force not recorded yet.

        A CRL counts as recorded once a transaction that added it has committed, so a rollback can
        never leave it unrecorded.
        """
        now = dt.datetime.now(dt.UTC)
        for loaded in self._current(now):
            rid = loaded.record_id
            if rid in self._recorded or w.appended(rid):
                continue
            w.append(
                NewRecord(kind=Kind.REVOCATION, evidence_id=rid, created_at=now, der=crl_der(loaded.crl))
            )
            w.after_commit(functools.partial(self._recorded.add, rid))
