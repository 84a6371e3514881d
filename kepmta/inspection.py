"""What the server checks in a spooled submission, and the original it stores when all pass.

Pure file work with no server state, so it runs in a worker process (kepmta.workers): reading and
verifying a message, and copying it with fsync, is most of the CPU an acceptance costs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from kepmta.evidence.model import Reason
from kepmta.headers import HeaderError, Headers, read_headers
from kepmta.maildir import fsync_dir
from kepmta.policy.formal import check_formal
from kepmta.policy.refusal import PolicyError, Refusal, refuse
from kepmta.policy.signature import check_signature
from kepmta.smime.sender import SignerIdentity, verify_sender

_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Signer:
    """Who must have signed, in a form a worker process can receive (certificates as DER)."""

    address: str
    registered_cert: bytes | None
    national_id: str | None


@dataclass(frozen=True)
class Inspection:
    headers: Headers | None  # when readable: they let the evidence of a refusal name the message
    refusal: Refusal | None
    stored: tuple[bytes, int] | None  # (REM digest, size) of the original, once all checks passed


def inspect(
    incoming: Path,
    original: Path,
    message_id: str,
    early: Refusal | None,
    sender: str,
    recipients: Sequence[str],
    signer: Signer,
    *,
    trust: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
) -> Inspection:
    """Every check that reads the spooled file, in the order refusals are given, and if they all
    pass the original stored as it will be attached. `early` is a refusal decided while the data
    arrived (size, line endings): it comes first, but the headers are still read for the evidence."""
    try:
        headers: Headers | None = read_headers(incoming)
        header_problem = None
    except HeaderError as e:
        headers, header_problem = None, str(e)
    try:
        if early is not None:
            raise PolicyError(early)
        if header_problem is not None:
            # RFC 5322 §2.1: header fields, then an empty line, then the body
            raise refuse(
                554,
                "5.6.0",
                Reason.RA02,
                header_problem,
                "iletinin başlık bölümü boş bir satırla bitmiyor",
            )
        assert headers is not None
        check_formal(headers.addresses, sender, list(recipients))
        cert = x509.load_der_x509_certificate(signer.registered_cert) if signer.registered_cert else None
        identity = SignerIdentity(signer.address, cert, signer.national_id)
        check_signature(verify_sender(incoming, identity, list(trust), datetime.now(UTC), list(crls)))
    except PolicyError as e:
        return Inspection(headers, e.refusal, None)
    return Inspection(headers, None, write_original(incoming, original, message_id, headers.header_end))


def write_original(incoming: Path, target: Path, provider_id: str, header_end: int) -> tuple[bytes, int]:
    """Move the message into `target` as it will be attached to the dispatch: its Message-ID
    replaced by the provider message id (EN 319 532-3; the user's id stays in
    REM-UAMessageIdentifier), ending in CRLF, synced to disk; `incoming` is removed. Returns the
    SHA-256 of exactly those bytes (the REM digest) and their size."""
    digest = hashlib.sha256()
    size = 0
    try:
        with incoming.open("rb") as src, target.open("wb") as out:

            def put(data: bytes | memoryview) -> None:
                nonlocal size
                digest.update(data)
                out.write(data)
                size += len(data)

            head = src.read(header_end)
            lines = head[: header_end - 4].split(b"\r\n") if header_end > 2 else []
            kept: list[bytes] = []
            skipping = False
            for line in lines:
                if line[:1] in (b" ", b"\t") and skipping:
                    continue  # RFC 5322 §2.2.3: a folded continuation of the dropped field
                skipping = line.lower().startswith(b"message-id:")
                if not skipping:
                    kept.append(line)
            put(f"Message-ID: <{provider_id}>\r\n".encode())
            put(b"".join(line + b"\r\n" for line in kept) + b"\r\n")
            last = b"\r\n"
            # One reused buffer: fresh 1 MB chunks per read made glibc's heap grow by tens of MB.
            buffer = bytearray(_COPY_CHUNK)
            view = memoryview(buffer)
            while n := src.readinto(buffer):
                put(view[:n])
                last = (last + bytes(view[max(0, n - 2) : n]))[-2:]
            if last != b"\r\n":
                put(b"\r\n")
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        # Nothing names a part written before the disk filled up: it would only hold the space.
        target.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)  # the message row will name this file: its entry must survive a crash
    incoming.unlink()  # here, not on the event loop: an unlink can wait on the journal
    return digest.digest(), size
