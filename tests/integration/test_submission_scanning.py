"""The rules that depend on the operator's set-up: a malware scanner named in the policy file, and
a CRL in the qualified-CA trust store. A real server with both configured."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kepclient import (
    DevServer,
    compose,
    folder_messages,
    imap,
    issue_cert,
    rejection_evidence,
    send_as,
    signed_by,
    wait_for,
)

from kepmta.config import DEFAULT_POLICY

EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

# Stands in for clamdscan: same argument (the file) and the same exit codes (0 clean, 1 found, 2 error).
SCANNER = """
import sys
data = open(sys.argv[-1], "rb").read()
if b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE" in data:
    print(sys.argv[-1] + ": Eicar-Test-Signature FOUND")
    sys.exit(1)
if b"SCANNER-CANNOT-READ" in data:
    print("ERROR: cannot connect to clamd")
    sys.exit(2)
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    root = tmp_path_factory.mktemp("kep")
    server = DevServer(root / "data").start()
    server.stop()
    data = root / "data"
    scanner = root / "scan.py"
    scanner.write_text(SCANNER)
    policy = root / "policy.toml"
    policy.write_text(
        DEFAULT_POLICY.read_text().replace(
            "command = []", f"command = [{sys.executable!r}, {str(scanner)!r}]"
        )
    )
    with (data / "kepmta.toml").open("a") as f:
        f.write(f'\n[policy]\nfile = "{policy}"\n')
    # A certificate of Ali's, revoked yesterday by the qualified CA's CRL in the trust store.
    ca = x509.load_pem_x509_certificate((data / "pki" / "qualified-ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((data / "pki" / "qualified-ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    revoked_cert, revoked_key = issue_cert(data, server.account(0)["address"])
    cert = x509.load_pem_x509_certificate(revoked_cert.read_bytes())
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(hours=1))
        .next_update(now + dt.timedelta(days=7))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(days=1))
            .build()
        )
        .sign(ca_key, hashes.SHA256())
    )
    with (data / "pki" / "qualified-ca.pem").open("ab") as f:
        f.write(crl.public_bytes(serialization.Encoding.PEM))
    shutil.copy(revoked_cert, root / "revoked.pem")
    shutil.copy(revoked_key, root / "revoked.key")
    server.start()
    yield server
    server.stop()


def subject() -> str:
    return "tarama-" + uuid.uuid4().hex[:10]


def test_clean_message_passes_the_scanner(srv: DevServer) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    subj = subject()
    assert (
        send_as(srv, ali, ali["address"], [ayse["address"]], signed_by(srv, 0, [ayse["address"]], subj))[1]
        == 250
    )
    b = imap(srv, ayse)
    assert wait_for(lambda: folder_messages(b, "INBOX", subj))
    b.logout()


def test_infected_message_is_refused(srv: DevServer, tmp_path: Path) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    subj = subject()
    msg = signed_by(srv, 0, [ayse["address"]], subj, f"Ekte belge var.\n{EICAR}")
    stage, code, text = send_as(srv, ali, ali["address"], [ayse["address"]], msg)
    assert (stage, code) == ("DATA", 554) and "malware" in text and "Eicar-Test-Signature" in text
    assert "[RA03]" in text
    rejection_evidence(srv, ali, subj, "contains malware", tmp_path)
    b = imap(srv, ayse)
    assert folder_messages(b, "INBOX", subj) == []
    b.logout()


def test_scanner_failure_is_temporary_and_delivers_nothing(srv: DevServer) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    subj = subject()
    msg = signed_by(srv, 0, [ayse["address"]], subj, "SCANNER-CANNOT-READ")
    stage, code, text = send_as(srv, ali, ali["address"], [ayse["address"]], msg)
    assert (stage, code) == ("DATA", 451) and "4.3.0" in text
    # a later message arriving proves the refused one would have been there by now
    later = subject()
    assert (
        send_as(srv, ali, ali["address"], [ayse["address"]], signed_by(srv, 0, [ayse["address"]], later))[1]
        == 250
    )
    b = imap(srv, ayse)
    assert wait_for(lambda: folder_messages(b, "INBOX", later))
    assert folder_messages(b, "INBOX", subj) == []
    b.logout()


def test_certificate_revoked_before_signing_is_refused(srv: DevServer, tmp_path: Path) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    root = Path(srv.info["data"]).parent  # type: ignore[index]
    subj = subject()
    msg = compose(ali["address"], [ayse["address"]], subj, "x", root / "revoked.pem", root / "revoked.key")
    stage, code, text = send_as(srv, ali, ali["address"], [ayse["address"]], msg)
    assert (stage, code) == ("DATA", 554) and "'validity' failed" in text and "revoked" in text
    assert "[RA04]" in text
    rejection_evidence(srv, ali, subj, "revoked", tmp_path)
