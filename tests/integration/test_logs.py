"""The server's log: `[log] format = "json"` gives one JSON object a line, each line about a message
carries its provider message id, a session's lines its session and peer, and no false alarm."""

from __future__ import annotations

import json
import logging
import re
import smtplib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kepclient import DevServer, free_port_base, imap, plain_message, signed_by, smtp, submit, wait_for
from kepclient import folder_messages as messages

from kepmta import config, devinit, logs


@pytest.fixture(scope="module")
def json_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    folder = tmp_path_factory.mktemp("kep") / "data"
    devinit.create_identity(folder, devinit.choose_ports(free_port_base()))
    with (folder / devinit.CONFIG_NAME).open("a") as f:
        f.write('\n[log]\nformat = "json"\n')
    server = DevServer(folder).start()
    yield server
    server.stop()


def lines(srv: DevServer) -> list[dict[str, Any]]:
    """Every line of the server's log, each parsed as JSON (a line that is not fails the test)."""
    found = []
    for line in srv.log.read_text().splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        found.append(entry)
    return found


def test_every_line_is_a_json_object_and_names_its_message(json_srv: DevServer) -> None:
    ayse = json_srv.account(1)
    reply = submit(json_srv, 0, [ayse["address"]], signed_by(json_srv, 0, [ayse["address"]], "gunluk-json"))
    found = re.search(r"<([^>]+)>", reply)
    assert found
    message_id = found.group(1)
    box = imap(json_srv, ayse)
    assert wait_for(lambda: messages(box, "INBOX", "gunluk-json"))
    box.logout()
    assert wait_for(lambda: any(e["message"].startswith(f"delivered {message_id}") for e in lines(json_srv)))

    entries = lines(json_srv)
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= entry.keys(), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["ts"]), entry
    about = [e for e in entries if message_id in e["message"]]
    assert {e["message"].split()[0] for e in about} >= {"accepted", "delivered"}
    for entry in about:
        assert entry.get("message_id") == message_id, entry
    accepted = next(e for e in about if e["message"].startswith("accepted"))
    # Said over a submission session: its id and the client's address come with it.
    assert accepted["peer"].startswith("127.0.0.1:") and re.fullmatch(r"[0-9a-f]{8}", accepted["session"])


def test_a_refusal_names_its_reason_and_message(json_srv: DevServer) -> None:
    ali, ayse = json_srv.account(0), json_srv.account(1)
    with smtp(json_srv, ali) as s:
        s.mail(ali["address"])
        s.rcpt(ayse["address"])
        code, _ = s.data(plain_message(ali["address"], [ayse["address"]], "imzasiz", "imzasız"))
        assert code == 554
    refused = [e for e in lines(json_srv) if e["message"].startswith("refused a submission")]
    assert len(refused) == 1 and refused[0]["reason"] == "RA05"
    assert re.fullmatch(r"\d{8}T\d{6}Z\.[0-9a-f]{16}@kep\.test", refused[0]["message_id"])


def test_a_session_line_names_session_and_peer(json_srv: DevServer) -> None:
    with smtplib.SMTP_SSL(
        "127.0.0.1", json_srv.ports["submissions"], context=json_srv.tls(), timeout=60
    ) as s:
        port = s.sock.getsockname()[1]
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(json_srv.account(0)["address"], "not the password")
    failed = wait_for(lambda: [e for e in lines(json_srv) if "failed authentication" in e["message"]])
    assert failed[-1]["peer"] == f"127.0.0.1:{port}"
    assert failed[-1]["level"] == "INFO" and failed[-1]["logger"] == "kepmta.smtp.submission"


def test_no_false_alarm_on_the_implicit_tls_port(json_srv: DevServer) -> None:
    ali, ayse = json_srv.account(0), json_srv.account(1)
    with smtplib.SMTP_SSL(
        "127.0.0.1", json_srv.ports["submissions"], context=json_srv.tls(), timeout=60
    ) as s:
        s.ehlo("client.test")
        assert "auth" in s.esmtp_features  # offered at once: the session is under TLS
        s.login(ali["address"], ali["password"])
        msg = signed_by(json_srv, 0, [ayse["address"]], "tls")
        assert s.sendmail(ali["address"], [ayse["address"]], msg) == {}
    # The STARTTLS port still keeps AUTH for after STARTTLS (RFC 4954 §4, RFC 8314 §3).
    with smtplib.SMTP("127.0.0.1", json_srv.ports["submission"], timeout=60) as s:
        s.ehlo("client.test")
        assert "auth" not in s.esmtp_features
        code, text = s.docmd("AUTH", "PLAIN")
        assert code == 530 and b"STARTTLS" in text
    log = json_srv.log.read_text()
    assert "Requiring AUTH while not requiring TLS" not in log
    assert "auth_require_tls" not in log
    assert not [e for e in lines(json_srv) if e["level"] in ("WARNING", "ERROR", "CRITICAL")]


def test_text_lines_stay_one_line() -> None:
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        record = logging.LogRecord("kepmta.x", logging.ERROR, __file__, 1, "a\nb %s", ("c",), sys.exc_info())
    record.message_id = "20260101T000000Z.0011223344556677@kep.test"
    text = logs.TextFormatter().format(record)
    assert "\n" not in text and "a\\nb c" in text and "ValueError: first\\nsecond" in text
    assert "message_id=20260101T000000Z.0011223344556677@kep.test" in text
    as_json = json.loads(logs.JsonFormatter().format(record))
    assert as_json["message"] == "a\nb c" and as_json["message_id"].endswith("@kep.test")
    assert "ValueError: first" in as_json["exc"]


def test_an_unknown_log_format_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    devinit.create_identity(folder, devinit.choose_ports(free_port_base()))
    with (folder / devinit.CONFIG_NAME).open("a") as f:
        f.write('\n[log]\nformat = "xml"\n')
    with pytest.raises(config.ConfigError, match=r"log\.format"):
        config.load(folder / devinit.CONFIG_NAME)


def test_what_start_up_made_is_left_out_of_garbage_collection(json_srv: DevServer) -> None:
    # Else every full collection walks it, and the event loop stands still 85 to 122 ms.
    pattern = re.compile(r"(\d+) objects made at start-up left out of garbage collection")

    def said() -> list[re.Match[str]]:
        return [m for m in (pattern.fullmatch(e["message"]) for e in lines(json_srv)) if m]

    # Written once the listeners are open, which is when DevServer.start returns.
    found = wait_for(said)
    assert len(found) == 1 and int(found[0].group(1)) > 50_000
