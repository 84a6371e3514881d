"""The embedded IMAP4rev1 server (RFC 3501): listeners and the interface the application provides."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Protocol

from kepmta import logs, metrics
from kepmta.imap.cache import SummaryCache
from kepmta.imap.folders import FolderLimits
from kepmta.imap.mailbox import FolderStore, StoreRegistry
from kepmta.imap.notifications import Hub
from kepmta.imap.notify import Inotify
from kepmta.imap.session import Session
from kepmta.limits import ImapLimits, QuotaReservations, Slots
from kepmta.live import Live
from kepmta.maildir import MailboxNameError, Maildir
from kepmta.ratelimit import client_key

log = logging.getLogger("kepmta.imap")

# RFC 6154 §2: the folders clients look for by their attribute; the application adds its own
# (the evidence folder) through `special_folders`.
DEFAULT_SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}


class ImapBackend(Protocol):
    async def authenticate(self, username: str, password: str, peer_ip: str, authzid: str = "") -> str | None:
        """Canonical address of the account the session acts as on success, None on failure: the
        login's own, or with `authzid` (SASL, RFC 4616 §2) a legal entity the login operates for."""

    def maildir(self, user: str) -> Maildir:
        """The account's store (root may not exist yet: create INBOX on first login)."""

    async def on_seen(self, user: str, mailbox: str, path: Path, operator: str | None = None) -> None:
        """Called after a message's \\Seen flag went from unset to set through this server (non-PEEK
        FETCH of BODY[...]/BINARY[...]/RFC822/RFC822.TEXT, STORE/UID STORE +FLAGS or FLAGS with \\Seen,
        also under CONDSTORE's UNCHANGEDSINCE), with the
        message's current file path. Called again if \\Seen is removed and set again: the backend
        de-duplicates. Must not be called for BODY.PEEK, RFC822.HEADER, EXAMINE'd mailboxes, or
        APPEND with \\Seen. `operator`: who logged in for `user`, a legal entity, and read it."""

    async def quota(self, user: str) -> tuple[int, int]:
        """(bytes used, byte limit) of the account, the same figures the submission policy enforces."""

    def read_only_folders(self, user: str) -> frozenset[str]:
        """Folders the user may read but not change (the evidence folder 'Kanıt'): refuse APPEND,
        EXPUNGE, STORE of \\Deleted, COPY/MOVE into, DELETE/RENAME of them with a NO [CANNOT] ...)."""


class ImapServer:
    """Listens for IMAP (with STARTTLS) and IMAPS, and runs one `Session` per connection."""

    # RFC 3501 §5.4: an authenticated client may be idle for at least 30 minutes.
    autologout_seconds: float = 30 * 60
    preauth_timeout_seconds: float = 3 * 60
    max_auth_failures = 5
    # How often an IDLE session checks a folder inotify cannot watch for mail other code delivered.
    idle_poll_seconds: float = 0.5
    shutdown_grace_seconds: float = 5

    def __init__(
        self,
        backend: ImapBackend,
        tls: ssl.SSLContext,
        *,
        special_folders: dict[str, str] | None = None,
        folder_limits: FolderLimits | None = None,
        limits: ImapLimits | None = None,
        live: Live | None = None,
    ) -> None:
        """With `live`, the limits are those of the policy in force, read at each use (a reload
        reaches the next command and session); without, `folder_limits` and `limits`."""
        self.backend = backend
        self.tls = tls
        self.special_folders = {**DEFAULT_SPECIAL_USE, **(special_folders or {})}
        self._folder_limits = folder_limits or FolderLimits()
        self._limits = limits or ImapLimits()
        self.live = live
        self.connections = Slots(lambda: self.limits.connections_per_address)  # by client_key()
        self.account_sessions = Slots(lambda: self.limits.sessions_per_account)  # logged-in, by account
        self.reservations = QuotaReservations()
        # CREATE, DELETE and RENAME of every account, one at a time (see Session.c_create).
        self.folder_changes = asyncio.Lock()
        self.ports: dict[str, int] = {}
        self.stores = StoreRegistry()
        self.summaries = SummaryCache()
        # The NOTIFY sessions of each account (RFC 5465), told of one another's folder changes.
        self.notifications = Hub()
        self.inotify: Inotify | None = None
        self._servers: list[asyncio.Server] = []
        self._sessions: dict[asyncio.Task[None], Session] = {}
        self._closing = False

    @property
    def folder_limits(self) -> FolderLimits:
        return self.live.policy.imap if self.live is not None else self._folder_limits

    @property
    def limits(self) -> ImapLimits:
        return self.live.policy.imap_limits if self.live is not None else self._limits

    async def start(self, host: str, starttls_port: int | None, tls_port: int | None) -> None:
        self.inotify = Inotify.create(self.stores.dispatch)
        if self.inotify is not None:
            self.inotify.attach(asyncio.get_running_loop())
            self.stores.use_inotify(self.inotify)
        if starttls_port is not None:
            plain = await asyncio.start_server(self._plain, host, starttls_port)
            self._servers.append(plain)
            self.ports["imap"] = plain.sockets[0].getsockname()[1]
        if tls_port is not None:
            secure = await asyncio.start_server(
                self._implicit_tls, host, tls_port, ssl=self.tls, ssl_handshake_timeout=30
            )
            self._servers.append(secure)
            self.ports["imaps"] = secure.sockets[0].getsockname()[1]
        log.info("IMAP listening on %s %s", host, self.ports)

    def notify(self, user: str, folder: str) -> None:
        """Tell sessions with `folder` of `user` open that mail was delivered into it.

        With inotify (Linux) this is redundant but harmless; elsewhere it spares IDLE sessions
        their polling delay. Cheap: only new/ is looked at, and only if the folder is open.
        """
        try:
            directory = self.backend.maildir(user).folder_dir(folder)
        except MailboxNameError:
            return
        store = self.stores.get(directory)
        if store is not None:
            store.scan_new()

    async def _plain(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, tls=False)

    async def _implicit_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, tls=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tls: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        logs.bind_session(peer)
        address = client_key(str(peer[0])) if isinstance(peer, tuple) and peer else ""
        slot = self.connections.take(address)
        if slot is None:
            await _refuse(writer, address)
            return
        metrics.session_opened("imap")
        try:
            session = Session(self, reader, writer, tls=tls)
            self._sessions[task] = session
            await session.run()
        except asyncio.CancelledError:
            # Only close() cancels sessions, and it waits for them; nothing is left to propagate to.
            if not self._closing:
                raise
        finally:
            metrics.session_closed("imap")
            self._sessions.pop(task, None)
            slot.release()

    async def close(self) -> None:
        self._closing = True
        for server in self._servers:
            server.close()
        sessions = dict(self._sessions)
        for session in sessions.values():
            await session.say_goodbye("server shutting down")
            session.disconnect()
        if sessions:
            # Disconnected sessions end on their own; one stuck in a slow read is cancelled.
            _, stuck = await asyncio.wait(sessions, timeout=self.shutdown_grace_seconds)
            for task in stuck:
                task.cancel()
            for task in stuck:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        try:
            # What the sessions changed but never reported goes to disk too, not at the kernel's leisure.
            await self.stores.journals.all_settled()
        except OSError as e:
            log.error("IMAP folder journals could not be synced at shutdown: %s", e)
        stores = self.stores.close()
        self.summaries.clear()
        if self.inotify is not None:
            self.inotify.close()
        # Nothing changes those stores now: no session is left and inotify is closed. A journal
        # holds up to a quarter of its folder's messages, and replaying one that long made the first
        # SELECT of a 3000-message folder after a restart 10 ms, on a thread; from one snapshot, 4.
        await asyncio.to_thread(_fold_journals, stores)


def _fold_journals(stores: list[FolderStore]) -> None:
    for store in stores:
        try:
            store.fold_journal()
        except OSError as e:  # the snapshot and journal as they were are still whole
            log.warning("%s: journal not folded at shutdown: %s", store.directory, e)


async def _refuse(writer: asyncio.StreamWriter, address: str) -> None:
    """Turn a connection away before any session exists: RFC 3501 §7.1.5 allows BYE as the greeting,
    and RFC 5530 §3 UNAVAILABLE says it is temporary."""
    log.info("IMAP connection from %s refused: too many connections from its address", address)
    with contextlib.suppress(Exception):
        writer.write(b"* BYE [UNAVAILABLE] Too many connections from your address\r\n")
        await asyncio.wait_for(writer.drain(), 1)
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1)
