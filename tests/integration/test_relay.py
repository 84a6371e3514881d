"""KEP between providers: two `kepmta serve --dev` processes with their own domains, folders, CAs
and ports, each in the other's peer registry. Users submit with smtplib and read with imaplib;
every evidence is checked with `openssl cms -verify` against the CA of the provider that made it.
Where a test speaks as a provider, it builds the REM message by hand (tests/rem_handmade.py) and
DKIM-signs it with dkimpy directly, not with kepmta's code."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import ssl
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import dkim as dkimpy
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from kepclient import (
    DevServer,
    accounts_cli,
    folder_messages,
    free_port_base,
    imap,
    kepmta,
    openssl_verify,
    p7m,
    receipts,
    signed_by,
    submit,
    wait_for,
)
from relay_fixtures import (
    identity,
    ledger_count,
    provider,
    register,
    relay_as,
    reload_peers,
    reloads,
    spool_files,
)
from rem_handmade import handmade_dispatch, handmade_receipt

from kepmta import pki

A_DOMAIN, B_DOMAIN = "kep-a.test", "kep-b.test"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevServer, DevServer]]:
    root = tmp_path_factory.mktemp("relay")
    a = provider(root / "A", A_DOMAIN).start()
    b = provider(root / "B", B_DOMAIN).start()
    try:
        register(a, b)
        register(b, a)
        yield a, b
    finally:
        a.stop()
        b.stop()


def subject() -> str:
    return "relay-" + uuid.uuid4().hex[:10]


def send(srv: DevServer, sender: int, to: list[str], msg: bytes) -> str:
    """Submit; returns the provider message id from the 250 reply."""
    found = re.search(r"<([^>]+)>", submit(srv, sender, to, msg))
    assert found
    return found.group(1)


def ca(srv: DevServer) -> str:
    assert srv.info
    return str(srv.info["provider_ca"])


def evidence_of(srv: DevServer, acct: dict[str, str], subj: str, event: str) -> list[bytes]:
    with imap(srv, acct) as m:
        return [p7m(r, event) for r in receipts(m, subj, event)]


def inbox(srv: DevServer, acct: dict[str, str], subj: str) -> list[bytes]:
    with imap(srv, acct) as m:
        return folder_messages(m, "INBOX", subj)


def verified(der: bytes, srv: DevServer, tmp: Path) -> str:
    """The XML of an evidence that `openssl cms -verify` accepts under `srv`'s CA."""
    ok, content, _ = openssl_verify(der, ca(srv), tmp)
    assert ok, content
    return content


def exchange(src: DevServer, dst: DevServer, tmp: Path) -> None:
    """A user of `src` writes to a user of `dst`; the sender ends with exactly one of each
    evidence, each verifying against the provider that issued it."""
    sender, reader = src.account(0), dst.account(1)
    subj = subject()
    mid = send(src, 0, [reader["address"]], signed_by(src, 0, [reader["address"]], subj))
    dispatch = wait_for(lambda: inbox(dst, reader, subj), 60)
    assert len(dispatch) == 1
    # The dispatch is src's, byte for byte: its provider signature verifies under src's CA.
    raw = tmp / "dispatch.eml"
    raw.write_bytes(dispatch[0])
    check = subprocess.run(
        ["openssl", "smime", "-verify", "-in", str(raw), "-CAfile", ca(src), "-out", os.devnull],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    assert f"<{mid}>".encode() in dispatch[0]

    expected = {"SubmissionAcceptance": src, "RelayAcceptance": dst, "ContentConsignment": dst}
    for event, issuer in expected.items():
        found = wait_for(lambda e=event: evidence_of(src, sender, subj, e), 60)  # type: ignore[misc]
        assert len(found) == 1, event
        xml = verified(found[0], issuer, tmp)
        assert mid in xml
        if issuer is dst:
            # EN 319 522-3 M05: the relay evidence names the other provider.
            assert "ExternalERDSDetails" in xml or event != "RelayAcceptance"
            assert issuer.domain and issuer.domain in xml
        else:
            # src's own evidence does not verify under dst's CA.
            assert not openssl_verify(found[0], ca(dst), tmp)[0]
    # The recipient opens it (a FETCH that is not PEEK): ContentHandover from dst, once.
    with imap(dst, reader) as m:
        m.select("INBOX")
        _, data = m.search(None, "SUBJECT", f'"{subj}"')
        m.fetch(data[0].split()[0].decode(), "(BODY[])")
    handover = wait_for(lambda: evidence_of(src, sender, subj, "ContentHandover"), 60)
    assert len(handover) == 1
    assert "ContentHandover" in verified(handover[0], dst, tmp)
    for event in expected:
        assert len(evidence_of(src, sender, subj, event)) == 1, f"{event} filed twice"
    # The sender's provider shows and exports the peer's evidence beside its own, and the bundle
    # verifies offline with the peer's CA carried inside it.
    shown = kepmta("evidence", "show", mid, "--data", str(src.data))
    assert shown.returncode == 0, shown.stderr
    assert "ContentHandover" in shown.stdout and f"peer {dst.domain}" in shown.stdout, shown.stdout
    bundle = tmp / "bundle.zip"
    r = kepmta("evidence", "export", mid, "-o", str(bundle), "--data", str(src.data))
    assert r.returncode == 0, r.stderr
    r = kepmta("evidence", "verify", str(bundle), "--ca", ca(src))
    assert r.returncode == 0, r.stdout + r.stderr
    with zipfile.ZipFile(bundle) as z:
        assert any(n.startswith(f"peers/{dst.domain}/") for n in z.namelist())


def test_a_to_b_with_every_evidence(pair: tuple[DevServer, DevServer], tmp_path: Path) -> None:
    a, b = pair
    exchange(a, b, tmp_path)


def test_b_to_a_with_every_evidence(pair: tuple[DevServer, DevServer], tmp_path: Path) -> None:
    a, b = pair
    exchange(b, a, tmp_path)


def test_refused_recipients_get_relay_rejection(pair: tuple[DevServer, DevServer], tmp_path: Path) -> None:
    a, b = pair
    blocked = b.account(2)["address"]
    code, _, err = accounts_cli(b.data, "block", blocked)
    assert code == 0, err
    code, closed, err = accounts_cli(
        b.data,
        *("add", "person", "--first-name", "Kapalı", "--last-name", "Hesap", "--active", "--password-stdin"),
        stdin="kapali-hesap-parolasi\n",
    )
    assert code == 0, err
    code, _, err = accounts_cli(b.data, "close", closed)
    assert code == 0, err
    unknown = f"nobody.here@{B_DOMAIN}"
    refused = [unknown, blocked, closed]
    subj = subject()
    send(a, 0, refused, signed_by(a, 0, refused, subj))
    rejections = wait_for(
        lambda: (r := evidence_of(a, a.account(0), subj, "RelayRejection")) and len(r) == 3 and r, 60
    )
    assert rejections and len(rejections) == 3
    texts = [verified(der, b, tmp_path) for der in rejections]
    assert all("RB06" in t for t in texts)
    for address, state in ((unknown, "unknown"), (blocked, "blocked"), (closed, "closed")):
        assert any(address in t and f"is {state}" in t for t in texts), state
    assert not evidence_of(a, a.account(0), subj, "RelayAcceptance")
    code, _, err = accounts_cli(b.data, "activate", blocked)
    assert code == 0, err


# --- speaking as a provider ------------------------------------------------------------------------


def dkim_signed(message: bytes, srv: DevServer) -> bytes:
    """DKIM-sign as `srv` with its RSA key, by dkimpy itself (RFC 6376)."""
    assert srv.domain
    key = serialization.load_pem_private_key((srv.data / "pki" / "dkim-rsa.key").read_bytes(), None)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    header = dkimpy.sign(
        message,
        b"kep-rsa",
        srv.domain.encode(),
        pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"message-id", b"rem-digestvalue", b"content-type"],
    )
    return header.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + message


def transaction(srv: DevServer) -> tuple[x509.Certificate, object]:
    pair_ = pki.load_pair(srv.data / "pki" / "transaction.pem", srv.data / "pki" / "transaction.key")
    return pair_.cert, pair_.key


def original(sender: str, to: str, subj: str, body: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subj}\r\nMessage-ID: <{uuid.uuid4().hex}@client.test>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def dispatch_as(src: DevServer, dst: DevServer, subj: str, **kw: object) -> tuple[bytes, str]:
    """A dispatch of `src` for `dst`'s second account, built by hand from EVIDENCE.md."""
    assert src.domain
    sender, to = src.account(0)["address"], dst.account(1)["address"]
    cert, key = kw.pop("signer", None) or transaction(src)  # type: ignore[misc]
    mid = kw.pop("mid", None) or f"hand.{uuid.uuid4().hex[:12]}@{src.domain}"
    body = str(kw.pop("body", "Merhaba, elle yazılmış bir REM iletisi.\r\n"))
    raw = handmade_dispatch(
        original(sender, to, subj, body),
        sender=sender,
        to=[to],
        subject=subj,
        provider_message_id=str(mid),
        signer_cert=cert,
        signer_key=key,  # type: ignore[arg-type]
        domain=src.domain,
        **kw,  # type: ignore[arg-type]
    )
    return raw, str(mid)


def test_handmade_dispatch_is_accepted_and_delivered_as_sent(pair: tuple[DevServer, DevServer]) -> None:
    a, b = pair
    subj = subject()
    raw, mid = dispatch_as(a, b, subj)
    signed = dkim_signed(raw, a)
    code, text = asyncio.run(
        relay_as(identity(a), b, f"rem-service@{A_DOMAIN}", [b.account(1)["address"]], signed)
    )
    assert code == 250, text
    got = wait_for(lambda: inbox(b, b.account(1), subj), 60)
    assert got == [signed], "the peer's dispatch is delivered byte for byte"
    assert mid.encode() in got[0]
    # A never sent that message, so it refuses B's receipts about it; B ends those jobs as
    # failed with A's reply, kept for the operator, instead of retrying for ever or dropping them.
    assert wait_for(lambda: peer_receipts(b, mid, "failed") >= 2, 60)
    assert peer_receipts(b, mid, "pending") == 0


def peer_receipts(srv: DevServer, mid: str, state: str) -> int:
    with sqlite3.connect(srv.data / "kepmta.db") as db:
        query = "select count(*) from jobs where kind = 'peer-receipt' and message_id = ? and state = ?"
        failed = [] if state != "failed" else ["and last_error like '%refused%'"]
        count: int = db.execute(" ".join([query, *failed]), (mid, state)).fetchone()[0]
    return count


def test_tampered_dispatch_and_bad_dkim_leave_no_trace(pair: tuple[DevServer, DevServer]) -> None:
    a, b = pair
    subj = subject()
    raw, _ = dispatch_as(a, b, subj)
    signed = dkim_signed(raw, a)
    tampered = signed.replace("elle yazılmış".encode(), "elle YAZILMIŞ".encode())
    assert tampered != signed
    before_ledger, before_spool = ledger_count(b), spool_files(b)
    code, text = asyncio.run(
        relay_as(identity(a), b, f"rem-service@{A_DOMAIN}", [b.account(1)["address"]], tampered)
    )
    assert code == 550 and "5.7.20" in text, text
    # Signed by B's DKIM key, though it claims to come from A: no signature of A's domain.
    foreign = dkim_signed(raw, b)
    code, text = asyncio.run(
        relay_as(identity(a), b, f"rem-service@{A_DOMAIN}", [b.account(1)["address"]], foreign)
    )
    assert code == 550 and "dkim" in text.lower(), text
    assert ledger_count(b) == before_ledger and spool_files(b) == before_spool
    assert not inbox(b, b.account(1), subj)


def test_strangers_are_refused_without_trace(pair: tuple[DevServer, DevServer], tmp_path: Path) -> None:
    a, b = pair
    before_ledger, before_spool = ledger_count(b), spool_files(b)
    subj = subject()
    raw, _ = dispatch_as(a, b, subj)
    message = dkim_signed(raw, a)
    to = [b.account(1)["address"]]
    # A client certificate from a CA no peer is registered with.
    stranger_ca = pki.issue("Stranger CA", pki.Role.CA)
    stranger = pki.issue(A_DOMAIN, pki.Role.TLS_CLIENT, stranger_ca, dns_names=(A_DOMAIN,))
    pki.save(stranger, tmp_path / "c.pem", tmp_path / "c.key")
    ctx = ssl.create_default_context(cafile=ca(b))
    ctx.check_hostname = False
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "c.key")
    try:
        code, text = asyncio.run(relay_as(identity(a), b, f"rem-service@{A_DOMAIN}", to, message, tls=ctx))
        assert code >= 500, text
    except (ssl.SSLError, ConnectionError, OSError):
        pass  # refused in the TLS handshake: nothing was said at all
    # No client certificate at all.
    bare = ssl.create_default_context(cafile=ca(b))
    bare.check_hostname = False
    code, text = asyncio.run(relay_as(identity(a), b, f"rem-service@{A_DOMAIN}", to, message, tls=bare))
    assert code == 530, text
    # A's own certificate, but a sender outside A's domains.
    code, text = asyncio.run(relay_as(identity(a), b, "someone@gmail.com", to, message))
    assert code == 550 and "own domains" in text, text
    # A's certificate, relaying to a third domain.
    code, text = asyncio.run(relay_as(identity(a), b, f"rem-service@{A_DOMAIN}", ["x@gmail.com"], message))
    assert code == 550 and "relaying denied" in text, text
    assert ledger_count(b) == before_ledger and spool_files(b) == before_spool
    assert not inbox(b, b.account(1), subj)


def test_swaks_as_an_internet_mta_is_refused(pair: tuple[DevServer, DevServer]) -> None:
    _a, b = pair
    if shutil.which("swaks") is None:
        if os.environ.get("KEPMTA_REQUIRE_INTEROP"):
            pytest.fail("swaks is not installed (.ci/run installs it)")
        pytest.skip("swaks is not installed")
    before_ledger, before_spool = ledger_count(b), spool_files(b)
    server = f"127.0.0.1:{b.ports['relay']}"
    to = b.account(1)["address"]
    plain = subprocess.run(
        ["swaks", "--server", server, "--from", "news@example.com", "--to", to, "--timeout", "30"],
        capture_output=True,
        text=True,
    )
    assert plain.returncode != 0 and "530" in plain.stdout, plain.stdout
    tls = subprocess.run(
        ["swaks", "--server", server, "-tls", "--from", "news@example.com", "--to", to, "--timeout", "30"],
        capture_output=True,
        text=True,
    )
    assert tls.returncode != 0 and re.search(r"<~\*? 530 5\.7\.0", tls.stdout), tls.stdout
    assert ledger_count(b) == before_ledger and spool_files(b) == before_spool


def test_forged_receipts_are_refused_and_never_filed(
    pair: tuple[DevServer, DevServer], tmp_path: Path
) -> None:
    a, b = pair
    subj = subject()
    sender = a.account(0)["address"]
    # A real message from A to B, so the receipts below are about something A sent.
    mid = send(a, 0, [b.account(1)["address"]], signed_by(a, 0, [b.account(1)["address"]], subj))
    wait_for(lambda: evidence_of(a, a.account(0), subj, "ContentConsignment"), 60)
    stranger_ca = pki.issue("Stranger CA", pki.Role.CA)
    stranger = pki.issue("Stranger", pki.Role.EVIDENCE, stranger_ca, email=f"rem-service@{B_DOMAIN}")
    b_cert, b_key = transaction(b)
    common = {"sender": sender, "subject": subj, "provider_message_id": mid, "domain": B_DOMAIN}
    forged = [
        # Signed by a key B's registry entry does not vouch for.
        handmade_receipt(
            event="ContentHandover",
            reason="MessageRead",
            signer_cert=stranger.cert,
            signer_key=stranger.key,
            **common,
        ),
        # B's signature on the receipt, but an evidence inside signed by a stranger.
        handmade_receipt(
            event="ContentHandover",
            reason="MessageRead",
            signer_cert=b_cert,
            signer_key=b_key,  # type: ignore[arg-type]
            evidence_der=handmade_receipt_evidence(stranger, mid),
            **common,
        ),
    ]
    before = ledger_count(a)
    for receipt in forged:
        code, text = asyncio.run(
            relay_as(identity(b), a, f"rem-service@{B_DOMAIN}", [sender], dkim_signed(receipt, b))
        )
        assert code == 550, text
    assert ledger_count(a) == before
    assert not evidence_of(a, a.account(0), subj, "ContentHandover")


def handmade_receipt_evidence(signer: pki.KeyPair, mid: str) -> bytes:
    from rem_handmade import evidence_xml, handmade_evidence

    return handmade_evidence(
        evidence_xml("ContentHandover", mid, f"ev.x@{B_DOMAIN}"), signer.cert, signer.key
    )


def _expect_name(a: DevServer, name: str) -> None:
    """Set the name A's registry says B's TLS server certificate carries."""
    peers = a.data / "peers.toml"
    before = reloads(a)
    peers.write_text(
        re.sub(r'(?m)^tls_server_name = ".*"$', f'tls_server_name = "{name}"', peers.read_text())
    )
    reload_peers(a, before)


def pending_relays(srv: DevServer, mids: list[str]) -> int:
    with sqlite3.connect(srv.data / "kepmta.db") as db:
        marks = ",".join("?" * len(mids))
        query = (
            "select count(*) from jobs where kind = 'relay' and state = 'pending'"
            f" and message_id in ({marks})"
        )
        count: int = db.execute(query, mids).fetchone()[0]
    return count


def test_peer_refusals_come_back_as_relay_rejection(
    pair: tuple[DevServer, DevServer], tmp_path: Path
) -> None:
    """B refuses a bad provider signature (RB04), a digest mismatch (RB02) and a message over its
    25 MB limit (RB06); A keeps B's RelayRejection for each. Meanwhile A's registry expects
    another name in B's TLS certificate, so A itself sends nothing to B: the refused dispatches
    are the test's, speaking as A about messages A really accepted."""
    a, b = pair
    _expect_name(a, "not-kep-b.test")
    to = b.account(1)["address"]
    cases = {}
    for case in ("signature", "digest", "size"):
        subj = subject()
        cases[case] = (subj, send(a, 0, [to], signed_by(a, 0, [to], subj)))
    # A will not hand them to a B whose certificate its registry does not vouch for.
    for _, mid in cases.values():
        assert wait_for(lambda m=mid: f"(relay of {m}):" in a.log.read_text(), 30)  # type: ignore[misc]
    assert "CERTIFICATE_VERIFY_FAILED" in a.log.read_text()
    sender = f"rem-service@{A_DOMAIN}"

    subj, mid = cases["signature"]
    raw, _ = dispatch_as(a, b, subj, mid=mid)
    broken = raw.replace("elle yazılmış".encode(), "elle YAZILMIŞ".encode())  # after the provider signed
    code, text = asyncio.run(relay_as(identity(a), b, sender, [to], dkim_signed(broken, a)))
    assert code == 554 and "RelayRejection" in text, text

    subj, mid = cases["digest"]
    raw, _ = dispatch_as(a, b, subj, mid=mid, digest_b64=base64.b64encode(b"\0" * 32).decode())
    code, text = asyncio.run(relay_as(identity(a), b, sender, [to], dkim_signed(raw, a)))
    assert code == 554 and "digest" in text, text

    subj, mid = cases["size"]
    big = "Büyük ek.\r\n" + ("x" * 76 + "\r\n") * (27 * 1024 * 1024 // 78)
    raw, _ = dispatch_as(a, b, subj, mid=mid, body=big)
    code, text = asyncio.run(relay_as(identity(a), b, sender, [to], dkim_signed(raw, a)))
    assert code == 552 and "RelayRejection" in text, text

    for case, reason in (("signature", "RB04"), ("digest", "RB02"), ("size", "RB06")):
        subj, mid = cases[case]
        found = wait_for(lambda s=subj: evidence_of(a, a.account(0), s, "RelayRejection"), 60)  # type: ignore[misc]
        assert len(found) == 1, case
        xml = verified(found[0], b, tmp_path)
        assert reason in xml and mid in xml, (case, xml)
        assert not inbox(b, b.account(1), subj)
    _expect_name(a, "localhost")
    # B has decided for these recipients: A's relay jobs end without sending again.
    mids = [mid for _, mid in cases.values()]
    assert wait_for(lambda: not pending_relays(a, mids), 60)
    for subj, _ in cases.values():
        assert not inbox(b, b.account(1), subj)
        assert not evidence_of(a, a.account(0), subj, "RelayAcceptance")


def test_refusal_without_evidence_ends_in_relay_failure(
    pair: tuple[DevServer, DevServer], tmp_path: Path
) -> None:
    """B's registry entry for A names a DKIM key A does not sign with: B refuses A's dispatch
    (550 5.7.20) and, the dispatch not being A's as far as B can tell, makes no evidence. A waits
    `refusal_wait` for B's RelayRejection, then records RelayFailure naming B's reply."""
    a, b = pair
    peers = b.data / "peers.toml"
    saved = peers.read_text()
    before = reloads(b)
    text = saved
    for algorithm in ("ed25519", "rsa"):
        pattern = rf'(?m)^(algorithm = "{algorithm}"\npublic_key = )".*"$'
        text = re.sub(pattern, rf'\1"{stranger_dkim_key(algorithm)}"', text)
    assert text != saved
    peers.write_text(text)
    reload_peers(b, before)
    try:
        to = b.account(1)["address"]
        subj = subject()
        mid = send(a, 0, [to], signed_by(a, 0, [to], subj))
        failure = wait_for(lambda: evidence_of(a, a.account(0), subj, "RelayFailure"), 60)
        assert len(failure) == 1
        xml = verified(failure[0], a, tmp_path)
        assert "RB07" in xml and "5.7.20" in xml and mid in xml
        assert not inbox(b, b.account(1), subj)
    finally:
        before = reloads(b)
        peers.write_text(saved)
        reload_peers(b, before)


def stranger_dkim_key(algorithm: str) -> str:
    """A fresh public key as a DKIM p= value (RFC 8463 §4.2 for Ed25519; RSA as its
    SubjectPublicKeyInfo, RFC 6376 §3.6.1), made here."""
    if algorithm == "ed25519":
        raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        raw = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode()


# --- B down, A killed ----------------------------------------------------------------------------


def test_peer_down_then_up_is_retried_and_delivered_once(pair: tuple[DevServer, DevServer]) -> None:
    a, b = pair
    b.stop()
    subj = subject()
    to = b.account(1)["address"]
    mid = send(a, 0, [to], signed_by(a, 0, [to], subj))
    assert wait_for(lambda: f"(relay of {mid}):" in a.log.read_text(), 30)
    b.start()
    got = wait_for(lambda: inbox(b, b.account(1), subj), 90)
    assert len(got) == 1
    assert wait_for(lambda: evidence_of(a, a.account(0), subj, "RelayAcceptance"), 60)
    assert len(inbox(b, b.account(1), subj)) == 1


def unreachable_peer(a: DevServer, name: str, domain: str, tmp: Path) -> None:
    """Register at A a provider whose relay endpoint never answers."""
    gone = pki.issue(f"{name} CA", pki.Role.CA)
    pki.save(gone, tmp / "gone-ca.pem", tmp / "gone-ca.key")
    before = reloads(a)
    ca_file = str(tmp / "gone-ca.pem")
    r = kepmta(
        *("peers", "add", "--data", str(a.data), "--name", name, "--domain", domain),
        *("--host", "127.0.0.1", "--port", "9", "--tls-ca", ca_file, "--evidence-ca", ca_file),
    )
    assert r.returncode == 0, r.stderr
    reload_peers(a, before)


def test_peer_gone_for_good_warns_then_fails(pair: tuple[DevServer, DevServer], tmp_path: Path) -> None:
    a, _ = pair
    unreachable_peer(a, "Gone KEP", "gone.test", tmp_path)
    subj = subject()
    send(a, 0, ["someone@gone.test"], signed_by(a, 0, ["someone@gone.test"], subj))
    # Other tests' peers warn this sender too: wait for the warning about this message.
    assert wait_for(lambda: [w for w in inbox(a, a.account(0), "warning") if subj.encode() in w], 60)
    failure = wait_for(lambda: evidence_of(a, a.account(0), subj, "RelayFailure"), 90)
    assert len(failure) == 1
    xml = verified(failure[0], a, tmp_path)
    assert "RB09" in xml and "Gone KEP" in xml
    assert "ExternalERDSDetails" in xml


def test_a_peer_without_starttls_is_never_sent_to(pair: tuple[DevServer, DevServer], tmp_path: Path) -> None:
    """A registered endpoint that answers SMTP but offers no STARTTLS (here a bare aiosmtpd) gets
    nothing: not the message, not even MAIL FROM (RFC 3207 §4)."""
    a, _ = pair
    received: list[bytes] = []

    class Keep:
        async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
            received.append(envelope.original_content or b"")
            return "250 OK"

    port = free_port_base()
    plain = Controller(Keep(), hostname="127.0.0.1", port=port)
    plain.start()
    try:
        ca_file = str(b_ca_file(pair))
        before = reloads(a)
        r = kepmta(
            *("peers", "add", "--data", str(a.data), "--name", "Plain KEP", "--domain", "plain.test"),
            *("--host", "127.0.0.1", "--port", str(port), "--tls-ca", ca_file, "--evidence-ca", ca_file),
        )
        assert r.returncode == 0, r.stderr
        reload_peers(a, before)
        subj = subject()
        mid = send(a, 0, ["someone@plain.test"], signed_by(a, 0, ["someone@plain.test"], subj))
        assert wait_for(
            lambda: (
                f"(relay of {mid}):" in a.log.read_text() and "does not offer STARTTLS" in a.log.read_text()
            ),
            30,
        )
        assert received == []
    finally:
        plain.stop()


def b_ca_file(pair: tuple[DevServer, DevServer]) -> Path:
    return pair[1].data / "pki" / "provider-ca.pem"


def test_a_domain_gone_from_the_registry_ends_in_relay_failure_rb08(
    pair: tuple[DevServer, DevServer], tmp_path: Path
) -> None:
    a, _ = pair
    unreachable_peer(a, "Vanishing KEP", "vanish.test", tmp_path)
    subj = subject()
    mid = send(a, 0, ["someone@vanish.test"], signed_by(a, 0, ["someone@vanish.test"], subj))
    assert wait_for(lambda: f"(relay of {mid}):" in a.log.read_text(), 30)
    before = reloads(a)
    r = kepmta("peers", "remove", "vanish.test", "--data", str(a.data))
    assert r.returncode == 0, r.stderr
    reload_peers(a, before)
    failure = wait_for(lambda: evidence_of(a, a.account(0), subj, "RelayFailure"), 60)
    assert len(failure) == 1
    xml = verified(failure[0], a, tmp_path)
    assert "RB08" in xml and "vanish.test" in xml


def test_queue_drop_ends_a_relay_with_relay_failure(
    pair: tuple[DevServer, DevServer], tmp_path: Path
) -> None:
    a, _ = pair
    unreachable_peer(a, "Slow KEP", "slow.test", tmp_path)
    subj = subject()
    mid = send(a, 0, ["someone@slow.test"], signed_by(a, 0, ["someone@slow.test"], subj))

    def relay_job() -> int | None:
        r = kepmta("queue", "list", "--data", str(a.data), "--kind", "relay", "--json")
        assert r.returncode == 0, r.stderr
        return next((j["id"] for j in json.loads(r.stdout) if j["message_id"] == mid), None)

    job = wait_for(relay_job, 30)
    assert job is not None
    r = kepmta("queue", "drop", str(job), "--data", str(a.data), "--note", "peer closed its service")
    assert r.returncode == 0, r.stderr
    failure = wait_for(lambda: evidence_of(a, a.account(0), subj, "RelayFailure"), 60)
    assert len(failure) == 1
    xml = verified(failure[0], a, tmp_path)
    assert "RB07" in xml and "peer closed its service" in xml
    assert relay_job() is None


def test_kill_minus_9_while_relaying_delivers_each_once(pair: tuple[DevServer, DevServer]) -> None:
    a, b = pair
    to = b.account(1)["address"]
    subjects = [subject() for _ in range(5)]
    for subj in subjects:
        send(a, 0, [to], signed_by(a, 0, [to], subj))
    assert a.proc is not None
    os.killpg(a.proc.pid, signal.SIGKILL)
    a.proc.wait()
    a.start()
    for subj in subjects:
        assert wait_for(lambda s=subj: inbox(b, b.account(1), s), 90), subj  # type: ignore[misc]
    for subj in subjects:
        assert len(inbox(b, b.account(1), subj)) == 1, f"{subj} delivered twice"
