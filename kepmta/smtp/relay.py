"""The relay listener (port 25): SMTP from peer KEP providers only, over mutual TLS (RFC 3207).

Protocol only: kepmta.inbound decides who the client is and what its message becomes; this turns
its answers into SMTP replies. No AUTH: a peer is known by its TLS client certificate.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from kepmta import logs, metrics
from kepmta.inbound import InboundService, PeerClient, Refused
from kepmta.limits import Slots
from kepmta.peers import Peers
from kepmta.smtp.data import SpoolingSMTP
from kepmta.smtp.submission import take_connection
from kepmta.workers import WorkerError

log = logging.getLogger(__name__)


class RelaySession(Session):
    client: PeerClient | None = None


class RelayEnvelope(Envelope):
    recipients: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.recipients = []


def relay_tls(cert: Path, key: Path, peers: Peers) -> ssl.SSLContext:
    """Our server certificate, and the registered peers' CAs for their client certificates."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996
    ctx.load_cert_chain(cert, key)
    # Optional at the TLS layer, so that a client without one hears why at MAIL (530) instead of
    # a failed handshake; nothing is taken from it either way.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    loaded = False
    for peer in peers.peers:
        if peer.tls_ca is not None:
            ctx.load_verify_locations(cafile=str(peer.tls_ca))
            loaded = True
    if not loaded:
        ctx.verify_mode = ssl.CERT_NONE  # no peer to verify: every client is refused at MAIL
    return ctx


class RelaySMTP(SpoolingSMTP):
    def __init__(self, service: InboundService, connections: Slots, **kwargs: Any) -> None:
        super().__init__(RelayHandler(service), **kwargs)
        self.service = service
        self.connections = connections  # by client_key() of the peer's address

    async def _handle_client(self) -> None:
        logs.bind_session(self.session and self.session.peer)
        connection = await take_connection(self, self.connections)
        if connection is None:
            return
        metrics.session_opened("relay")
        try:
            await super()._handle_client()
        finally:
            metrics.session_closed("relay")
            connection.release()

    def _create_session(self) -> RelaySession:
        return RelaySession(self.loop)

    def _create_envelope(self) -> RelayEnvelope:
        return RelayEnvelope()

    def client_certificate(self) -> bytes | None:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if ssl_object is None:
            return None
        der: bytes | None = ssl_object.getpeercert(binary_form=True)
        return der

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        session, envelope = self.session, self.envelope
        assert isinstance(session, RelaySession) and isinstance(envelope, RelayEnvelope)
        if session.client is None or not envelope.recipients:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        path = self.service.new_spool_file()
        outcome = await self.spool_data(path, self.service.max_size)
        if outcome is None:
            return
        try:
            if outcome.bare_line_end:
                path.unlink(missing_ok=True)
                status = "554 5.6.0 a bare CR or LF: every line must end with CRLF (RFC 5322 section 2.3)"
            else:
                status = await self.service.data(session.client, envelope.recipients, path, outcome.too_big)
        except Refused as e:
            status = e.reply
        except WorkerError as e:
            log.error("relayed message not checked: %s", e)
            status = "451 4.3.0 the message could not be checked now; try again later"
        except Exception:
            # Nothing was decided: the peer keeps the message and sends it again (RFC 5321 §4.2.5).
            log.exception("relayed message from %s failed", session.client.peer.name)
            status = "451 4.3.0 the message could not be taken now; try again later"
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)


class RelayHandler:
    def __init__(self, service: InboundService) -> None:
        self.service = service

    async def handle_EHLO(
        self, server: RelaySMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # RFC 1870 §4: the policy's limit for mail from peers
        return [*responses[:-1], f"250-SIZE {self.service.max_size}", responses[-1]]

    async def handle_MAIL(
        self, server: RelaySMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(session, RelaySession)
        try:
            client = session.client or self.service.identify(server.client_certificate())
            sender = self.service.mail_from(client, address)
        except Refused as e:
            log.info("relay client %s refused: %s", session.peer, e)
            return e.reply
        for option in options:
            key, _, value = option.partition("=")
            if key.upper() == "SIZE" and value.isdigit() and int(value) > self.service.max_size:
                # RFC 1870 §6.3: refused before the data is sent
                return f"552 5.3.4 the message is larger than {self.service.max_size} bytes"
        session.client = client
        envelope.mail_from = sender
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: RelaySMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(session, RelaySession) and isinstance(envelope, RelayEnvelope)
        if session.client is None or envelope.mail_from is None:
            return "503 5.5.1 Error: need MAIL command"
        try:
            rcpt = self.service.rcpt_to(address)
        except Refused as e:
            return e.reply
        if rcpt not in envelope.recipients:
            envelope.recipients.append(rcpt)
            envelope.rcpt_tos.append(rcpt)
        return "250 2.1.5 OK"


async def start_relay(
    service: InboundService,
    tls: Callable[[], ssl.SSLContext],
    host: str,
    hostname: str,
    port: int,
    *,
    connections_per_address: int | Callable[[], int],
) -> asyncio.Server:
    """Listen for peers; `tls` gives the context for each new connection, so a reloaded peer
    registry is trusted from the next connection on."""
    loop = asyncio.get_running_loop()
    connections = Slots(connections_per_address)

    def factory() -> RelaySMTP:
        return RelaySMTP(
            service,
            connections,
            hostname=hostname,
            ident="kepmta KEP relay",
            data_size_limit=None,  # SIZE is ours: announced in handle_EHLO
            tls_context=tls(),
            require_starttls=True,  # RFC 3207 §4: peers relay over TLS only
            auth_required=False,
            loop=loop,
        )

    return await loop.create_server(factory, host, port)
