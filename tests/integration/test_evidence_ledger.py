"""A real `kepmta serve` with an external RFC 3161 TSA over HTTP that is down at first: the message
is accepted with its evidence on disk, the time-stamp follows, every receipt carries CAdES-B-T
evidence. Then the ledger CLI: audit (intact, then tampered), checkpoint, renew, verify --ers."""

from __future__ import annotations

import sqlite3
import threading
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kepclient import DevServer, imap, kepmta, openssl_verify, p7m, receipts, signed_by, smtp, wait_for

from kepmta import pki
from kepmta.evidence.tsa import DEFAULT_POLICY, BuiltinTsa


class HttpTsa(ThreadingHTTPServer):
    """RFC 3161 §3.4 over HTTP on 127.0.0.1, answering HTTP 500 to its first `failures` requests."""

    def __init__(self, tsa: BuiltinTsa, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tsa = tsa
        self.failures = failures
        self.answers: list[int] = []


class _Handler(BaseHTTPRequestHandler):
    server: HttpTsa

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers["Content-Type"] != "application/timestamp-query" or self.server.failures > 0:
            self.server.failures -= 1
            self.server.answers.append(500)
            self.send_error(500)
            return
        reply = self.server.tsa.respond(body)
        self.server.answers.append(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/timestamp-reply")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevServer, HttpTsa]]:
    data = tmp_path_factory.mktemp("ledger") / "data"
    srv = DevServer(data).start()
    srv.stop()
    d = data / "pki"
    tsa = HttpTsa(
        BuiltinTsa(pki.load_pair(d / "tsa.pem", d / "tsa.key"), pki.load_certs(d / "tsa.pem")[1:]), 1
    )
    thread = threading.Thread(target=tsa.serve_forever, daemon=True)
    thread.start()
    config = data / "kepmta.toml"
    config.write_text(
        config.read_text()
        + f'\n[tsa]\nurl = "http://127.0.0.1:{tsa.server_address[1]}/tsa"\npolicy = "{DEFAULT_POLICY}"\n'
        'ca = "pki/provider-ca.pem"\ntimeout = 5\nretries = 0\n'
    )
    srv.start()
    yield srv, tsa
    srv.stop()
    tsa.shutdown()


def _db(srv: DevServer) -> sqlite3.Connection:
    return sqlite3.connect(srv.data / "kepmta.db")


def _audit(srv: DevServer) -> tuple[int, list[str]]:
    r = kepmta("evidence", "audit", "--data", str(srv.data))
    return r.returncode, (r.stdout + r.stderr).strip().splitlines()


def test_a_tsa_down_at_submission_delays_the_evidence_never_drops_it(
    setup: tuple[DevServer, HttpTsa], tmp_path: Path
) -> None:
    srv, tsa = setup
    ali, ayse = srv.account(0), srv.account(1)
    subject = f"tsa-{uuid.uuid4().hex[:8]}"
    with smtp(srv, ali) as s:
        code, text = s.mail(ali["address"])
        assert code == 250
        assert s.rcpt(ayse["address"])[0] == 250
        code, text = s.data(signed_by(srv, 0, [ayse["address"]], subject))
        assert code == 250, text  # the TSA failed, the evidence is on disk all the same
    assert tsa.answers[0] == 500
    m = imap(srv, ali)
    try:
        for event in ("SubmissionAcceptance", "ContentConsignment"):
            found = wait_for(lambda event=event: receipts(m, subject, event))  # type: ignore[misc]
            assert len(found) == 1, event
            assert srv.info is not None
            ok, content, printed = openssl_verify(p7m(found[0], event), srv.info["provider_ca"], tmp_path)
            assert ok and event in content and "timeStampToken" in printed, content
    finally:
        m.logout()
    with _db(srv) as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM ledger WHERE kind != 'revocation' ORDER BY seq")]
        captured = db.execute("SELECT count(*) FROM ledger WHERE kind = 'revocation'").fetchone()[0]
    # The acceptance was committed unstamped, then its time-stamped version followed.
    assert kinds[:2] == ["evidence", "timestamp"], kinds
    assert captured == 1  # the dev provider CA's CRL, captured before the first evidence


def test_audit_checkpoint_renew_and_verify_with_the_cli(
    setup: tuple[DevServer, HttpTsa], tmp_path: Path
) -> None:
    srv, _ = setup
    r = kepmta("evidence", "checkpoint", "--data", str(srv.data))
    assert r.returncode == 0 and "seals seq" in r.stdout, r.stdout + r.stderr
    code, lines = _audit(srv)
    assert code == 0 and len(lines) == 1 and lines[0].startswith("ledger intact:"), lines
    r = kepmta("evidence", "renew", "--all", "--data", str(srv.data))
    assert r.returncode == 0 and r.stdout.startswith("renewed "), r.stdout + r.stderr
    with _db(srv) as db:
        eid, der = db.execute(
            "SELECT evidence_id, der FROM ledger WHERE kind = 'timestamp' ORDER BY seq LIMIT 1"
        ).fetchone()
        (er,) = db.execute(
            "SELECT der FROM ledger WHERE kind = 'archive' AND evidence_id = ? ORDER BY seq DESC", (eid,)
        ).fetchone()
    (tmp_path / "e.p7m").write_bytes(der)
    (tmp_path / "e.ers").write_bytes(er)
    v = kepmta(
        "evidence",
        "verify",
        str(tmp_path / "e.p7m"),
        "--ers",
        str(tmp_path / "e.ers"),
        "--data",
        str(srv.data),
    )
    assert v.returncode == 0, v.stdout
    assert "✓ archive-time-stamp" in v.stdout and "✓ revocation" in v.stdout
    assert _audit(srv)[0] == 0


def test_rehash_to_sha512_then_the_bundle_and_its_ers_verify_offline(
    setup: tuple[DevServer, HttpTsa], tmp_path: Path
) -> None:
    """RFC 4998 hash-tree renewal through the external TSA (SHA-512 imprints over HTTP), then the
    export carries each evidence's newest .ers beside its .p7m, and both verify offline."""
    srv, _ = setup
    r = kepmta("evidence", "renew", "--rehash", "sha512", "--data", str(srv.data))
    assert r.returncode == 0 and "re-hashed to SHA-512" in r.stdout, r.stdout + r.stderr
    again = kepmta("evidence", "renew", "--rehash", "sha512", "--data", str(srv.data))
    assert again.stdout.startswith("renewed 0 evidence"), again.stdout  # all moved already
    with _db(srv) as db:
        (message_id,) = db.execute(
            # checkpoints' evidence records belong to no message
            "SELECT message_id FROM ledger WHERE kind = 'archive' AND message_id IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    out = tmp_path / "kanit.zip"
    e = kepmta("evidence", "export", message_id, "-o", str(out), "--data", str(srv.data))
    assert e.returncode == 0, e.stderr
    v = kepmta("evidence", "verify", str(out), "--data", str(srv.data))
    assert v.returncode == 0 and v.stdout.rstrip().endswith("Result: VALID"), v.stdout
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "kanit")
        members = {n: zf.read(n) for n in zf.namelist()}
    pairs = sorted(p.removesuffix(".ers") for p in members if p.endswith(".ers"))
    assert pairs and all(f"{stem}.p7m" in members for stem in pairs)
    for stem in pairs:
        folder = tmp_path / "kanit"
        one = kepmta(
            "evidence", "verify", str(folder / f"{stem}.p7m"), "--ers", str(folder / f"{stem}.ers"),
            "--ca", str(folder / "certs/provider-ca.pem"),
        )  # fmt: skip
        assert one.returncode == 0, one.stdout
        assert "chain 1 SHA-256" in one.stdout and "chain 2 SHA-512 (hash-tree renewal)" in one.stdout
    ers = f"{pairs[0]}.ers"
    changed = bytearray(members[ers])
    changed[len(changed) // 2] ^= 0x01
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tampered, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, bytes(changed) if name == ers else data)
    v = kepmta("evidence", "verify", str(tampered), "--data", str(srv.data))
    assert v.returncode == 1 and f"{ers} was changed" in v.stdout, v.stdout
    assert _audit(srv)[0] == 0


def test_audit_reports_each_tampered_row_with_its_position(setup: tuple[DevServer, HttpTsa]) -> None:
    srv, _ = setup
    srv.stop()  # the database is the operator's now
    try:
        with _db(srv) as db:
            rows = db.execute("SELECT seq, der FROM ledger ORDER BY seq").fetchall()
        for seq, der in rows:
            flipped = der[:100] + bytes([der[100] ^ 1]) + der[101:]
            with _db(srv) as db:
                db.execute("UPDATE ledger SET der = ? WHERE seq = ?", (flipped, seq))
            code, lines = _audit(srv)
            assert code == 1 and any(line.startswith(f"seq {seq}:") for line in lines), (seq, lines)
            with _db(srv) as db:
                db.execute("UPDATE ledger SET der = ? WHERE seq = ?", (der, seq))
        with _db(srv) as db:
            (recipient,) = db.execute("SELECT recipient FROM ledger WHERE seq = 3").fetchone()
            db.execute("UPDATE ledger SET recipient = 7 WHERE seq = 3")
        assert any(line.startswith("seq 3: record altered") for line in _audit(srv)[1])
        with _db(srv) as db:
            db.execute("UPDATE ledger SET recipient = ? WHERE seq = 3", (recipient,))
        assert _audit(srv)[0] == 0
        with _db(srv) as db:
            db.execute("DELETE FROM ledger WHERE seq = 2")
        code, lines = _audit(srv)
        assert code == 1 and "seq 3: records removed: seq 2 missing before this one" in lines, lines
    finally:
        srv.start()
