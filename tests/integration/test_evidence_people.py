"""`kepmta evidence show|export|report` and `verify FILE.zip` against a real `kepmta serve --dev`
after real messages: smtplib submits, imaplib reads, the commands run as a person runs them."""

from __future__ import annotations

import email.header
import email.policy
import io
import json
import os
import re
import shutil
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kepclient import DevServer, imap, kepmta, receipts, signed_by, smtp, wait_for


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("kep") / "data").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sent(dev: DevServer) -> dict[str, str]:
    """A message from Ali to Ayşe and Mehmet that Ayşe has opened: evidence 10, 40, 40 and 60."""
    ali, ayse, mehmet = dev.account(0), dev.account(1), dev.account(2)
    token = uuid.uuid4().hex[:12]  # IMAP SEARCH takes ASCII; the subject itself is Turkish
    subject = f"Kira ihtarnamesi – Şubat {token}"
    to = [ayse["address"], mehmet["address"]]
    # RFC 2047 encoded, as mail clients send a Turkish subject
    encoded = email.header.Header(subject, "utf-8").encode()
    msg = signed_by(dev, 0, to, encoded, "Kira bedelinin ödenmesi ihtar olunur.")
    ua_id = re.search(rb"Message-ID: <([^>]+)>", msg)
    assert ua_id
    with smtp(dev, ali) as s:
        assert s.sendmail(ali["address"], to, msg) == {}
        reply = s.noop()  # the DATA reply is gone; the provider id comes from the receipt below
    assert reply[0] == 250
    a, b = imap(dev, ali), imap(dev, ayse)
    try:
        assert len(wait_for(lambda: receipts(a, token, "ContentConsignment"), timeout=60)) == 2
        b.select("INBOX")
        _, data = b.uid("SEARCH", None, "SUBJECT", f'"{token}"')  # type: ignore[arg-type]
        b.uid("FETCH", data[0].split()[0].decode(), "(BODY[])")
        handover = wait_for(lambda: receipts(a, token, "ContentHandover"), timeout=60)
        assert len(handover) == 1
        provider_id = re.search(rb"(?im)^In-Reply-To: <([^>]+)>", handover[0])
        assert provider_id
    finally:
        a.logout()
        b.logout()
    return {
        "id": provider_id.group(1).decode(),
        "token": token,
        "ua_id": ua_id.group(1).decode(),
        "subject": subject,
        "data": str(dev.data),
        "ca": dev.info["provider_ca"],  # type: ignore[index]
    }


def test_show_prints_the_timeline_and_verifies_each_evidence(sent: dict[str, str]) -> None:
    r = kepmta("evidence", "show", f"<{sent['id']}>", "--data", sent["data"])
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert f"Message      <{sent['id']}>" in out and sent["subject"] in out
    rows = [line for line in out.splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line)]
    events = [(line.split()[2], line.split()[3]) for line in rows]
    assert events == [
        ("10", "SubmissionAcceptance"),
        ("40", "ContentConsignment"),
        ("40", "ContentConsignment"),
        ("60", "ContentHandover"),
    ]
    assert all(line.rstrip().endswith("✓ yes") for line in rows)
    assert "All 4 evidence verified." in out


def test_show_finds_the_message_by_the_senders_message_id(sent: dict[str, str]) -> None:
    r = kepmta("evidence", "show", sent["ua_id"], "--data", sent["data"], "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["message_id"] == sent["id"]
    assert [e["ptt_code"] for e in shown["events"]] == [10, 40, 40, 60]
    assert all(e["verified"] for e in shown["events"])
    assert len(shown["sha256"]) == 64


def test_unknown_message_is_one_clear_line(sent: dict[str, str]) -> None:
    r = kepmta("evidence", "show", "<nothing@kep.test>", "--data", sent["data"])
    assert r.returncode == 2
    assert r.stderr.strip() == "kepmta: no message with the id <nothing@kep.test>"
    r = kepmta("evidence", "show", sent["id"], "--data", str(Path(sent["data"]).parent / "missing"))
    assert r.returncode == 2 and not (Path(sent["data"]).parent / "missing").exists()


def test_export_then_verify_offline_and_detect_tampering(sent: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "kanit.zip"
    r = kepmta("evidence", "export", sent["id"], "-o", str(out), "--data", sent["data"])
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        members = {n: zf.read(n) for n in names}
    assert sum(n.startswith("evidence/") and n.endswith(".p7m") for n in names) == 4
    assert sum(n.startswith("timestamps/") and n.endswith(".tst") for n in names) == 4
    assert {"manifest.json", "manifest.json.p7s", "README.txt", "ledger.json", "message.json"} <= set(names)
    assert json.loads(members["message.json"])["subject"] == sent["subject"]

    # With the CA from the configuration, and with only the CA file, as an outside verifier would.
    for args in (["--data", sent["data"]], ["--ca", sent["ca"]]):
        v = kepmta("evidence", "verify", str(out), *args)
        assert v.returncode == 0, v.stdout + v.stderr
        assert v.stdout.rstrip().endswith("Result: VALID")

    p7m = next(n for n in names if n.endswith("ContentHandover-r1.p7m"))
    changed = bytearray(members[p7m])
    changed[len(changed) // 2] ^= 0x01
    tampered = tmp_path / "tampered.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, bytes(changed) if name == p7m else members[name])
    tampered.write_bytes(buf.getvalue())
    v = kepmta("evidence", "verify", str(tampered), "--ca", sent["ca"])
    assert v.returncode == 1
    assert f"{p7m} was changed" in v.stdout and "Result: NOT VALID" in v.stdout


def test_report_is_a_bilingual_pdf_with_every_event(sent: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "rapor.pdf"
    r = kepmta("evidence", "report", sent["id"], "-o", str(out), "--data", sent["data"])
    assert r.returncode == 0, r.stderr
    assert "all evidence valid" in r.stdout
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and b"DejaVu" in data  # the font travels inside the file
    if shutil.which("pdftotext") is None:
        # .ci/run installs poppler-utils and sets KEPMTA_REQUIRE_INTEROP: there it must run
        if os.environ.get("KEPMTA_REQUIRE_INTEROP"):
            pytest.fail("pdftotext (poppler-utils) is not installed")
        pytest.skip("pdftotext (poppler-utils) is not installed")
    text = subprocess.run(["pdftotext", "-layout", str(out), "-"], capture_output=True, text=True).stdout
    for expected in (
        "KEP Kanıt Raporu",
        "GEÇERLİ / VALID",
        sent["subject"],
        "Gönderim kabul edildi",
        "Alıcının posta kutusuna teslim edildi",
        "Alıcı iletiyi açtı",
        "Opened by the recipient",
        "ali.yilmaz@kep.test",
        "mehmet.demir@kep.test",
    ):
        assert expected in text, expected
    assert text.count("✓ geçerli") == 4


def test_receipts_follow_en_319_532_3(dev: DevServer, sent: dict[str, str]) -> None:
    """Every receipt: REM-* fields, the Turkish KEP fields, In-Reply-To the dispatch, a TR/EN
    introduction as text and HTML, the evidence XML section and the signed <Event>.p7m."""
    a = imap(dev, dev.account(0))
    try:
        found = {
            event: receipts(a, sent["token"], event)
            for event in ("SubmissionAcceptance", "ContentConsignment", "ContentHandover")
        }
    finally:
        a.logout()
    for event, raws in found.items():
        assert raws, event
        for raw in raws:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            assert msg["In-Reply-To"] == f"<{sent['id']}>"
            assert msg["X-TR-REM-iletiID"] == sent["id"]
            assert msg["X-TR-REM-iletiTip"] == "standart"
            assert msg["REM-MessageType"] == "http://uri.etsi.org/19522/v1#/ERDMessageType/receipt"
            assert msg["REM-EventIdentifier"] == f"http://uri.etsi.org/19522/Event/{event}"
            assert msg["REM-UAMessageIdentifier"] == f"<{sent['ua_id']}>"
            assert msg["REM-Evidence-ID"] and msg["REM-ReasonIdentifier"] and msg["REM-MD08"]
            plain = msg.get_body(preferencelist=("plain",))
            rich = msg.get_body(preferencelist=("html",))
            assert plain is not None and rich is not None
            code = {"SubmissionAcceptance": 10, "ContentConsignment": 40, "ContentHandover": 60}[event]
            assert f"KEP kanıt kodu {code}" in plain.get_content()
            assert f"KEP evidence code {code}" in plain.get_content()
            assert 'lang="tr"' in rich.get_content() and 'lang="en"' in rich.get_content()
            sections = {p.get("REM-Section-Type") for p in msg.walk()}
            assert {"rem_message/introduction", "rem_message/xml_evidence"} <= sections
            assert "rem_message/original" not in sections
            names = [p.get_filename() for p in msg.walk() if p.get_filename()]
            assert names == [f"{event}.xml", f"{event}.p7m", "smime.p7s"]
