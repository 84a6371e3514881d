"""Notices that a KEP arrived, from a real `kepmta serve --dev` with [notify] set: an SMS through a
webhook (a local HTTP server that answers, fails, or hangs) and an e-mail through a local aiosmtpd
smarthost. They name the sender and never the subject or the body, a failure is retried, and a
webhook that hangs delays no delivery."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from kepclient import DevServer, accounts_cli, folder_messages, free_port, imap, signed_by, submit, wait_for

PHONE = "+905321234567"
ORDINARY = "ayse.kaya@example.org"
WAIT = 60


@dataclass
class Webhook:
    """An SMS gateway stand-in: each request takes the next planned answer ("ok" when none is
    left): "fail" answers 500, "hang" holds the request until `release` is set."""

    plan: deque[str] = field(default_factory=deque)
    requests: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (body, answer)
    hanging: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    answered_hung: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_message(self, message_id: str) -> list[str]:
        with self.lock:
            return [answer for body, answer in self.requests if body.get("message_id") == message_id]


def serve_webhook(hook: Webhook) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with hook.lock:
                answer = hook.plan.popleft() if hook.plan else "ok"
                hook.requests.append((body, answer))
            if answer == "hang":
                hook.hanging.set()
                hook.release.wait(WAIT * 2)
            self.send_response(500 if answer == "fail" else 200)
            self.end_headers()
            self.wfile.write(b"{}")
            if answer == "hang":
                hook.answered_hung.set()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Smarthost:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


@dataclass
class Setup:
    srv: DevServer
    webhook: Webhook
    smarthost: Smarthost


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    hook = Webhook()
    http = serve_webhook(hook)
    mail = Smarthost()
    port = free_port()
    controller = Controller(mail, hostname="127.0.0.1", port=port)
    controller.start()
    srv = DevServer(tmp_path_factory.mktemp("kep") / "data").start()
    srv.stop()
    config = Path(srv.info["data"]) / "kepmta.toml"  # type: ignore[index]
    config.write_text(
        config.read_text()
        + f"""
[notify]
sms_webhook = "http://127.0.0.1:{http.server_address[1]}/sms"
timeout = {WAIT}
retry_schedule = [1]

[notify.smarthost]
host = "127.0.0.1"
port = {port}
security = "none"
sender = "bildirim@kep.test"
"""
    )
    srv.start()
    ayse = srv.account(1)["address"]
    code, _, err = accounts_cli(srv.data, "set-notify", ayse, "--phone", PHONE, "--email", ORDINARY)
    assert code == 0, err
    yield Setup(srv, hook, mail)
    hook.release.set()
    srv.stop()
    controller.stop()
    http.shutdown()


def send(s: Setup) -> tuple[str, str, str]:
    """Ali sends Ayşe a KEP; its provider message id, subject and body."""
    subj, body = "gizli-konu-" + uuid.uuid4().hex[:8], "Gizli icerik " + uuid.uuid4().hex[:8]
    ayse = s.srv.account(1)["address"]
    reply = submit(s.srv, 0, [ayse], signed_by(s.srv, 0, [ayse], subj, body))
    found = re.search(r"<([^>]+)>", reply)
    assert found, reply
    return found.group(1), subj, body


def test_sms_and_email_name_the_sender_and_not_the_content(setup: Setup) -> None:
    message_id, subj, body = send(setup)
    ali, ayse = setup.srv.account(0)["address"], setup.srv.account(1)["address"]
    assert wait_for(lambda: setup.webhook.for_message(message_id), WAIT) == ["ok"]
    [(sms, _)] = [r for r in setup.webhook.requests if r[0]["message_id"] == message_id]
    assert sms["to"] == PHONE and sms["account"] == ayse and sms["sender"] == ali
    assert ali in sms["text"] and ayse in sms["text"]
    sent = json.dumps(sms, ensure_ascii=False)
    assert subj not in sent and body not in sent

    def notices() -> list[bytes]:
        return [raw for rcpts, raw in setup.smarthost.messages if rcpts == [ORDINARY]]

    [raw] = wait_for(notices, WAIT)
    notice = message_from_bytes(raw)
    text = notice.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert notice["To"] == ORDINARY and notice["From"] == "bildirim@kep.test"
    assert ali.encode() in text and ayse.encode() in text
    assert subj.encode() not in raw and body.encode() not in raw


def test_a_failing_webhook_is_retried(setup: Setup) -> None:
    setup.webhook.plan.append("fail")
    message_id, _, _ = send(setup)
    assert wait_for(lambda: len(setup.webhook.for_message(message_id)) == 2, WAIT)
    assert setup.webhook.for_message(message_id) == ["fail", "ok"]


def test_a_hanging_webhook_delays_no_delivery(setup: Setup) -> None:
    hook = setup.webhook
    hook.plan.append("hang")
    first, subj, _ = send(setup)
    assert hook.hanging.wait(WAIT)
    # While the gateway holds the first notice, the next KEP is delivered as ever.
    _, later, _ = send(setup)
    b = imap(setup.srv, setup.srv.account(1))
    assert wait_for(lambda: folder_messages(b, "INBOX", later), WAIT)
    assert folder_messages(b, "INBOX", subj)
    b.logout()
    assert not hook.answered_hung.is_set()
    hook.release.set()
    assert hook.answered_hung.wait(WAIT)
    assert hook.for_message(first) == ["hang"]
