"""The integration API end to end, over HTTPS with httpx, against a real `kepmta serve --dev`:
tokens (missing, wrong, expired, revoked, an operator's acting for an entity), submission through
the same policy and evidence as SMTP (unsigned, oversized, refused recipients), status, evidence
and bundle downloads that verify offline, the quota, and the per-token rate limit."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import sqlite3
import ssl
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_fixtures import api_client, api_token, new_token, server_with_api_policy
from kepclient import (
    DevServer,
    imap,
    kepmta,
    openssl_verify,
    plain_message,
    receipts,
    signed_by,
    signed_message,
    smtp,
    submit,
    wait_for,
)

# Each test makes its own tokens, so each has its own bucket of BURST requests; REFILL per minute
# is small enough that no test's requests get any back while it runs.
BURST = 40
REFILL = 1


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    folder = tmp_path_factory.mktemp("api") / "data"
    server = server_with_api_policy(folder, burst=BURST, requests_per_minute=REFILL)
    yield server
    server.stop()


def subject() -> str:
    return "api-" + uuid.uuid4().hex[:10]


def person(srv: DevServer, i: int) -> str:
    return srv.account(i)["address"]


def entity(srv: DevServer) -> str:
    assert srv.info
    address: str = srv.info["entities"][0]["address"]
    return address


def post_message(client: httpx.Client, message: bytes) -> httpx.Response:
    return client.post("/v1/messages", content=message, headers={"Content-Type": "message/rfc822"})


def status_of(client: httpx.Client, message_id: str, events: int) -> dict[str, Any]:
    """The message's status once it holds `events` evidence in all."""

    def enough() -> dict[str, Any] | None:
        found: dict[str, Any] = client.get(f"/v1/messages/{message_id}").json()
        count = len(found["events"]) + sum(len(r["events"]) for r in found["recipients"])
        return found if count >= events else None

    found = wait_for(enough)
    assert found, f"{message_id} never had {events} evidence"
    return found


def kinds(status: dict[str, Any]) -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]]]:
    """(event, reason) of the whole message's evidence, and of each recipient's."""
    whole = [(e["event"], e["reason"]) for e in status["events"]]
    each = [[(e["event"], e["reason"]) for e in r["events"]] for r in status["recipients"]]
    return whole, each


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert body["message"] and body["message_tr"] and body["message"] != body["message_tr"]
    return body


def test_requests_without_a_good_token_are_refused_each_with_its_code(srv: DevServer) -> None:
    with api_client(srv) as anonymous:
        r = anonymous.get("/v1/quota")
        assert_error(r, 401, "token_missing")
        assert r.headers["www-authenticate"] == "Bearer"  # RFC 6750 §3
    with api_client(srv, "kep_" + "A" * 43) as wrong:
        assert_error(wrong.get("/v1/quota"), 401, "token_invalid")

    expiring_id, expiring = new_token(srv, person(srv, 0), "--expires", "30")
    with api_client(srv, expiring) as client:
        assert client.get("/v1/quota").status_code == 200
        # Thirty days pass: the expiry moves into the past, as the database holds it.
        with sqlite3.connect(srv.data / "kepmta.db") as db:
            db.execute(
                "UPDATE api_tokens SET expires_at = '2001-01-01 00:00:00' WHERE id = ?", (expiring_id,)
            )
        assert_error(client.get("/v1/quota"), 401, "token_expired")

    revoked_id, revoked = new_token(srv, person(srv, 1))
    with api_client(srv, revoked) as client:
        assert client.get("/v1/quota").json()["address"] == person(srv, 1)
        done = kepmta("tokens", "revoke", revoked_id, "--data", str(srv.data))
        assert done.returncode == 0 and "revoked" in done.stdout
        assert_error(client.get("/v1/quota"), 401, "token_revoked")
    listed = {
        t["id"]: t["state"]
        for t in json.loads(kepmta("tokens", "list", "--json", "--data", str(srv.data)).stdout)
    }
    assert (listed[expiring_id], listed[revoked_id]) == ("expired", "revoked")


def test_only_the_hash_of_a_token_is_stored(srv: DevServer) -> None:
    token = api_token(srv, person(srv, 0))
    assert re.fullmatch(r"kep_[A-Za-z0-9_-]{43}", token)
    with sqlite3.connect(srv.data / "kepmta.db") as db:
        stored = [bytes(h) for (h,) in db.execute("SELECT token_hash FROM api_tokens")]
    assert all(token.encode() not in h and len(h) == 32 for h in stored)
    assert hashlib.sha256(token.encode()).digest() in stored


def test_tokens_are_made_only_for_persons_and_for_entities_they_operate(srv: DevServer) -> None:
    data = str(srv.data)
    r = kepmta("tokens", "create", person(srv, 0), "--as", entity(srv), "--data", data)
    assert r.returncode == 1 and "is not an authorised operator of" in r.stderr
    r = kepmta("tokens", "create", entity(srv), "--data", data)
    assert r.returncode == 1 and "legal entity" in r.stderr and "--as" in r.stderr
    r = kepmta("tokens", "create", "nobody@kep.test", "--data", data)
    assert r.returncode == 1 and "no account" in r.stderr


def test_a_signed_message_is_accepted_with_the_evidence_smtp_gives(srv: DevServer, tmp_path: Path) -> None:
    to = [person(srv, 1), person(srv, 2)]
    over_smtp, over_api = subject(), subject()
    reply = submit(srv, 0, to, signed_by(srv, 0, to, over_smtp))
    found = re.search(r"accepted as <([^>]+)>", reply)
    assert found, reply
    with api_client(srv, api_token(srv, person(srv, 0))) as client:
        r = post_message(client, signed_by(srv, 0, to, over_api))
        assert r.status_code == 201, r.text
        accepted = r.json()
        assert accepted["sender"] == person(srv, 0) and accepted["operator"] is None
        assert accepted["recipients"] == to
        # Acceptance, then a consignment for each recipient.
        by_smtp = status_of(client, found.group(1), 3)
        by_api = status_of(client, accepted["message_id"], 3)
        assert kinds(by_api) == kinds(by_smtp)
        assert kinds(by_api) == (
            [("SubmissionAcceptance", "RA01")],
            [[("ContentConsignment", "RD01")], [("ContentConsignment", "RD01")]],
        )
        assert by_api["subject"] == over_api and re.fullmatch(r"[0-9a-f]{64}", by_api["sha256"])
        assert [r["address"] for r in by_api["recipients"]] == to

        # Each evidence downloads as its .p7m, which openssl verifies with the provider CA alone.
        listing = client.get(f"/v1/messages/{accepted['message_id']}/evidence").json()
        assert [e["event"] for e in listing["evidence"]] == [
            "SubmissionAcceptance",
            "ContentConsignment",
            "ContentConsignment",
        ]
        assert srv.info
        for item in listing["evidence"]:
            got = client.get(item["href"])
            assert got.status_code == 200 and got.headers["content-type"] == "application/pkcs7-mime"
            assert f'filename="{item["event"]}.p7m"' in got.headers["content-disposition"]
            ok, content, _ = openssl_verify(got.content, srv.info["provider_ca"], tmp_path)
            assert ok and item["evidence_id"] in content
        # The bundle is `kepmta evidence export`'s, and verifies offline.
        bundle = client.get(listing["bundle"])
        assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/zip"
        path = tmp_path / "kanit.zip"
        path.write_bytes(bundle.content)
        assert "manifest.json" in zipfile.ZipFile(path).namelist()
        checked = kepmta("evidence", "verify", str(path), "--ca", srv.info["provider_ca"])
        assert checked.returncode == 0 and "Result: VALID" in checked.stdout, checked.stdout
    # The sender gets the same receipts as for an SMTP submission.
    with imap(srv, srv.account(0)) as m:
        assert wait_for(lambda: receipts(m, over_api, "SubmissionAcceptance"))
        assert wait_for(lambda: receipts(m, over_smtp, "SubmissionAcceptance"))


def test_an_operator_token_sends_for_its_entity_and_sees_only_its_messages(srv: DevServer) -> None:
    operator = srv.account(2)  # the demo entity's operator
    to = [person(srv, 0)]
    message = signed_message(entity(srv), to, subject(), "Kurum adına.", operator["cert"], operator["key"])
    with api_client(srv, api_token(srv, operator["address"], "--as", entity(srv))) as client:
        r = post_message(client, message)
        assert r.status_code == 201, r.text
        accepted = r.json()
        assert accepted["sender"] == entity(srv) and accepted["operator"] == operator["address"]
        status = status_of(client, accepted["message_id"], 2)
        assert status["sender"] == entity(srv) and status["operator"] == operator["address"]
        quota = client.get("/v1/quota").json()
        assert quota["address"] == entity(srv) and quota["limit"] > 0
    # The operator's own token, and anyone else's, do not see the entity's messages.
    for address in (operator["address"], person(srv, 0)):
        with api_client(srv, api_token(srv, address)) as other:
            assert_error(other.get(f"/v1/messages/{accepted['message_id']}"), 404, "message_not_found")
            assert_error(other.get(f"/v1/messages/{accepted['message_id']}/bundle"), 404, "message_not_found")


def test_an_operator_removed_from_the_entity_loses_the_use_of_its_tokens(srv: DevServer) -> None:
    ent, operator = entity(srv), person(srv, 0)
    data = str(srv.data)
    assert kepmta("accounts", "add-operator", ent, operator, "--data", data).returncode == 0
    with api_client(srv, api_token(srv, operator, "--as", ent)) as client:
        assert client.get("/v1/quota").json()["address"] == ent
        assert kepmta("accounts", "remove-operator", ent, operator, "--data", data).returncode == 0
        assert_error(client.get("/v1/quota"), 403, "not_an_operator")


def test_an_unsigned_message_is_refused_as_over_smtp_with_evidence(srv: DevServer) -> None:
    to = [person(srv, 1)]
    over_api, over_smtp = subject(), subject()
    with api_client(srv, api_token(srv, person(srv, 0))) as client:
        body = assert_error(
            post_message(client, plain_message(person(srv, 0), to, over_api, "imzasız")),
            422,
            "signature_refused",
        )
    with smtp(srv, srv.account(0)) as s:
        s.mail(person(srv, 0))
        s.rcpt(to[0])
        code, text = s.data(plain_message(person(srv, 0), to, over_smtp, "imzasız"))
    # The same refusal: codes, ETSI reason and wording.
    assert (body["smtp_code"], body["enhanced_status"], body["etsi_reason"]) == (554, "5.7.1", "RA05")
    assert code == 554 and text.decode().startswith("5.7.1 ") and "[RA05]" in text.decode()
    assert "not S/MIME signed" in body["message"] and "imzalanmamış" in body["message_tr"]
    # ... and the same SubmissionRejection receipt, and nothing delivered.
    with imap(srv, srv.account(0)) as m:
        assert wait_for(lambda: receipts(m, over_api, "SubmissionRejection"))
        assert wait_for(lambda: receipts(m, over_smtp, "SubmissionRejection"))
    with imap(srv, srv.account(1)) as m:
        m.select("INBOX", readonly=True)
        _, found = m.search(None, "SUBJECT", f'"{over_api}"')
        assert found == [b""]


def test_refused_recipients_refuse_the_whole_message_naming_each(srv: DevServer) -> None:
    to = [person(srv, 1), "nobody.here@kep.test", "someone@example.com"]
    with api_client(srv, api_token(srv, person(srv, 0))) as client:
        body = assert_error(post_message(client, signed_by(srv, 0, to, subject())), 422, "recipient_unknown")
    assert [(d["address"], d["code"], d["enhanced_status"]) for d in body["details"]] == [
        ("nobody.here@kep.test", "recipient_unknown", "5.1.1"),
        ("someone@example.com", "recipient_not_kep", "5.7.1"),
    ]


def test_a_message_naming_no_recipient_is_refused(srv: DevServer) -> None:
    with api_client(srv, api_token(srv, person(srv, 0))) as client:
        message = signed_by(srv, 0, [person(srv, 1)], subject()).replace(b"\r\nTo: ", b"\r\nX-To: ", 1)
        assert_error(post_message(client, message), 422, "no_recipients")


def test_a_declared_size_over_the_limit_is_refused_before_the_body_is_read(srv: DevServer) -> None:
    assert srv.info
    token = api_token(srv, person(srv, 0))
    tls = ssl.create_default_context(cafile=srv.info["provider_ca"])
    conn = http.client.HTTPSConnection("localhost", srv.ports["api"], context=tls, timeout=60)
    # 100 MB is the policy's local limit; nothing of the body is ever sent.
    conn.putrequest("POST", "/v1/messages")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Type", "message/rfc822")
    conn.putheader("Content-Length", str(100 * 1024 * 1024 + 1))
    conn.endheaders()
    r = conn.getresponse()
    body = json.loads(r.read())
    conn.close()
    assert r.status == 413 and body["code"] == "message_too_big", body
    assert (body["smtp_code"], body["enhanced_status"], body["etsi_reason"]) == (552, "5.3.4", "RA05")


def test_a_streamed_message_over_the_limit_for_its_recipients_is_refused(srv: DevServer) -> None:
    # A recipient at a peer provider: the policy's 25 MB, checked on what arrived, as SMTP does.
    head = (
        f"From: {person(srv, 0)}\r\nTo: someone@peer.test\r\nSubject: {subject()}\r\n"
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    line = b"x" * 1022 + b"\r\n"

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(26):
            yield line * 1024  # 1 MB

    with api_client(srv, api_token(srv, person(srv, 0))) as client:
        # A generator body goes out chunked: no Content-Length to refuse it early.
        r = client.post("/v1/messages", content=chunks())
        body = assert_error(r, 413, "message_too_big")
    assert "26214400" in body["message"] and (body["smtp_code"], body["enhanced_status"]) == (552, "5.3.4")


def test_errors_are_json_with_a_stable_code(srv: DevServer) -> None:
    with api_client(srv, api_token(srv, person(srv, 0))) as client:
        assert_error(client.get("/v1/nothing-here"), 404, "not_found")
        assert_error(client.delete("/v1/quota"), 405, "method_not_allowed")
        assert_error(client.get("/v1/messages/nothing@kep.test"), 404, "message_not_found")
        assert_error(client.post("/v1/directory/check", json={"addresses": "x"}), 422, "invalid_request")
        r = client.post(
            "/v1/directory/check",
            content=b"{" * (2 * 1024 * 1024),
            headers={"Content-Type": "application/json"},
        )
        assert_error(r, 413, "body_too_large")


def test_each_token_is_rate_limited(srv: DevServer) -> None:
    with api_client(srv, api_token(srv, person(srv, 0))) as client:
        for _ in range(BURST):
            assert client.get("/v1/quota").status_code == 200
        r = client.get("/v1/quota")
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
    # Another token of the same account has its own allowance.
    with api_client(srv, api_token(srv, person(srv, 0))) as other:
        assert other.get("/v1/quota").status_code == 200


def test_the_openapi_document_and_the_docs_are_served(srv: DevServer) -> None:
    with api_client(srv) as client:
        spec = client.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.")
        assert {"/v1/messages", "/v1/messages/{message_id}", "/v1/quota", "/v1/directory/check"} <= set(
            spec["paths"]
        )
        assert "HTTPBearer" in spec["components"]["securitySchemes"]
        docs = client.get("/docs")
        assert docs.status_code == 200 and "openapi.json" in docs.text
    info = kepmta("dev-info", "--data", str(srv.data), "--json")
    assert json.loads(info.stdout)["ports"]["api"] == srv.ports["api"]
