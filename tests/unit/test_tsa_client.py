"""The RFC 3161 HTTP client against a real HTTP endpoint on 127.0.0.1 (our BuiltinTsa.respond
behind a small asyncio HTTP server), and evidence that a failing TSA delays but never drops."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import asn1crypto.tsp
import pytest
from evidence_fixtures import Pki, make_pki, openssl, sample_evidence
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta import pki
from kepmta.db.engine import open_engine
from kepmta.db.schema import jobs as jobs_table
from kepmta.db.schema import messages
from kepmta.events import TIMESTAMP_JOB, EventRecorder, Issuer, MessageFacts, StampWorker
from kepmta.evidence.checkpoint import audit
from kepmta.evidence.errors import TimeStampError, TokenCertificateError, TokenImprintError
from kepmta.evidence.ledger import Kind, Ledger
from kepmta.evidence.model import Reason
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.tsa import BuiltinTsa, check_token
from kepmta.evidence.tsa_client import (
    HttpTsa,
    TokenNonceError,
    TokenPolicyError,
    TsaRefused,
    TsaSettings,
    TsaUnavailable,
    build_request,
    check_reply_token,
    parse_response,
)
from kepmta.queue import jobs

POLICY = "1.3.6.1.4.1.99999.1.1"


class TsaServer:
    """An RFC 3161 HTTP endpoint (RFC 3161 §3.4) whose behaviour a test switches with `mode`."""

    def __init__(self, good: BuiltinTsa, foreign: BuiltinTsa, other_policy: BuiltinTsa) -> None:
        self.good, self.foreign, self.other_policy = good, foreign, other_policy
        self.mode = "ok"
        self.requests = 0
        self.auth: str | None = None
        self._hang = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/tsa"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        self._hang.set()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            headers = {}
            while line := (await reader.readline()).strip():
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers["content-length"]))
            self.requests += 1
            self.auth = headers.get("authorization")
            assert request_line.startswith(b"POST /tsa HTTP/1.1")
            assert headers["content-type"] == "application/timestamp-query"
            status, ctype, reply = 200, "application/timestamp-reply", b""
            if self.mode == "http500":
                status, ctype, reply = 500, "text/plain", b"down"
            elif self.mode == "hang":
                await self._hang.wait()
                return
            elif self.mode == "ok":
                reply = self.good.respond(body)
            elif self.mode == "untrusted":
                reply = self.foreign.respond(body)
            elif self.mode == "policy":
                # A TSA that ignores the requested policy and stamps under its own.
                reply = self.other_policy.respond(_rebuilt(body, policy=None))
            elif self.mode == "imprint":
                # A TSA answering for other data: a granted token over another imprint.
                reply = self.good.respond(_rebuilt(body, imprint=hashlib.sha256(b"other data").digest()))
            elif self.mode == "reject":
                reply = self.good.respond(b"\x30\x03\x02\x01\x07")  # version 7: refused
            head = f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(reply)}\r\n\r\n"
            writer.write(head.encode() + reply)
            await writer.drain()
        finally:
            writer.close()


def _rebuilt(body: bytes, *, imprint: bytes | None = None, policy: str | None = POLICY) -> bytes:
    asked = asn1crypto.tsp.TimeStampReq.load(body)
    fields: dict[str, object] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": {"algorithm": "sha256"},
            "hashed_message": imprint or asked["message_imprint"]["hashed_message"].native,
        },
        "nonce": asked["nonce"].native,
        "cert_req": True,
    }
    if policy is not None:
        fields["req_policy"] = policy
    return bytes(asn1crypto.tsp.TimeStampReq(fields).dump())


@pytest.fixture
def p(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
async def tsa_server(p: Pki) -> AsyncIterator[TsaServer]:
    foreign_ca = pki.issue("Foreign TSA CA", pki.Role.CA)
    server = TsaServer(
        BuiltinTsa(p.tsa, [p.tsa_ca.cert], policy=POLICY),
        BuiltinTsa(pki.issue("Foreign TSA", pki.Role.TSA, foreign_ca), policy=POLICY),
        BuiltinTsa(p.tsa, [p.tsa_ca.cert], policy="1.2.3.4"),
    )
    await server.start()
    yield server
    await server.close()


def _client(p: Pki, server: TsaServer, **changes: object) -> HttpTsa:
    fields: dict[str, object] = {
        "url": server.url,
        "trust": (p.tsa_ca.cert,),
        "policy": POLICY,
        "timeout": 2.0,
        "retries": 0,
    }
    fields.update(changes)
    return HttpTsa(TsaSettings(**fields))  # type: ignore[arg-type]


IMPRINT = hashlib.sha256(b"signature value").digest()


async def test_a_good_tsa_gives_a_checked_token(p: Pki, tsa_server: TsaServer) -> None:
    token = await _client(p, tsa_server, username="kep", password="s3cret").timestamp(IMPRINT)
    info = check_token(token, IMPRINT, [p.tsa_ca.cert])
    assert info.policy == POLICY
    assert tsa_server.auth == "Basic a2VwOnMzY3JldA=="  # RFC 7617: base64("kep:s3cret")
    stamped = await _client(p, tsa_server).token(IMPRINT)
    assert (stamped.algorithm, stamped.imprint) == ("sha256", IMPRINT)
    assert check_token(stamped.der, IMPRINT, [p.tsa_ca.cert]).nonce is not None


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("http500", TsaUnavailable),
        ("hang", TsaUnavailable),
        ("imprint", TokenImprintError),
        ("policy", TokenPolicyError),
        ("untrusted", TokenCertificateError),
        ("reject", TsaRefused),
    ],
)
async def test_each_kind_of_bad_tsa_is_refused_with_its_reason(
    p: Pki, tsa_server: TsaServer, mode: str, error: type[TimeStampError]
) -> None:
    tsa_server.mode = mode
    client = _client(p, tsa_server, timeout=0.5 if mode == "hang" else 2.0)
    with pytest.raises(error):
        await client.timestamp(IMPRINT)


async def test_unreachable_tsa_is_retried_then_reported(p: Pki, tsa_server: TsaServer) -> None:
    tsa_server.mode = "http500"
    with pytest.raises(TsaUnavailable, match="HTTP 500"):
        await _client(p, tsa_server, retries=1).timestamp(IMPRINT)
    assert tsa_server.requests == 2


def test_a_reply_token_must_echo_the_nonce_and_keep_to_the_policy(p: Pki) -> None:
    tsa = BuiltinTsa(p.tsa, [p.tsa_ca.cert], policy=POLICY)
    trust = [p.tsa_ca.cert]
    token = parse_response(tsa.respond(build_request(IMPRINT, 7, POLICY)))
    assert check_reply_token(token, IMPRINT, 7, POLICY, trust) == token
    with pytest.raises(TokenNonceError):
        check_reply_token(token, IMPRINT, 8, POLICY, trust)
    with pytest.raises(TokenPolicyError):
        check_reply_token(token, IMPRINT, 7, "1.2.3.4", trust)
    with pytest.raises(TokenImprintError):
        check_reply_token(token, hashlib.sha256(b"other").digest(), 7, POLICY, trust)
    without_nonce = asn1crypto.tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": IMPRINT},
            "cert_req": True,
        }
    )
    token = parse_response(tsa.respond(without_nonce.dump()))
    with pytest.raises(TokenNonceError):
        check_reply_token(token, IMPRINT, 7, POLICY, trust)


def test_credentials_in_the_url_are_refused(p: Pki) -> None:
    with pytest.raises(ValueError, match="credentials"):
        HttpTsa(TsaSettings(url="https://u:pw@tsa.example/", trust=(p.tsa_ca.cert,)))


def test_garbage_is_not_a_response() -> None:
    with pytest.raises(TsaUnavailable):
        parse_response(b"<html>not a TSA</html>")


MESSAGE = "20240502101530.abc123@hs01.kep.tr"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_engine(database_url)
    async with eng.begin() as conn:
        await conn.execute(
            insert(messages).values(
                id=MESSAGE, sender="a@hs01.kep.tr", subject="s", submitted_at=dt.datetime.now(dt.UTC)
            )
        )
    yield eng
    await eng.dispose()


def _facts() -> MessageFacts:
    ev = sample_evidence()
    return MessageFacts(
        message_id=MESSAGE,
        sender=ev.sender.address,
        recipients=tuple(r.address for r in ev.recipients),
        subject=ev.subject,
        ua_message_id=ev.ua_message_id,
        submitted_at=dt.datetime.now(dt.UTC),
        authenticated_at=None,
        digest=ev.digest_sha256,
    )


async def _pending(engine: AsyncEngine, kind: str) -> list[jobs.Job]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(jobs_table).where(jobs_table.c.kind == kind, jobs_table.c.state == "pending")
        )
        return [
            jobs.Job(
                r.id, r.kind, r.message_id, r.payload, r.attempts, r.claimed_by, r.claimed_by is not None
            )
            for r in rows
        ]


async def _make_due(engine: AsyncEngine) -> None:
    """What the passing of the back-off time does: the waiting job is due again."""
    async with engine.begin() as conn:
        await conn.execute(
            update(jobs_table).values(next_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )


@pytest.mark.parametrize("failure", ["http500", "hang", "imprint", "policy", "untrusted"])
async def test_a_tsa_failure_delays_evidence_and_never_drops_it(
    p: Pki, tsa_server: TsaServer, engine: AsyncEngine, tmp_path: Path, failure: str
) -> None:
    ledger = Ledger(engine)
    client = _client(p, tsa_server, timeout=0.5)
    signer = EvidenceSigner(p.evidence, [], client)
    recorder = EventRecorder(Issuer("Test KEP", "hs01.kep.tr", ("urn:x",), "standart"), signer, ledger)
    woken: list[bool] = []
    stamper = StampWorker(recorder, lambda: woken.append(True), jobs.Node("test", dt.timedelta(minutes=1)))

    tsa_server.mode = failure
    seq = await recorder.record(_facts(), Reason.RA01, "accepted")
    # The evidence is on disk, signed but not yet time-stamped, and no receipt is scheduled.
    basic = await ledger.get(seq)
    assert basic.kind is Kind.EVIDENCE and not basic.stamped
    assert await _pending(engine, jobs.RECEIPT) == []
    assert len(await _pending(engine, TIMESTAMP_JOB)) == 1

    # Still failing: the job stays, with its attempt counted.
    await _make_due(engine)
    assert await stamper.run_once() == 0
    [job] = await _pending(engine, TIMESTAMP_JOB)
    assert job.attempts == 1

    # The TSA is back: the time-stamped version is appended and the receipt scheduled.
    tsa_server.mode = "ok"
    await _make_due(engine)
    assert await stamper.run_once() == 1
    assert woken
    assert await _pending(engine, TIMESTAMP_JOB) == []
    [receipt] = await _pending(engine, jobs.RECEIPT)
    stamped = await ledger.get(int(receipt.payload["seq"]))
    assert stamped.kind is Kind.TIMESTAMP and stamped.stamped
    assert stamped.evidence_id == basic.evidence_id and stamped.xml == basic.xml
    assert [r.seq for r in await ledger.for_message(MESSAGE)] == [stamped.seq]

    f = tmp_path / "stamped.p7m"
    f.write_bytes(stamped.der)
    ok = openssl(
        "cms", "-verify", "-inform", "DER", "-in", f, "-CAfile", p.pem("provider_ca"), "-out", "/dev/null"
    )
    assert ok.returncode == 0, ok.stderr
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", f).stdout
    assert "timeStampToken" in printed
    result = await audit(ledger, [p.provider_ca.cert], [p.tsa_ca.cert])
    assert result.ok and result.notes == [], result.problems


async def test_an_audit_notes_evidence_still_waiting(
    p: Pki, tsa_server: TsaServer, engine: AsyncEngine
) -> None:
    ledger = Ledger(engine)
    tsa_server.mode = "http500"
    signer = EvidenceSigner(p.evidence, [], _client(p, tsa_server))
    recorder = EventRecorder(Issuer("Test KEP", "hs01.kep.tr", ("urn:x",), "standart"), signer, ledger)
    await recorder.record(_facts(), Reason.RA01, "accepted")
    result = await audit(ledger, [p.provider_ca.cert], [p.tsa_ca.cert])
    assert result.ok
    assert len(result.notes) == 1 and "waits for its time-stamp" in result.notes[0]
