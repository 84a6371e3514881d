"""Message submission listeners (RFC 6409): STARTTLS and implicit TLS (RFC 8314), AUTH over TLS only.

Protocol only: every decision is the SubmissionService's; this turns its answers into SMTP replies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import AuthResult, Envelope, Session, syntax

from kepmta import logs, metrics
from kepmta.accounts import Account, LoginRefusal
from kepmta.limits import Slot, Slots
from kepmta.logtext import excerpt
from kepmta.outage import outage
from kepmta.policy.malware import ScanUnavailable
from kepmta.policy.refusal import PolicyError
from kepmta.ratelimit import client_key
from kepmta.smtp.data import SpoolingSMTP
from kepmta.submission import SessionRefusals, SubmissionService, TooManyRefusals, Transaction
from kepmta.workers import WorkerError

log = logging.getLogger(__name__)


class KepSession(Session):
    authenticated_at: dt.datetime | None = None
    # The session's place among its account's authenticated sessions, held until it ends.
    account_slot: Slot | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.refusals = SessionRefusals()

    # aiosmtpd sets this deprecated attribute itself on every AUTH and logs a warning each time;
    # a plain attribute keeps its log for things that matter.
    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class KepEnvelope(Envelope):
    transaction: Transaction | None = None


class SubmissionSMTP(SpoolingSMTP):
    def __init__(
        self, handler: SubmissionHandler, connections: Slots, *, implicit_tls: bool, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.kep_handler = handler
        self.connections = connections  # shared by both submission ports, by client_key()
        self.closing = False  # the reply being sent is the last: 421, too many refusals
        self.implicit_tls = implicit_tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.implicit_tls:
            # RFC 8314 §3: on the implicit-TLS port the whole session is already encrypted.
            self.under_tls(transport)
        super().connection_made(transport)

    def _create_session(self) -> KepSession:
        return KepSession(self.loop)

    def _create_envelope(self) -> KepEnvelope:
        return KepEnvelope()

    async def _end_transaction(self) -> None:
        """Record what the transaction being left was refused (SubmissionService.end)."""
        envelope = self.envelope
        if isinstance(envelope, KepEnvelope) and envelope.transaction is not None:
            await self.kep_handler.service.end(envelope.transaction)

    async def _handle_client(self) -> None:
        logs.bind_session(self.session and self.session.peer)
        connection = await take_connection(self, self.connections)
        if connection is None:
            return
        metrics.session_opened("submission")
        try:
            await super()._handle_client()
        finally:
            metrics.session_closed("submission")
            connection.release()
            session = self.session
            if isinstance(session, KepSession) and session.account_slot is not None:
                session.account_slot.release()
            # A client that leaves without RSET or QUIT, or times out, still has its refusals
            # recorded. Runs after the connection is gone: nobody is left to tell of a failure.
            try:
                await self._end_transaction()
            except Exception:
                log.exception("%r: refused recipients not recorded", self.session and self.session.peer)

    def _close_if_closing(self) -> None:
        if self.closing and self.transport is not None:
            # As aiosmtpd's QUIT: the reply is out; the connection ends here.
            self.transport.close()

    # The overrides keep aiosmtpd's syntax lines, which HELP shows.
    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(arg)
        self._close_if_closing()

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(arg)
        self._close_if_closing()

    # The commands that end a transaction (RFC 5321 §4.1.1.1, §4.1.1.5, §4.1.1.10) record its
    # refusals first; aiosmtpd replaces the envelope inside them.
    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        await self._end_transaction()
        await super().smtp_RSET(arg)

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        await self._end_transaction()
        await super().smtp_HELO(hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        await self._end_transaction()
        await super().smtp_EHLO(hostname)

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str) -> None:
        await self._end_transaction()
        await super().smtp_QUIT(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA streamed to a spool file (RFC 5321 §4.1.1.4) instead of aiosmtpd's in-memory lines."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert isinstance(self.envelope, KepEnvelope)
        tx = self.envelope.transaction
        if tx is None or not tx.recipients:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        service = self.kep_handler.service
        path = service.new_spool_file()
        outcome = await self.spool_data(path, service.size_limit(tx))
        if outcome is None:
            return
        try:
            message_id = await service.data(tx, path, outcome)
            status = f"250 2.0.0 Ok: accepted as <{message_id}>"
        except PolicyError as e:
            status = e.refusal.smtp_reply()
        except ScanUnavailable as e:
            log.error("malware scan unavailable: %s", e)
            # RFC 3463 X.3.0: a temporary system problem; the client keeps the message and retries
            status = "451 4.3.0 the message could not be scanned for malware now; try again later"
        except WorkerError as e:
            log.error("message not checked: %s", e)
            # As above: nothing was decided, so the client must keep the message, not drop it.
            found = outage(e)
            later = "451 4.3.0 the message could not be checked now; try again later"
            status = found.smtp if found else later
        except Exception as e:
            # A full disk, a locked database: nothing was stored. Answered here, not by
            # handle_exception, so the transaction ends as after any reply to DATA (RFC 5321
            # §4.1.1.4) and the client's next MAIL starts a new one.
            found = outage(e)
            if found is None:
                log.exception("message from %s not accepted", tx.sender.account.address)
            else:
                log.error("message from %s not accepted: %s: %s", tx.sender.account.address, found.what, e)
            status = found.smtp if found else "451 4.3.0 Internal error; try again later"
        await self._end_transaction()
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)


class SubmissionHandler:
    """aiosmtpd hooks; `auth_*` methods replace aiosmtpd's built-in mechanisms so that password
    checks run off the event loop."""

    def __init__(self, service: SubmissionService, sessions: Slots) -> None:
        self.service = service
        self.sessions = sessions  # authenticated sessions, by account address

    async def handle_EHLO(
        self,
        server: SubmissionSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # RFC 1870 §4: the limit the policy enforces, announced to the client
        return [*responses[:-1], f"250-SIZE {self.service.advertised_size}", responses[-1]]

    async def _login(
        self, server: SubmissionSMTP, username: str, password: str, authzid: str = ""
    ) -> AuthResult | None:
        session = server.session
        assert isinstance(session, KepSession)
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer or "")
        login = await self.service.login(username, password, peer, authzid=authzid)
        if login.account is not None:
            # An operator who logged in for a legal entity is the session's user, as after a plain
            # login: MAIL FROM may name the entity (kepmta.policy.sender), and the operator signs.
            person = login.operator or login.account
            slot = self.sessions.take(person.address)
            if slot is None:
                log.info("%r: %s has too many sessions", session.peer, person.address)
                # RFC 4954 §6: 454 4.7.0, a temporary authentication failure; the session stays
                # open and unauthenticated, and the client may try again when another has ended.
                limit = self.sessions.limit
                await server.push(f"454 4.7.0 This account has {limit} sessions already; try again later")
                return None
            session.account_slot = slot
            session.authenticated_at = dt.datetime.now(dt.UTC)
            if login.operator is not None:
                log.info("%r: %s logged in for %s", session.peer, person.address, login.account.address)
            return AuthResult(success=True, auth_data=person)
        log.info("%r failed authentication as %s: %s", session.peer, excerpt(username), login.refusal)
        if login.refusal is LoginRefusal.THROTTLED:
            # RFC 4954 §6: 454 4.7.0 temporary authentication failure
            await server.push("454 4.7.0 Too many failed logins; try again later")
            return None
        if login.refusal is LoginRefusal.NOT_ACTIVE:
            await server.push("535 5.7.8 This KEP account is not active (pending, blocked or closed)")
            return None
        # aiosmtpd: handled=False makes it answer 535 itself; True would leave the client waiting
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, server: SubmissionSMTP, args: list[str]) -> AuthResult | None:
        # RFC 4616 §2: [authzid] NUL authcid NUL passwd
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return None
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return None
        try:
            authzid, user, password = blob.decode().split("\x00")
        except (UnicodeDecodeError, ValueError):
            await server.push("501 5.5.2 Malformed AUTH PLAIN response")
            return None
        # An authzid naming a legal entity the user operates for: AccountStore.login decides, and
        # refuses anyone else exactly as a wrong password (535 5.7.8, RFC 4954 §6).
        return await self._login(server, user, password, authzid)

    async def auth_LOGIN(self, server: SubmissionSMTP, args: list[str]) -> AuthResult | None:
        if len(args) == 2:
            try:
                user_blob: bytes | object = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return None
        else:
            user_blob = await server.challenge_auth("Username:")
        if not isinstance(user_blob, bytes):
            return None
        password_blob = await server.challenge_auth("Password:")
        if not isinstance(password_blob, bytes):
            return None
        try:
            return await self._login(server, user_blob.decode(), password_blob.decode())
        except UnicodeDecodeError:
            await server.push("501 5.5.2 Credentials must be UTF-8")
            return None

    async def handle_MAIL(
        self, server: SubmissionSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(session, KepSession) and isinstance(envelope, KepEnvelope)
        account = session.auth_data
        if not isinstance(account, Account) or session.authenticated_at is None:
            return "530 5.7.0 Authentication required"
        declared: int | None = None
        for option in options:
            key, _, value = option.partition("=")
            if key == "SIZE":
                if not value.isdigit():
                    return "501 5.5.4 SIZE needs a number of bytes"
                declared = int(value)
        try:
            tx = await self.service.mail_from(
                account, session.authenticated_at, address, declared, session.refusals
            )
        except PolicyError as e:
            server.closing = isinstance(e, TooManyRefusals)
            return e.refusal.smtp_reply()
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.transaction = tx
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SubmissionSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        assert isinstance(envelope, KepEnvelope)
        tx = envelope.transaction
        if tx is None:
            return "503 5.5.1 Error: need MAIL command"
        try:
            await self.service.rcpt_to(tx, address)
        except PolicyError as e:
            server.closing = isinstance(e, TooManyRefusals)
            return e.refusal.smtp_reply()
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"


async def start_submission(
    service: SubmissionService,
    tls: ssl.SSLContext,
    host: str,
    hostname: str,
    starttls_port: int,
    tls_port: int,
    *,
    connections_per_address: int | Callable[[], int],
    sessions_per_account: int | Callable[[], int],
) -> list[asyncio.Server]:
    """Listen on the STARTTLS and implicit-TLS submission ports; connections from one client
    address and authenticated sessions of one account are counted across both."""
    loop = asyncio.get_running_loop()
    handler = SubmissionHandler(service, Slots(sessions_per_account))
    connections = Slots(connections_per_address)

    def factory(implicit: bool) -> SubmissionSMTP:
        return SubmissionSMTP(
            handler,
            connections,
            implicit_tls=implicit,
            hostname=hostname,
            ident="kepmta KEP submission",
            data_size_limit=None,  # SIZE is ours: announced in handle_EHLO, checked by the policy
            tls_context=None if implicit else tls,
            require_starttls=not implicit,
            auth_required=True,
            auth_require_tls=True,  # RFC 8314 §3, RFC 4954 §4: no password in the clear
            loop=loop,
        )

    plain = await loop.create_server(lambda: factory(False), host, starttls_port)
    implicit = await loop.create_server(lambda: factory(True), host, tls_port, ssl=tls)
    return [plain, implicit]


def bound_port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def take_connection(smtp: SpoolingSMTP, connections: Slots) -> Slot | None:
    """A place for the new connection among those of its client address (IPv6 by its /64), or
    None after refusing it: 421 4.7.0 before the greeting, and closed (RFC 5321 §3.8: a server
    may refuse a session with 421 instead of 220; RFC 3463 X.7.0: a policy status)."""
    peer = smtp.session.peer if smtp.session is not None else None
    address = client_key(str(peer[0])) if isinstance(peer, tuple) and peer else ""
    slot = connections.take(address)
    if slot is None:
        log.info("connection from %s refused: too many connections from its address", address)
        with contextlib.suppress(ConnectionError):
            await smtp.push("421 4.7.0 Too many connections from your address")
        if smtp.transport is not None:
            smtp.transport.close()
    return slot
