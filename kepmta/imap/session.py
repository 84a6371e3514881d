"""One IMAP connection: its state (RFC 3501 §3), the commands and their responses."""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kepmta.imap import (
    compress,
    condstore,
    esearch,
    fetch,
    folders,
    notifications,
    quota,
    search,
    sort,
    specialuse,
    status,
    subscriptions,
    thread,
)
from kepmta.imap.index import IndexFile
from kepmta.imap.mailbox import (
    DELETED,
    MAX_KEYWORD_LENGTH,
    MAX_KEYWORDS,
    SEEN,
    SYSTEM_FLAGS,
    FolderStore,
    MailboxView,
    MessageFile,
    format_flags,
    system_flag,
)
from kepmta.imap.protocol import (
    Args,
    Atom,
    BadCommand,
    Command,
    CommandFailed,
    CommandReader,
    ConnectionClosed,
    FileSlice,
    IntervalSet,
    LineTooLong,
    ParenList,
    RawCommand,
    Refused,
    Segment,
    SequenceSet,
    String,
    Token,
    format_uid_set,
    parse_command,
    parse_date_time,
    parse_head,
    split_tag,
    string,
)
from kepmta.imap.summary import Summary
from kepmta.limits import Reservation, Slot
from kepmta.logtext import excerpt
from kepmta.maildir import INBOX, Maildir
from kepmta.outage import outage

if TYPE_CHECKING:
    from kepmta.imap.server import ImapServer

log = logging.getLogger("kepmta.imap")

_COMMON_CAPS = (
    "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS UNSELECT MOVE CHILDREN SPECIAL-USE"
    " CONDSTORE QRESYNC SORT BINARY QUOTA QUOTA=RES-STORAGE STATUS=SIZE LIST-EXTENDED"
    " IMAP4rev2 ESEARCH SEARCHRES LIST-STATUS MULTIAPPEND UTF8=ACCEPT THREAD=ORDEREDSUBJECT"
    " THREAD=REFERENCES COMPRESS=DEFLATE SORT=DISPLAY CREATE-SPECIAL-USE PARTIAL NOTIFY"
)
# RFC 9051 §6.3.1: a client that wants IMAP4rev2's responses where they differ from IMAP4rev1's
# says so with ENABLE.
IMAP4REV2 = "IMAP4rev2"
# RFC 6855 §3: mailbox names in UTF-8, and messages with UTF-8 headers, once the client enables it.
UTF8_ACCEPT = "UTF8=ACCEPT"
# RFC 5161 §3.1: what ENABLE can turn on.
_ENABLEABLE = (condstore.CONDSTORE, condstore.QRESYNC, IMAP4REV2, UTF8_ACCEPT)
_STREAM_CHUNK = 1 << 20
# Seconds our close_notify and FIN get to leave before the connection is dropped.
_CLOSE_GRACE = 1.0
# Messages one APPEND may carry (RFC 3502 sets no bound; each is a file until the command ends).
MAX_APPEND_MESSAGES = 1000
# Folders a LIST may read on the event loop (`_list_folders`).
_LIST_ON_LOOP = 64
# Messages a FETCH gathers summaries for at once: bounds the memory a long range holds.
_FETCH_BATCH = 256
_unique = itertools.count(1)


class State(Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"


_ANY = frozenset(State)
_PRE = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_AUTH_ONLY = frozenset({State.AUTHENTICATED})
_SEL = frozenset({State.SELECTED})
# RFC 5465 §5.2: commands after which the new messages are the client's own.
_ADDING = frozenset({"APPEND", "COPY", "UID COPY", "MOVE", "UID MOVE"})
# RFC 3501 §7.4.1: no EXPUNGE responses while these are answered.
_NO_EXPUNGE_DURING = frozenset(
    {"FETCH", "STORE", "SEARCH", "SORT", "THREAD"}
    | {"UID FETCH", "UID STORE", "UID SEARCH", "UID SORT", "UID THREAD"}
)


@dataclass(frozen=True)
class _Spec:
    handler: Callable[[Session, Command, Args], Awaitable[str]]
    states: frozenset[State]


class Session:
    def __init__(
        self, server: ImapServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tls: bool
    ) -> None:
        self.server = server
        self.backend = server.backend
        self.reader = CommandReader(reader)
        self.writer = writer
        self.tls = tls
        self.state = State.NOT_AUTHENTICATED
        self.user = ""
        # Who logged in, when it is not `user` but one of its operators (SASL authzid, RFC 4616).
        self.operator: str | None = None
        self.maildir: Maildir | None = None
        self.read_only_folders: frozenset[str] = frozenset()
        self.view: MailboxView | None = None
        self.enabled: set[str] = set()
        # RFC 5182 §2.1: the UIDs the last SEARCH ... RETURN (SAVE) of this selection found ("$").
        self.saved: list[int] = []
        self.auth_failures = 0
        self._logout = False
        # This session's place among its account's sessions (ImapLimits.sessions_per_account).
        self._account_slot: Slot | None = None
        # Quota held for the APPEND message being read, until its command ends.
        self._reservation: Reservation | None = None
        # Folders the command being run opened: its responses may report on them.
        self._opened: set[FolderStore] = set()
        # How many folders this session's last LIST or LSUB found (`_list_folders`).
        self._folders_listed: int | None = None
        # The account's quota as read when the reservation was made (this command's first message).
        self._admitted_quota: int | None = None
        # FETCH data waiting to go out with the next response line: one write (one TLS record and
        # one system call, mostly) per command instead of one per message and literal.
        self._pending: list[bytes] = []
        self._pending_size = 0
        # Set once COMPRESS=DEFLATE is active (RFC 4978): everything written goes through it.
        self._deflater: compress.Deflater | None = None
        # RFC 5465 NOTIFY, once set: what the client hears of unasked, and the task that tells it
        # between commands.
        self.notifier: notifications.Notifier | None = None
        self._pusher: asyncio.Task[None] | None = None
        # Held while a command runs and while the pusher speaks: responses never interleave.
        self._turn = asyncio.Lock()
        # Clear from a command's first literal to its end: the pusher waits (RFC 5465 §3: only
        # while no command is in progress).
        self._between = asyncio.Event()
        self._between.set()
        peer = writer.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""

    # --- I/O ----------------------------------------------------------------------------------------

    async def send(self, *lines: bytes) -> None:
        """Send response lines now, after whatever FETCH data is pending."""
        self._queue(b"".join(line + b"\r\n" for line in lines))
        await self._flush()

    def _queue(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)

    def _reported_journals(self) -> list[IndexFile]:
        """The journals of the folders a response may report on: the selected one, those the
        command opened (APPEND, COPY, STATUS, ...), and those NOTIFY watches."""
        stores = set(self._opened)
        if self.view is not None:
            stores.add(self.view.store)
        if self.notifier is not None:
            stores.update(self.notifier.stores())
        return [store.index for store in stores]

    async def _flush(self, *, settled: bool = True) -> None:
        """Write what is pending; first, unless told it reports no change (`settled=False`), wait
        until every change to the folders it may report on is on disk (`JournalSync`), this
        session's or another's."""
        if settled:
            await self.server.stores.journals.settled(self._reported_journals())
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        self._write(data)
        await self.writer.drain()

    def _write(self, data: bytes) -> None:
        self.writer.write(self._deflater.compress(data) if self._deflater is not None else data)

    async def send_segments(self, segments: Sequence[Segment]) -> None:
        """Queue a response made of octets and file slices; it goes out with the next `send`, or
        as soon as enough is pending, so a long FETCH never holds more than a bounded amount."""
        for seg in segments:
            if isinstance(seg, FileSlice):
                pos, end = seg.offset, seg.offset + seg.length
                while pos < end:
                    chunk = await fetch.read_at(seg.fd, pos, min(_STREAM_CHUNK, end - pos))
                    if not chunk:
                        raise ConnectionClosed("message file shrank while being sent")
                    self._queue(chunk)
                    pos += len(chunk)
                    if self._pending_size >= _STREAM_CHUNK:
                        await self._flush()
            else:
                self._queue(seg)
        if self._pending_size >= _STREAM_CHUNK:
            await self._flush()

    async def say_goodbye(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            self._queue(b"* BYE " + reason.encode() + b"\r\n")
            self._write(b"".join(self._pending))
            self._pending.clear()
            await asyncio.wait_for(self.writer.drain(), 1)

    def disconnect(self) -> None:
        """Drop the connection; the session's pending read then ends it."""
        self.writer.transport.abort()

    def capabilities(self) -> str:
        if self.state is not State.NOT_AUTHENTICATED:
            return _COMMON_CAPS
        if not self.tls:
            # RFC 3501 §6.2.3 / RFC 9051 §6.2.3: no cleartext passwords before TLS.
            return _COMMON_CAPS + " STARTTLS LOGINDISABLED"
        return _COMMON_CAPS + " AUTH=PLAIN"

    # --- main loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.send(f"* OK [CAPABILITY {self.capabilities()}] kepmta IMAP4rev1 ready".encode())
            while not self._logout:
                timeout = (
                    self.server.preauth_timeout_seconds
                    if self.state is State.NOT_AUTHENTICATED
                    else self.server.autologout_seconds
                )
                limits = self.server.limits
                sizes = limits.before_login if self.state is State.NOT_AUTHENTICATED else limits.after_login
                try:
                    # In this task: wait_for would start another, which costs a task and two turns
                    # of the event loop per command, each a whole round of every other session's
                    # work under load.
                    async with asyncio.timeout(timeout):
                        raw = await self.reader.command(self._continue, sizes, self._admit)
                except Refused as e:
                    self._release_reservation()
                    async with self._turn:
                        await self.send(_tagged(e.tag or "*", e.status, str(e)))
                        self._between.set()
                    continue
                except TimeoutError:
                    await self._stop_notify()
                    await self.say_goodbye("autologout, idle for too long")
                    return
                try:
                    async with self._turn:
                        await self.execute(raw)
                finally:
                    self._between.set()
                    raw.discard()
                    self._release_reservation()
        except ConnectionClosed as e:
            if e.farewell:
                await self.say_goodbye(e.farewell)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("IMAP session for %s failed", self.user or self.peer_ip)
            await self.say_goodbye("internal server error")
        finally:
            await self._stop_notify()
            self._unselect()
            self._release_reservation()
            if self._account_slot is not None:
                self._account_slot.release()
            with contextlib.suppress(Exception):
                self.writer.close()
                # RFC 8446 §6.1: whoever closes need not wait for the peer's close_notify. Waiting
                # for it (asyncio's TLS shutdown timeout is 30 s) would hold the connection, and the
                # client's place under the connection limit, after LOGOUT.
                try:
                    await asyncio.wait_for(self.writer.wait_closed(), _CLOSE_GRACE)
                except TimeoutError:
                    self.writer.transport.abort()

    async def _continue(self) -> None:
        async with self._turn:
            self._between.clear()
            if self._pending:  # responses queued before it, which may report changes
                await self._flush()
            # The continuation itself reports nothing: it need not wait for folder changes.
            self._queue(b"+ Ready for literal data\r\n")
            await self._flush(settled=False)
        # Clients such as imaplib write the literal and its closing CRLF separately; with Nagle's
        # algorithm on their side the CRLF waits for our ACK of the literal, which the kernel
        # would delay by up to 40 ms after a continuation. Ask it to ACK the literal at once.
        sock = self.writer.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_QUICKACK"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    async def _admit(self, head: bytes, index: int, size: int) -> Path | None:
        """Where a literal goes (see `CommandReader.command`): APPEND's messages to files in the
        account's tmp/, once the folder, the size and the quota allow them; anything else to memory.

        The checks come before the continuation, so a message that cannot be stored is refused
        before a single octet of it is read (RFC 9208 §4.3 OVERQUOTA, RFC 9051 §6.3.12 TRYCREATE).
        The command's messages are then reserved against the quota until it ends, so APPENDs
        started together are checked against each other's messages too.
        """
        if self.state is State.NOT_AUTHENTICATED:
            return None
        cmd = parse_head(head)
        # Every literal after the mailbox name is a message (RFC 3502 §6.3.11: the date is quoted),
        # one or, with MULTIAPPEND, more.
        if cmd is None or cmd.name != "APPEND" or not cmd.args:
            return None
        name = self._mailbox(Args(cmd.args))
        if not folders.exists(self._md(), name):
            raise CommandFailed(f"no mailbox named {name}", "TRYCREATE")
        self._refuse_read_only_folder(name, "APPEND")
        if sum(1 for t in cmd.args[1:] if _message_literal(t) is not None) >= MAX_APPEND_MESSAGES:
            raise CommandFailed(f"one APPEND may carry at most {MAX_APPEND_MESSAGES} messages", "LIMIT")
        reservations = self.server.reservations
        held = self._reservation
        used, limit = await reservations.usage(self.user, self._quota, exclude=held)
        # No await from the check to the reservation: no other session's check comes between.
        total = size + (held.size if held is not None else 0)
        quota.check_room(used, limit, total)
        self._reservation = reservations.reserve(self.user, total)
        self._admitted_quota = limit
        if held is not None:
            held.release()
        # Same file system as every folder, so the finished file is renamed into place.
        tmp = self._md().root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / _new_base()

    async def execute(self, raw: RawCommand) -> None:
        self._opened.clear()
        try:
            cmd = parse_command(raw.data, raw.files)
        except BadCommand as e:
            await self.send(_tagged(split_tag(raw.data) or "*", "BAD", str(e)))
            return
        name = cmd.name
        args = Args(cmd.args)
        if name == "UID":
            sub = args.peek()
            if not isinstance(sub, Atom) or sub.section is not None:
                await self.send(_tagged(cmd.tag, "BAD", "UID needs a command"))
                return
            name = "UID " + sub.value.upper()
            args.next("command")
        spec = _COMMANDS.get(name)
        if spec is None:
            await self.send(_tagged(cmd.tag, "BAD", f"unknown command {name}"))
            return
        if self.state not in spec.states:
            await self.send(_tagged(cmd.tag, "BAD", f"{name} is not valid in the {self.state.value} state"))
            return
        status, text = "OK", ""
        try:
            text = await spec.handler(self, cmd, args)
        except _AlreadyAnswered:
            return
        except BadCommand as e:
            status, text = "BAD", f"{name}: {e}"
        except CommandFailed as e:
            status, text = "NO", (f"[{e.code}] " if e.code else "") + e.text
        except (ConnectionClosed, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            raise
        except Exception as e:
            if (found := outage(e)) is not None:
                log.error("IMAP %s failed for %s: %s: %s", name, self.user or self.peer_ip, found.what, e)
                status, text = "NO", found.imap
            else:
                log.exception("IMAP %s failed for %s", name, self.user or self.peer_ip)
                status, text = "NO", f"[SERVERBUG] {name} failed on an internal error"
        if self._logout:
            await self.send(_tagged(cmd.tag, status, text))
            return
        lines = await self._unsolicited(
            allow_expunge=name not in _NO_EXPUNGE_DURING, fetch_new=name not in _ADDING
        )
        await self.send(*lines, _tagged(cmd.tag, status, text))
        if self.auth_failures >= self.server.max_auth_failures:
            raise ConnectionClosed("too many authentication failures")

    def _updates(self, *, allow_expunge: bool, flags: bool = True) -> list[bytes]:
        if self.view is None:
            return []
        self.view.store.refresh()
        lines = self.view.updates(
            allow_expunge=allow_expunge,
            condstore=self.condstore_enabled,
            qresync=self.qresync_enabled,
            flags=flags,
        )
        # Keywords another session or program added come before the FETCH responses showing them.
        return self._announce(self.view) + lines

    async def _unsolicited(
        self, *, allow_expunge: bool, notified: bool = False, fetch_new: bool = True
    ) -> list[bytes]:
        """The untagged responses due where the server may speak: the selected mailbox's changes,
        then what NOTIFY asked for of other mailboxes.

        `notified`: unasked, between commands or during IDLE, where only the events NOTIFY names
        are sent of the selected mailbox (RFC 5465 §4); at a command's end it has its usual
        responses. A new message's FETCH attributes of NOTIFY's MessageNew follow its EXISTS
        (§5.2): those responses are queued here, before the lines returned; not after the
        session's own APPEND, COPY or MOVE (`fetch_new`, §5.2: it knows what it added).
        """
        notifier = self.notifier
        if notifier is None:
            return self._updates(allow_expunge=allow_expunge)
        view = self.view
        group = notifier.request.selected
        lines: list[bytes] = []
        if view is not None and (group is not None or not notified):
            wanted = group.events if group is not None else frozenset()
            last = view.uids[-1] if view.uids else 0
            lines = self._updates(
                allow_expunge=allow_expunge,
                flags=not notified or notifications.FLAG_CHANGE in wanted,
            )
            fresh = view.uids[bisect.bisect_right(view.uids, last) :]
            if fresh and fetch_new and group is not None and group.fetch is not None:
                await self.send_segments([line + b"\r\n" for line in lines])
                lines = []
                await self._fetch(Args([Atom(format_uid_set(fresh)), group.fetch]), uid=True)
        await notifier.catch_up()
        selected = view.store if view is not None else None
        lines += notifier.take(selected, condstore=self.condstore_enabled, utf8=self.utf8)
        if notifier.overflowed:
            # RFC 5465 §5.8: as if NOTIFY NONE had been received.
            await self._stop_notify()
        return lines

    async def _push(self, notifier: notifications.Notifier) -> None:
        """Tell the client of NOTIFY's events while no command is in progress (RFC 5465 §3)."""
        try:
            await self._push_events(notifier)
        except (ConnectionError, ssl.SSLError):
            pass  # the connection is gone; the session's own read ends it
        except Exception:
            log.exception("IMAP NOTIFY for %s failed", self.user)

    async def _push_events(self, notifier: notifications.Notifier) -> None:
        while True:
            await self._between.wait()
            waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(notifier.ready.wait())}
            view = self.view
            group = notifier.request.selected
            if view is not None and group is not None:
                waiters.add(asyncio.ensure_future(view.wakeup.wait()))
            pushed = notifier.pushed and (view is None or group is None or view.store.sync is not None)
            try:
                await asyncio.wait(
                    waiters,
                    timeout=None if pushed else self.server.idle_poll_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
            async with self._turn:
                if not self._between.is_set() or self.view is not view:
                    continue
                notifier.ready.clear()
                notifier.poll()
                # RFC 5465 §6.1: SELECTED-DELAYED holds expunges back for a command that allows them.
                expunge = group is not None and group.filter == notifications.SELECTED
                lines = await self._unsolicited(allow_expunge=expunge, notified=True)
                if lines or self._pending:
                    await self.send(*lines)
                if self.notifier is not notifier:
                    return

    async def _stop_notify(self) -> None:
        """NOTIFY NONE: no more events; the watched stores are let go."""
        notifier, self.notifier = self.notifier, None
        pusher, self._pusher = self._pusher, None
        if notifier is None:
            return
        self.server.notifications.remove(self.user, notifier)
        notifier.close()
        if pusher is not None and pusher is not asyncio.current_task():
            pusher.cancel()
            await asyncio.wait([pusher])

    @property
    def condstore_enabled(self) -> bool:
        return condstore.CONDSTORE in self.enabled

    @property
    def qresync_enabled(self) -> bool:
        return condstore.QRESYNC in self.enabled

    @property
    def rev2(self) -> bool:
        return IMAP4REV2 in self.enabled

    @property
    def utf8(self) -> bool:
        return UTF8_ACCEPT in self.enabled

    def _enable_condstore(self) -> None:
        """RFC 7162 §3.1: using any CONDSTORE feature turns CONDSTORE on for the session."""
        self.enabled.add(condstore.CONDSTORE)

    # --- helpers ----------------------------------------------------------------------------------------

    def _md(self) -> Maildir:
        assert self.maildir is not None
        return self.maildir

    async def _quota(self) -> tuple[int, int]:
        return await self.backend.quota(self.user)

    async def _usage_as_admitted(self) -> tuple[int, int]:
        """`_quota()`, but with the account's quota as read when this command's messages were
        admitted, moments ago: only the stored octets are read again, usually without a hop to the
        database's thread."""
        if self._admitted_quota is None:
            return await self._quota()
        return await self._md().used(), self._admitted_quota

    def _release_reservation(self) -> None:
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None
            self._admitted_quota = None

    def _selected(self) -> MailboxView:
        assert self.view is not None
        return self.view

    def _unselect(self) -> None:
        # RFC 5182 §2.1: a new selection (or none) starts with an empty "$".
        self.saved = []
        if self.view is not None:
            if self.notifier is not None:
                self.notifier.unselected(self.view.store)
                # The pusher waits on the view's wake-up: let it wait on the next one.
                self.notifier.ready.set()
            self.view.close()
            self.server.stores.release(self.view.store)
            self.view = None
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    def _mailbox(self, args: Args) -> str:
        return self._name(args.astring("mailbox name"))

    def _name(self, raw: bytes) -> str:
        return folders.name_from_wire(raw, utf8=self.utf8)

    async def _open_store(self, name: str) -> FolderStore:
        md = self._md()
        store = await self.server.stores.acquire(name, folders.folder_dir(md, name), md.sizes)
        self._opened.add(store)
        return store

    def _release(self, store: FolderStore) -> None:
        self.server.stores.release(store)

    def _is_read_only_folder(self, name: str) -> bool:
        """A read-only folder, one under it, or one named like either ("KANIT.x" for "Kanıt"):
        nothing is put into them or taken out, so nothing there can pass for evidence."""
        return any(folders.within(name, folder) for folder in self.read_only_folders)

    def _refuse_read_only_folder(self, name: str, what: str) -> None:
        for folder in self.read_only_folders:
            if folders.within(name, folder):
                raise CommandFailed(
                    f"{what} is not permitted in {name}: {folder}, every folder under it and every "
                    "name like them are read-only",
                    "CANNOT",
                )

    def _refuse_holding_read_only_folder(self, name: str, what: str) -> None:
        """DELETE and RENAME of a read-only folder itself or of a superior (RENAME would take it
        along). A folder under it or named like it may go, so one made before that was refused can
        be removed."""
        for folder in self.read_only_folders:
            if folder == name or folder.startswith(name + folders.DELIMITER):
                raise CommandFailed(f"{what} is not permitted: {folder} is read-only", "CANNOT")

    def _targets(self, text: str, *, uid: bool) -> list[tuple[int, int]]:
        """(sequence number, UID) pairs a sequence set or UID set names, in mailbox order."""
        view = self._selected()
        if text == "$":
            # RFC 5182 §2.1: the saved UIDs, those still in the mailbox; none is no error.
            return [(seq, u) for u in self.saved if (seq := view.seq_of(u)) is not None and view.message(u)]
        numbers = SequenceSet.parse(text)
        if uid:
            uids = view.uids
            star = uids[-1] if uids else 0
            found: list[tuple[int, int]] = []
            # The intervals are sorted and disjoint, so the result is in mailbox order.
            for lo, hi in numbers.intervals(star):
                first, last = bisect.bisect_left(uids, lo), bisect.bisect_right(uids, hi)
                found.extend((i + 1, uids[i]) for i in range(first, last))
            return found
        if not view.exists and numbers.only_star_ranges():
            # RFC 9051 §9 (seq-number) would have a BAD for "*" in an empty mailbox too, but clients
            # send "1:*" to a folder they found empty, and it names nothing to do.
            return []
        if numbers.max_explicit() > view.exists:
            # RFC 9051 §9 seq-number, RFC 3501 §9: a sequence number beyond EXISTS is a client
            # error, also as the other end of "n:*" ("4294967295:*" named 4 billion numbers).
            raise BadCommand(f"message sequence number out of range (mailbox has {view.exists})")
        ranges = numbers.intervals(view.exists)
        out: list[tuple[int, int]] = []
        for lo, hi in ranges:
            out.extend((seq, view.uids[seq - 1]) for seq in range(lo, hi + 1))
        return out

    def _flag_list(self, tokens: Sequence[Token], *, allow_recent: bool = False) -> frozenset[str]:
        flags: set[str] = set()
        for tok in tokens:
            if not isinstance(tok, Atom) or tok.section is not None or not tok.value:
                raise BadCommand("flags must be atoms")
            value = tok.value
            if value.startswith("\\"):
                canonical = system_flag(value)
                if canonical is None:
                    if value.lower() == "\\recent":
                        # RFC 3501 §2.3.2: \Recent is the server's to set.
                        raise BadCommand("\\Recent cannot be set by a client")
                    raise BadCommand(f"unknown system flag {value}")
                flags.add(canonical)
            elif any(c in value for c in '*%]"\\'):
                raise BadCommand(f"invalid keyword {value!r}")
            else:
                flags.add(value)
        return frozenset(flags)

    async def _mark_seen(self, view: MailboxView, uid: int, flags: frozenset[str]) -> MessageFile | None:
        """Run the read hook, then set flags that add \\Seen.

        The read is evidence: a message is not delivered as read unless the hook recorded it. The
        hook comes first because a crash between the two must leave the message unseen (the next
        read then makes nothing new: one handover per recipient), never seen without evidence,
        which no later read would mend (tests/crash found that window).
        """
        store = view.store
        before = store.messages.get(uid)
        if before is None:
            return None
        try:
            await self.backend.on_seen(self.user, store.name, before.path, self.operator)
        except Exception as e:
            if (found := outage(e)) is not None:
                # The message stays unread, and the client may read it again once the evidence
                # can be recorded (RFC 5530 §3 UNAVAILABLE).
                log.error(
                    "read hook failed for %s %s uid %d: %s: %s", self.user, store.name, uid, found.what, e
                )
                raise CommandFailed(
                    "could not record the read receipt just now; try again later", "UNAVAILABLE"
                ) from None
            log.exception("read hook failed for %s %s uid %d", self.user, store.name, uid)
            raise CommandFailed("could not record the read receipt; try again", "SERVERBUG") from None
        current = store.messages.get(uid)
        if current is None:
            return None
        # Only this command's change, onto whatever another session set meanwhile.
        added, removed = flags - before.flags, before.flags - flags
        return store.set_flags(uid, (current.flags | added) - removed, view)

    # --- any state ------------------------------------------------------------------------------------

    async def c_capability(self, cmd: Command, args: Args) -> str:
        args.end()
        await self.send(f"* CAPABILITY {self.capabilities()}".encode())
        return "CAPABILITY completed"

    async def c_noop(self, cmd: Command, args: Args) -> str:
        # The updates every command ends with are what a NOOP is for (RFC 3501 §6.1.2).
        args.end()
        return "NOOP completed"

    async def c_logout(self, cmd: Command, args: Args) -> str:
        args.end()
        await self.send(b"* BYE kepmta logging out")
        self._logout = True
        return "LOGOUT completed"

    async def c_id(self, cmd: Command, args: Args) -> str:
        # RFC 2971 §3.1: NIL or a list of field/value string pairs, at most 30 of them.
        tok = args.next("ID parameter list")
        if isinstance(tok, ParenList):
            if len(tok.items) % 2 or len(tok.items) > 60:
                raise BadCommand("ID list must hold up to 30 field/value pairs")
            for i, item in enumerate(tok.items):
                nil = isinstance(item, Atom) and item.value.upper() == "NIL" and i % 2 == 1
                if not isinstance(item, String) and not nil:
                    raise BadCommand("ID fields and values must be strings")
        elif not (isinstance(tok, Atom) and tok.value.upper() == "NIL"):
            raise BadCommand("expected NIL or a parenthesised ID list")
        args.end()
        await self.send(b'* ID ("name" "kepmta" "version" "0.1.0")')
        return "ID completed"

    # --- not authenticated ------------------------------------------------------------------------

    async def c_starttls(self, cmd: Command, args: Args) -> str:
        args.end()
        if self.tls:
            raise BadCommand("TLS is already active")
        # RFC 3501 §6.2.1: anything pipelined after STARTTLS came in cleartext and is dropped.
        self.reader.discard_buffer()
        # No await between the OK and start_tls: the loop must not read the client's ClientHello
        # into the cleartext stream before the TLS layer takes over the transport.
        self.writer.write(_tagged(cmd.tag, "OK", "Begin TLS negotiation now") + b"\r\n")
        await self.writer.start_tls(self.server.tls, ssl_handshake_timeout=30)
        self.tls = True
        raise _AlreadyAnswered()

    async def c_compress(self, cmd: Command, args: Args) -> str:
        mechanism = args.atom("compression mechanism").upper()
        args.end()
        if mechanism != compress.DEFLATE:
            raise BadCommand("the compression mechanism is DEFLATE")
        if self._deflater is not None:
            # RFC 4978 §3, RFC 5530 §3.
            raise CommandFailed("compression is already on", "COMPRESSIONACTIVE")
        # RFC 4978 §3: the OK goes out uncompressed; every octet after it either way is deflated.
        await self.send(_tagged(cmd.tag, "OK", "DEFLATE active"))
        self._deflater = compress.Deflater()
        self.reader.inflate(compress.InflatingReader)
        raise _AlreadyAnswered()

    async def c_login(self, cmd: Command, args: Args) -> str:
        user = args.astring("user name")
        password = args.astring("password")
        args.end()
        self._require_tls()
        return await self._login(_utf8(user, "user name"), _utf8(password, "password"))

    async def c_authenticate(self, cmd: Command, args: Args) -> str:
        mechanism = args.atom("SASL mechanism").upper()
        initial = args.atom("initial response") if args.more() else None
        args.end()
        if mechanism != "PLAIN":
            raise CommandFailed(f"unsupported authentication mechanism {mechanism}")
        self._require_tls()
        if initial is None:
            await self.send(b"+ ")
            try:
                line = await self.reader.line(self.server.limits.preauth_command)
            except LineTooLong:
                raise BadCommand("SASL response too long") from None
            initial = line.rstrip(b"\r\n").decode("ascii", "replace")
            if initial == "*":
                raise BadCommand("authentication cancelled")
        # RFC 4959 §3: "=" is an empty initial response.
        payload = "" if initial == "=" else initial
        try:
            message = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadCommand("invalid base64 in SASL response") from None
        pieces = message.split(b"\x00")
        if len(pieces) != 3:
            raise BadCommand("malformed SASL PLAIN message (RFC 4616 §2)")
        authzid, authcid, password = (_utf8(p, "SASL PLAIN field") for p in pieces)
        # An authzid names a legal entity the user operates for; the backend refuses any other
        # exactly as a wrong password, so the answer tells nothing about who operates what.
        return await self._login(authcid, password, authzid)

    def _require_tls(self) -> None:
        if not self.tls:
            raise CommandFailed(
                "use STARTTLS first; passwords are not accepted in cleartext", "PRIVACYREQUIRED"
            )

    async def _login(self, username: str, password: str, authzid: str = "") -> str:
        account = await self.backend.authenticate(username, password, self.peer_ip, authzid)
        if account is None:
            self.auth_failures += 1
            log.info("IMAP authentication failed for %s from %s", excerpt(username), self.peer_ip)
            raise CommandFailed("invalid credentials", "AUTHENTICATIONFAILED")
        slot = self.server.account_sessions.take(account)
        if slot is None:
            log.info("IMAP login %s from %s refused: too many sessions", account, self.peer_ip)
            # RFC 5530 §3: LIMIT, a limit on the number of sessions; the session stays logged out.
            limit = self.server.limits.sessions_per_account
            raise CommandFailed(f"this account has {limit} sessions already; log out of one first", "LIMIT")
        self._account_slot = slot
        self.user = account
        self.operator = username if authzid and account != username.lower() else None
        self.maildir = self.backend.maildir(account)
        # Clients look for the special-use folders (RFC 6154) at once; they exist from the start.
        for name in (INBOX, *self.server.special_folders):
            if not folders.exists(self.maildir, name):
                self.maildir.create(name)
        # RFC 3501 §6.3.6: an account's first login subscribes its folders (the default ones, for a
        # new account); from then on only SUBSCRIBE and UNSUBSCRIBE change the list.
        limit = self.server.folder_limits.max_folders + 1
        await asyncio.to_thread(subscriptions.ensure, self.maildir, limit)
        self.read_only_folders = frozenset(self.backend.read_only_folders(account))
        self.state = State.AUTHENTICATED
        log.info("IMAP login %s from %s", account, self.peer_ip)
        return f"[CAPABILITY {self.capabilities()}] logged in"

    # --- authenticated ------------------------------------------------------------------------------

    async def c_enable(self, cmd: Command, args: Args) -> str:
        wanted = [args.atom("capability").upper()]
        while args.more():
            wanted.append(args.atom("capability").upper())
        # RFC 5161 §3.1: ENABLED lists what this command newly enabled; unknown names are ignored.
        newly = [c for c in _ENABLEABLE if c.upper() in wanted and c not in self.enabled]
        self.enabled.update(newly)
        if condstore.QRESYNC in self.enabled:
            # RFC 7162 §3.2.3: enabling QRESYNC implies CONDSTORE.
            self.enabled.add(condstore.CONDSTORE)
        await self.send(("* ENABLED " + " ".join(newly)).rstrip().encode())
        return "ENABLE completed"

    async def c_namespace(self, cmd: Command, args: Args) -> str:
        args.end()
        await self.send(b'* NAMESPACE (("" "' + folders.DELIMITER.encode() + b'")) NIL NIL')
        return "NAMESPACE completed"

    async def c_select(self, cmd: Command, args: Args) -> str:
        return await self._select(args, read_only=False)

    async def c_examine(self, cmd: Command, args: Args) -> str:
        return await self._select(args, read_only=True)

    async def _select(self, args: Args, *, read_only: bool) -> str:
        name = self._mailbox(args)
        params = condstore.parse_select_params(args)
        if params.qresync is not None and not self.qresync_enabled:
            # RFC 7162 §3.2.5: the QRESYNC parameter needs ENABLE QRESYNC first.
            raise BadCommand("QRESYNC must be enabled before it is used in SELECT/EXAMINE")
        if params.condstore:
            self._enable_condstore()
        if self.view is not None and (self.qresync_enabled or self.rev2):
            # RFC 7162 §3.2.11, RFC 9051 §6.3.2: the client learns where the old mailbox's
            # responses end.
            await self.send(b"* OK [CLOSED] previous mailbox closed")
        # RFC 3501 §6.3.1: the current mailbox is deselected even if the new selection fails.
        self._unselect()
        if not folders.exists(self._md(), name):
            raise CommandFailed(f"no mailbox named {name}", "NONEXISTENT")
        store = await self._open_store(name)
        # RFC 9051 §2.3.2: IMAP4rev2 has no \\Recent and no RECENT response.
        view = MailboxView(store, read_only=read_only, recent=not self.rev2)
        self.view = view
        self.state = State.SELECTED
        if self.notifier is not None:
            # The pusher waits on the selection's wake-up from now on.
            self.notifier.ready.set()
        lines = [*self._flag_lines(view), b"* %d EXISTS" % view.exists]
        if not self.rev2:
            lines.append(b"* %d RECENT" % len(view.recent))
            # RFC 9051 §6.3.2 leaves UNSEEN out; an IMAP4rev2 client searches for it.
            first_unseen = next(
                (i + 1 for i, uid in enumerate(view.uids) if SEEN not in store.messages[uid].flags), None
            )
            if first_unseen is not None:
                lines.append(b"* OK [UNSEEN %d] first unseen message" % first_unseen)
        lines.append(b"* OK [UIDVALIDITY %d] UIDs valid" % store.uidvalidity)
        lines.append(b"* OK [UIDNEXT %d] predicted next UID" % store.uidnext)
        # RFC 7162 §3.1.2.1: a server with persistent mod-sequences reports them on every SELECT.
        lines.append(b"* OK [HIGHESTMODSEQ %d] highest mod-sequence" % store.highestmodseq)
        if params.qresync is not None and params.qresync.uidvalidity == store.uidvalidity:
            lines.extend(self._resync(view, params.qresync))
        await self.send(*lines)
        return "[READ-ONLY] EXAMINE completed" if read_only else "[READ-WRITE] SELECT completed"

    def _flag_lines(self, view: MailboxView) -> list[bytes]:
        """FLAGS and PERMANENTFLAGS with every keyword of the folder, which the session has then
        been told of (RFC 3501 §7.1, §7.2.6)."""
        store = view.store
        keywords = sorted(store.keywords)
        view.announced = frozenset(keywords)
        all_flags = " ".join([*SYSTEM_FLAGS, *keywords])
        if view.read_only:
            permanent = ""
        elif self._is_read_only_folder(store.name):
            permanent = " ".join(f for f in SYSTEM_FLAGS if f != DELETED)
        elif len(keywords) < MAX_KEYWORDS:
            permanent = all_flags + " \\*"
        else:
            permanent = all_flags
        return [
            f"* FLAGS ({all_flags})".encode(),
            f"* OK [PERMANENTFLAGS ({permanent})] flags the client can change permanently".encode(),
        ]

    def _announce(self, view: MailboxView, keywords: Iterable[str] | None = None) -> list[bytes]:
        """RFC 3501 §7.2.6: a keyword goes out in a FETCH only after an untagged FLAGS listed it.
        The FLAGS and PERMANENTFLAGS responses, when `keywords` (by default: any of the folder's)
        holds one the session has not been told of; else nothing."""
        wanted = view.store.keywords if keywords is None else keywords
        if all(k in view.announced for k in wanted):
            return []
        return self._flag_lines(view)

    @staticmethod
    def _check_new_keywords(store: FolderStore, flags: Iterable[str]) -> None:
        """NO [LIMIT] (RFC 9051 §7.1) for keywords past what one folder may hold."""
        new = {f for f in flags if not f.startswith("\\") and f not in store.keywords}
        if not new:
            return
        if any(len(k) > MAX_KEYWORD_LENGTH for k in new):
            raise CommandFailed(f"keywords are limited to {MAX_KEYWORD_LENGTH} characters", "LIMIT")
        if len(store.keywords) + len(new) > MAX_KEYWORDS:
            raise CommandFailed(f"a folder may hold at most {MAX_KEYWORDS} keywords", "LIMIT")

    def _resync(self, view: MailboxView, q: condstore.Qresync) -> list[bytes]:
        """RFC 7162 §3.2.5.2: what vanished and what changed since the client's mod-sequence."""
        lines: list[bytes] = []
        vanished = view.store.vanished_since(q.modseq)
        if q.known_uids is not None:
            known = IntervalSet(q.known_uids.intervals(view.store.uidnext))
            vanished = [u for u in vanished if u in known]
        earlier = condstore.vanished_earlier(vanished)
        if earlier is not None:
            lines.append(earlier)
        for i, uid in enumerate(view.uids):
            msg = view.message(uid)
            if msg is not None and msg.modseq > q.modseq:
                lines.append(
                    b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))"
                    % (i + 1, uid, format_flags(view.flags_of(msg)), msg.modseq)
                )
        return lines

    async def c_getquota(self, cmd: Command, args: Args) -> str:
        root = args.astring("quota root")
        args.end()
        quota.require_root(root)
        used, limit = await self.backend.quota(self.user)
        await self.send(quota.quota_response(used, limit))
        return "GETQUOTA completed"

    async def c_getquotaroot(self, cmd: Command, args: Args) -> str:
        name = self._mailbox(args)
        args.end()
        if not folders.exists(self._md(), name):
            raise CommandFailed(f"no mailbox named {name}", "NONEXISTENT")
        used, limit = await self.backend.quota(self.user)
        wire = folders.name_to_wire(name, utf8=self.utf8)
        await self.send(quota.quotaroot_response(wire), quota.quota_response(used, limit))
        return "GETQUOTAROOT completed"

    async def c_setquota(self, cmd: Command, args: Args) -> str:
        args.astring("quota root")
        args.paren_list("resource limits")
        args.end()
        # RFC 9208 §4.1.3: limits are the provider's to set (the account's contract), not the user's.
        raise CommandFailed("quota limits are set by the provider", "NOPERM")

    # CREATE, DELETE and RENAME hold the server's `folder_changes`, so that two sessions of an account
    # cannot both take its last free folder place.

    async def c_create(self, cmd: Command, args: Args) -> str:
        name = self._mailbox(args)
        uses: tuple[str, ...] = ()
        if args.more():
            # RFC 4466 §2.2 CREATE parameters; RFC 6154 §3 defines USE.
            params = Args(args.paren_list("CREATE parameters"))
            while params.more():
                if params.atom("CREATE parameter").upper() != "USE":
                    raise BadCommand("the CREATE parameter is USE (special-use attributes)")
                attrs = Args(params.paren_list("special-use attributes"))
                names = []
                while attrs.more():
                    names.append(attrs.atom("special-use attribute"))
                uses = specialuse.attributes(names)
        args.end()
        self._refuse_read_only_folder(name, "CREATE")
        async with self.server.folder_changes:
            # Counting the account's folders takes longer the more it has: off the event loop.
            await asyncio.to_thread(_create, self._md(), name, self.server.folder_limits, uses)
            await self._names_changed()
        return "CREATE completed"

    async def c_delete(self, cmd: Command, args: Args) -> str:
        name = self._mailbox(args)
        args.end()
        self._refuse_holding_read_only_folder(name, "DELETE")
        async with self.server.folder_changes:
            directory, doomed = folders.delete(self._md(), name)
            # At once, before inotify reports the removals below: the store must not write its
            # index into the directory while it is being removed.
            self.server.stores.forget(directory)
            await asyncio.to_thread(specialuse.forget, self._md().root, name)
            await self._names_changed()
        await asyncio.to_thread(folders.remove, doomed)
        return "DELETE completed"

    async def c_rename(self, cmd: Command, args: Args) -> str:
        old = self._mailbox(args)
        new = self._mailbox(args)
        args.end()
        self._refuse_holding_read_only_folder(old, "RENAME")
        self._refuse_read_only_folder(new, "RENAME")
        async with self.server.folder_changes:
            # On the event loop, with the stores forgotten in the same turn: none writes its index
            # into a directory that has moved.
            for src, _ in folders.rename(self._md(), old, new, self.server.folder_limits):
                self.server.stores.forget(src)
            new = folders.valid_new_name(new)
            await asyncio.to_thread(specialuse.rename, self._md().root, old, new)
            if old != INBOX:  # RFC 3501 §6.3.5: INBOX stays, emptied
                limit = self.server.folder_limits.max_folders + 1
                await asyncio.to_thread(subscriptions.rename, self._md(), old, new, limit)
            await self._names_changed((old, new))
        return "RENAME completed"

    async def c_subscribe(self, cmd: Command, args: Args) -> str:
        name = self._mailbox(args)
        args.end()
        subscribe = cmd.name == "SUBSCRIBE"
        if subscribe:
            # RFC 3501 §6.3.6: a name that does not exist may be subscribed; one no folder could
            # have may not.
            name = folders.valid_new_name(name)
            folders.check_name(self._md(), name, self.server.folder_limits)
        limit = self.server.folder_limits.max_folders + 1
        async with self.server.folder_changes:
            await asyncio.to_thread(
                subscriptions.change, self._md(), name, subscribe=subscribe, max_names=limit
            )
            await self._names_changed()
        return f"{cmd.name} completed"

    def _account_names(self) -> notifications.Names:
        """The account's folders and subscriptions, for NOTIFY (in a worker thread)."""
        limit = self.server.folder_limits.max_folders + 1
        return notifications.load_names(self._md(), limit, self.server.special_folders)

    async def _names_changed(self, renamed: tuple[str, str] | None = None) -> None:
        """Tell the account's NOTIFY sessions that its names changed (RFC 5465 §5.4, §5.5). Called
        with the server's `folder_changes` held, so the changes reach them in order."""
        await self.server.notifications.changed(self.user, self.notifier, self._account_names, renamed)

    async def c_notify(self, cmd: Command, args: Args) -> str:
        """RFC 5465 §3.1. A refused NOTIFY leaves the one in force as it was."""
        limit = self.server.folder_limits.max_folders + 1
        request = notifications.parse(args, self._name, limit)
        if request is None:
            await self._stop_notify()
            return "NOTIFY completed"
        notifier = notifications.Notifier(
            request,
            self.server.stores,
            self._md(),
            notifications.inboxes(self.read_only_folders),
            limit,
        )
        # The names are read and the notifier joins the account's under the lock of folder
        # changes: none is made between the two and missed.
        async with self.server.folder_changes:
            notifier.begin(await asyncio.to_thread(self._account_names))
            await self._stop_notify()
            self.notifier = notifier
            self.server.notifications.add(self.user, notifier)
        await notifier.catch_up()
        if request.status:
            selected = self.view.store if self.view is not None else None
            lines = await notifier.status_all(selected, condstore=self.condstore_enabled, utf8=self.utf8)
            if lines:
                await self.send(*lines)
        self._pusher = asyncio.create_task(self._push(notifier), name="imap-notify")
        # RFC 5465 §3.1: a NOTIFY SET is an implicit NOOP; the updates every command ends with are it.
        return "NOTIFY completed"

    async def c_lsub(self, cmd: Command, args: Args) -> str:
        reference = self._name(args.astring("reference name"))
        pattern = self._name(args.astring("mailbox pattern"))
        args.end()
        if not pattern:
            await self.send(b'* LSUB (\\Noselect) "' + folders.DELIMITER.encode() + b'" ""')
            return "LSUB completed"
        entries = await self._list_folders(reference, (pattern,), folders.ListOptions(lsub=True))
        await self._send_list(b"LSUB", entries)
        return "LSUB completed"

    async def c_list(self, cmd: Command, args: Args) -> str:
        options = folders.ListOptions()
        status: list[str] = []
        first = args.peek()
        if isinstance(first, ParenList):
            # RFC 5258 §3 selection options.
            options = _selection(args.paren_list("selection options"))
        reference = self._name(args.astring("reference name"))
        shape = args.peek()
        if isinstance(shape, ParenList):
            # RFC 5258 §3: several patterns at once.
            raw = args.paren_list("mailbox patterns")
            if not raw or len(raw) > _MAX_PATTERNS:
                raise BadCommand(f"give 1 to {_MAX_PATTERNS} mailbox patterns")
            patterns = tuple(self._name(Args([t]).astring("mailbox pattern")) for t in raw)
        else:
            patterns = (self._name(args.astring("mailbox pattern")),)
        if args.more():
            if args.atom("RETURN").upper() != "RETURN":
                raise BadCommand("expected RETURN and the return options")
            options, status = _return_options(args.paren_list("return options"), options)
        args.end()
        if patterns == ("",):
            # RFC 3501 §6.3.8: an empty pattern asks for the delimiter and the root.
            await self.send(b'* LIST (\\Noselect) "' + folders.DELIMITER.encode() + b'" ""')
            return "LIST completed"
        entries = await self._list_folders(reference, patterns, options)
        await self._send_list(b"LIST", entries, status)
        return "LIST completed"

    async def _list_folders(
        self, reference: str, patterns: Sequence[str], options: folders.ListOptions
    ) -> list[folders.ListEntry]:
        """`_listing`: a directory scan that grows with the account's folders, so off the event
        loop, unless this session's last listing found few. A few dozen cost about 0.1 ms on the
        loop, and the hop to a thread and back several under load, as the thread waits for the
        interpreter lock; LIST is what clients poll. (A listing narrowed by its patterns can find
        few in a large account: the next then reads at most `max_folders` on the loop, once.)"""
        if self._folders_listed is not None and self._folders_listed <= _LIST_ON_LOOP:
            entries = self._listing(reference, patterns, options)
        else:
            entries = await asyncio.to_thread(self._listing, reference, patterns, options)
        self._folders_listed = len(entries)
        return entries

    def _listing(
        self, reference: str, patterns: Sequence[str], options: folders.ListOptions
    ) -> list[folders.ListEntry]:
        """The folders, and the subscriptions when they matter (see `_list_folders`)."""
        md = self._md()
        wanted = options.lsub or options.subscribed or options.return_subscribed
        limit = self.server.folder_limits.max_folders + 1
        subscribed = subscriptions.subscribed(md, limit) if wanted else []
        # The provider's special-use folders, and those the account created with USE.
        uses = {**specialuse.load(md.root), **self.server.special_folders}
        return folders.list_folders(md, reference, patterns, uses, options, subscribed)

    async def _send_list(
        self, word: bytes, entries: list[folders.ListEntry], status: Sequence[str] = ()
    ) -> None:
        """The LIST/LSUB responses; with `status` (RFC 5819 §2), each selectable mailbox's LIST is
        followed by its STATUS."""
        delim = string(folders.DELIMITER.encode())
        lines = []
        for e in entries:
            line = b"* %s (%s) %s %s" % (
                word,
                " ".join(e.attributes).encode(),
                delim,
                folders.name_to_wire(e.name, utf8=self.utf8),
            )
            if e.childinfo:
                line += b' ("CHILDINFO" ("SUBSCRIBED"))'
            lines.append(line)
            if status and e.selectable:
                with contextlib.suppress(CommandFailed):
                    # RFC 5819 §2: a mailbox whose status cannot be had is listed without it.
                    lines.append(await self._status_line(e.name, status))
                # Every folder's store is opened and counted: let other sessions in between.
                await self.send_segments([line + b"\r\n" for line in lines])
                lines = []
                await asyncio.sleep(0)
        await self.send(*lines)

    async def c_status(self, cmd: Command, args: Args) -> str:
        name = self._mailbox(args)
        items = args.paren_list("status data items")
        args.end()
        wanted = _status_items(items)
        if not folders.exists(self._md(), name):
            raise CommandFailed(f"no mailbox named {name}", "NONEXISTENT")
        await self.send(await self._status_line(name, wanted))
        return "STATUS completed"

    async def _status_line(self, name: str, wanted: Sequence[str]) -> bytes:
        """The STATUS response of folder `name` with the `wanted` items."""
        if "HIGHESTMODSEQ" in wanted:
            self._enable_condstore()
        store = await self._open_store(name)
        try:
            store.refresh()
            items = status.values(store, wanted)
        finally:
            self._release(store)
        return status.response(name, items, utf8=self.utf8)

    async def c_append(self, cmd: Command, args: Args) -> str:
        name = self._mailbox(args)
        # RFC 3502 §6.3.11: one or more messages, each with its own flags and date.
        messages: list[_Appended] = []
        while True:
            flags: frozenset[str] = frozenset()
            when: float | None = None
            tok = args.next("message literal")
            if isinstance(tok, ParenList):
                flags = self._flag_list(tok.items)
                tok = args.next("message literal")
            if isinstance(tok, String) and not tok.literal:
                when = parse_date_time(tok.value.decode("ascii", "replace")).timestamp()
                tok = args.next("message literal")
            if isinstance(tok, Atom) and tok.section is None and tok.value.upper() == "UTF8":
                # RFC 6855 §4: a message whose header may hold UTF-8, as UTF8 (literal8).
                tok = args.next("UTF8 message")
            literal = _message_literal(tok)
            if literal is None:
                raise BadCommand("the message must be sent as a literal")
            messages.append(_Appended(flags, when, literal))
            if not args.more():
                break
        if len(messages) > 1 and any(m.size == 0 for m in messages):
            # RFC 3502 §6.3.11: an empty message literal cancels the whole command.
            raise CommandFailed("an empty message cancels the APPEND; nothing was appended")
        if not folders.exists(self._md(), name):
            # RFC 3501 §6.3.11: TRYCREATE tells the client that CREATE would make this work.
            raise CommandFailed(f"no mailbox named {name}", "TRYCREATE")
        self._refuse_read_only_folder(name, "APPEND")
        # Checked again: other mail may have arrived while the messages streamed in.
        used, limit = await self.server.reservations.usage(
            self.user, self._usage_as_admitted, exclude=self._reservation
        )
        quota.check_room(used, limit, sum(m.size for m in messages))
        store = await self._open_store(name)
        try:
            self._check_new_keywords(store, {f for m in messages for f in m.flags})
            uids = await _save_all(store, messages)
        finally:
            self._release(store)
        # Stored, so counted as such from now on.
        self._release_reservation()
        return f"[APPENDUID {store.uidvalidity} {format_uid_set(uids)}] APPEND completed"

    async def c_idle(self, cmd: Command, args: Args) -> str:
        args.end()
        await self.send(b"+ idling")
        read = asyncio.ensure_future(self.reader.line(self.server.limits.line))
        deadline = time.monotonic() + self.server.autologout_seconds
        try:
            while True:
                notifier = self.notifier
                if notifier is not None:
                    # RFC 5465 §4: during IDLE exactly the events NOTIFY asked for.
                    notifier.ready.clear()
                    notifier.poll()
                    await self.send(*await self._unsolicited(allow_expunge=True, notified=True))
                elif self.view is not None:
                    await self.send(*self._updates(allow_expunge=True))
                waiters: set[asyncio.Future[Any]] = {read}
                wakes: list[asyncio.Future[Any]] = []
                if self.view is not None and (notifier is None or notifier.request.selected is not None):
                    wakes.append(asyncio.ensure_future(self.view.wakeup.wait()))
                if notifier is not None:
                    wakes.append(asyncio.ensure_future(notifier.ready.wait()))
                waiters.update(wakes)
                # Watched folders wake the view the moment inotify reports a change; only a folder
                # without a watch has to be looked at periodically.
                pushed = (self.view is None or self.view.store.sync is not None) and (
                    notifier is None or notifier.pushed
                )
                timeout = max(0.0, deadline - time.monotonic()) if pushed else self.server.idle_poll_seconds
                done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for wake in wakes:
                    wake.cancel()
                if read in done:
                    break
                if time.monotonic() > deadline:
                    raise ConnectionClosed("autologout, idle for too long")
        finally:
            if not read.done():
                read.cancel()
        try:
            line = read.result()
        except LineTooLong:
            raise BadCommand("expected DONE") from None
        # RFC 2177 §3: the client ends IDLE with DONE.
        if line.rstrip(b"\r\n").upper() != b"DONE":
            raise BadCommand("expected DONE")
        return "IDLE terminated"

    # --- selected -------------------------------------------------------------------------------------

    async def c_check(self, cmd: Command, args: Args) -> str:
        # Every change is on disk when its command completes, so there is nothing to flush.
        args.end()
        return "CHECK completed"

    async def c_close(self, cmd: Command, args: Args) -> str:
        args.end()
        view = self._selected()
        if not view.read_only and not self._is_read_only_folder(view.store.name):
            # RFC 3501 §6.4.2: CLOSE expunges silently.
            view.store.expunge(self._deleted(view))
        self._unselect()
        return "CLOSE completed"

    async def c_unselect(self, cmd: Command, args: Args) -> str:
        args.end()
        self._unselect()
        return "UNSELECT completed"

    @staticmethod
    def _deleted(view: MailboxView) -> list[int]:
        return [u for u in view.uids if (m := view.message(u)) is not None and DELETED in m.flags]

    def _expunge_allowed(self) -> MailboxView:
        view = self._selected()
        if view.read_only:
            raise CommandFailed("mailbox was opened with EXAMINE", "READ-ONLY")
        self._refuse_read_only_folder(view.store.name, "EXPUNGE")
        return view

    async def c_expunge(self, cmd: Command, args: Args) -> str:
        args.end()
        view = self._expunge_allowed()
        view.store.expunge(self._deleted(view))
        return "EXPUNGE completed"

    async def c_uid_expunge(self, cmd: Command, args: Args) -> str:
        uids = {uid for _, uid in self._targets(args.atom("UID set"), uid=True)}
        args.end()
        view = self._expunge_allowed()
        # RFC 4315 §2.1: only messages both named and marked \Deleted.
        doomed = [
            u for u in view.uids if u in uids and (m := view.message(u)) is not None and DELETED in m.flags
        ]
        view.store.expunge(doomed)
        return "UID EXPUNGE completed"

    async def c_search(self, cmd: Command, args: Args) -> str:
        return await self._search(cmd, args, uid=False)

    async def c_uid_search(self, cmd: Command, args: Args) -> str:
        return await self._search(cmd, args, uid=True)

    def _locate(self, uid: int) -> Path | None:
        msg = self._selected().message(uid)
        return msg.path if msg is not None else None

    def _catch_up(self) -> None:
        """Apply renames by other programs not yet seen: a file was not where the folder said."""
        store = self._selected().store
        store.refresh(force=store.sync is None)

    async def _summaries(self, uids: list[int], *, structure: bool = False) -> dict[int, Summary]:
        """Summaries of the selected folder's messages `uids`; expunged ones are left out."""
        view = self._selected()
        cache = self.server.summaries
        messages = [m for u in uids if (m := view.message(u)) is not None]
        found = await cache.get(view.store, messages, structure=structure)
        if len(found) < len(messages):
            self._catch_up()
            again = [
                fresh for m in messages if m.uid not in found and (fresh := view.message(m.uid)) is not None
            ]
            found.update(await cache.get(view.store, again, structure=structure))
        return found

    async def _matches(self, key: search.Key) -> list[search.Hit]:
        view = self._selected()
        messages = [(i + 1, m) for i, u in enumerate(view.uids) if (m := view.message(u)) is not None]
        return await search.run(
            key,
            messages,
            view.recent,
            self._summaries,
            self._locate,
            self._catch_up,
            max_seq=view.exists,
            max_uid=view.uids[-1] if view.uids else 0,
        )

    async def _search(self, cmd: Command, args: Args, *, uid: bool) -> str:
        options: esearch.ReturnOptions | None = None
        first = args.peek()
        if isinstance(first, Atom) and first.section is None and first.value.upper() == "RETURN":
            # RFC 4731 §3.1: SEARCH RETURN (options) criteria.
            args.next("RETURN")
            options = esearch.parse_return(args.paren_list("search return options"))
        elif self.rev2:
            # RFC 9051 §6.4.4: an IMAP4rev2 client gets ESEARCH, as for RETURN (ALL).
            options = esearch.ALL
        try:
            key = esearch.resolve(search.parse_program(args), self.saved)
            with_modseq = search.uses_modseq(key)
            if with_modseq:
                self._enable_condstore()
            hits = await self._matches(key)
        except BaseException:
            if options is not None and options.save:
                # RFC 5182 §2.1: a SEARCH that was to save and failed leaves "$" empty.
                self.saved = []
            raise
        modseq = max(h.message.modseq for h in hits) if with_modseq and hits else None
        if options is None:
            numbers = " ".join(str(h.message.uid if uid else h.seq) for h in hits)
            line = "* SEARCH " + numbers if numbers else "* SEARCH"
            if modseq is not None:
                # RFC 7162 §3.1.5: the highest mod-sequence among the messages found.
                line += f" (MODSEQ {modseq})"
            await self.send(line.encode())
        else:
            if options.save:
                self.saved = esearch.to_save([h.message.uid for h in hits], options)
            if options.answered:
                found = [h.message.uid if uid else h.seq for h in hits]
                await self.send(esearch.response(cmd.tag, found, options, uid=uid, modseq=modseq))
        return f"{'UID ' if uid else ''}SEARCH completed"

    async def c_sort(self, cmd: Command, args: Args) -> str:
        return await self._sort(args, uid=False)

    async def c_uid_sort(self, cmd: Command, args: Args) -> str:
        return await self._sort(args, uid=True)

    async def _sort(self, args: Args, *, uid: bool) -> str:
        criteria = sort.parse_criteria(args)
        key = esearch.resolve(search.parse_program(args), self.saved)
        hits = await self._matches(key)
        items = [sort.Item(h.seq, h.message.uid, h.message.size, h.message.internal) for h in hits]
        summaries = await self._summaries([i.uid for i in items]) if sort.header_needed(criteria) else {}
        ordered = sort.sort(criteria, items, summaries)
        numbers = " ".join(str(i.uid if uid else i.seq) for i in ordered)
        # RFC 5256 §4: the SORT response lists the numbers in the sorted order.
        await self.send(("* SORT " + numbers if numbers else "* SORT").encode())
        return f"{'UID ' if uid else ''}SORT completed"

    async def c_thread(self, cmd: Command, args: Args) -> str:
        return await self._thread(args, uid=False)

    async def c_uid_thread(self, cmd: Command, args: Args) -> str:
        return await self._thread(args, uid=True)

    async def _thread(self, args: Args, *, uid: bool) -> str:
        """RFC 5256 §3: THREAD algorithm charset criteria."""
        algorithm = args.atom("threading algorithm").upper()
        if algorithm not in thread.ALGORITHMS:
            raise BadCommand("threading algorithms are " + " and ".join(thread.ALGORITHMS))
        thread.check_charset(args.astring("charset"))
        key = esearch.resolve(search.parse_program(args), self.saved)
        hits = await self._matches(key)
        summaries = await self._summaries([h.message.uid for h in hits])
        messages = []
        for h in hits:
            summary = summaries.get(h.message.uid)
            field = _field_reader(summary)
            sent = summary.sent if summary is not None and summary.sent is not None else h.message.internal
            messages.append(
                thread.Message(
                    h.message.uid if uid else h.seq,
                    h.seq,
                    sent,
                    summary.sort_subject if summary is not None else "",
                    thread.is_reply(field("SUBJECT")),
                    next(iter(thread.ids(field("MESSAGE-ID"))), None),
                    thread.references_of(field("REFERENCES"), field("IN-REPLY-TO")),
                )
            )
        # The trees grow with the messages and their references: off the event loop.
        text = await asyncio.to_thread(lambda: thread.render(thread.THREADERS[algorithm](messages)))
        await self.send(("* THREAD " + text if text else "* THREAD").encode())
        return f"{'UID ' if uid else ''}THREAD completed"

    async def c_fetch(self, cmd: Command, args: Args) -> str:
        return await self._fetch(args, uid=False)

    async def c_uid_fetch(self, cmd: Command, args: Args) -> str:
        return await self._fetch(args, uid=True)

    async def _fetch(self, args: Args, *, uid: bool) -> str:
        numbers = args.atom("sequence set")
        items = fetch.parse_items(args.next("FETCH attributes"))
        modifiers = condstore.parse_fetch_modifiers(args)
        if modifiers.vanished and not (uid and self.qresync_enabled):
            # RFC 7162 §3.2.6: VANISHED is a UID FETCH modifier, and only once QRESYNC is enabled.
            raise BadCommand("VANISHED needs UID FETCH and ENABLE QRESYNC")
        if modifiers.changedsince is not None or any(i.name == "MODSEQ" for i in items):
            self._enable_condstore()
        targets = self._targets(numbers, uid=uid)
        view = self._selected()
        if modifiers.vanished and modifiers.changedsince is not None:
            wanted = IntervalSet(SequenceSet.parse(numbers).intervals(view.store.uidnext))
            gone = [u for u in view.store.vanished_since(modifiers.changedsince) if u in wanted]
            earlier = condstore.vanished_earlier(gone)
            if earlier is not None:
                await self.send(earlier)
        if modifiers.changedsince is not None:
            # RFC 7162 §3.1.4.1: only messages changed since, and MODSEQ is reported for them.
            since = modifiers.changedsince
            targets = [(s, u) for s, u in targets if (m := view.message(u)) is None or m.modseq > since]
            if not any(i.name == "MODSEQ" for i in items):
                items = (*items, fetch.FetchItem("MODSEQ"))
        if modifiers.partial is not None:
            # RFC 9394 §3.3: a page of the messages the command covers, counted in UID order
            # (negative positions from the highest).
            targets = sorted(targets)[modifiers.partial.window(len(targets))]
        sets_seen = not view.read_only and any(i.sets_seen for i in items)
        needs_file = fetch.needs_file(items)
        wants_summary = fetch.needs_summary(items)
        # Where the header ends only saves reading past it (the reader finds it otherwise): for it
        # a summary is taken if in memory, not made, which for new mail would cost a hop to a
        # thread on every FETCH of its header.
        header_hint = not wants_summary and fetch.uses_header(items)
        structure = fetch.needs_structure(items)
        for start in range(0, len(targets), _FETCH_BATCH):
            chunk = targets[start : start + _FETCH_BATCH]
            uids = [u for _, u in chunk]
            if wants_summary:
                summaries = await self._summaries(uids, structure=structure)
            elif header_hint:
                summaries = self.server.summaries.held(
                    view.store, [m for u in uids if (m := view.message(u))]
                )
            else:
                summaries = {}
            for seq, u in chunk:
                msg = view.message(u)
                summary = summaries.get(u)
                if msg is None or (wants_summary and summary is None):
                    continue
                flags_changed = False
                if sets_seen and SEEN not in msg.flags:
                    marked = await self._mark_seen(view, u, msg.flags | {SEEN})
                    if marked is None:
                        continue
                    flags_changed = True
                reader = await self._open_message(view, u, summary) if needs_file else None
                current = view.message(u)
                if current is None or (needs_file and reader is None):
                    if reader is not None:
                        reader.close()
                    continue
                try:
                    body = await fetch.render(
                        reader,
                        items,
                        summary=summary,
                        uid=u,
                        flags=view.flags_of(current),
                        size=current.size,
                        mtime=current.internal,
                        add_uid=uid,
                        add_flags=flags_changed,
                        modseq=current.modseq if self.condstore_enabled else None,
                    )
                    announce = self._announce(view, current.keywords)
                    await self.send_segments(
                        [*(line + b"\r\n" for line in announce), b"* %d FETCH (" % seq, *body, b")\r\n"]
                    )
                finally:
                    if reader is not None:
                        reader.close()
        # RFC 2180 §4.1.3: messages another session expunged meanwhile are left out and the rest is
        # answered OK, as STORE does; a NO would make clients (imaplib) drop what did arrive.
        return f"{'UID ' if uid else ''}FETCH completed"

    async def _open_message(
        self, view: MailboxView, uid: int, summary: Summary | None
    ) -> fetch.MessageReader | None:
        """The message file, opened; a rename by another program not yet seen is caught up with once."""
        for attempt in range(2):
            msg = view.message(uid)
            if msg is None:
                return None
            try:
                return fetch.MessageReader.open(msg.path, summary.header_end if summary else None)
            except FileNotFoundError:
                if attempt == 0:
                    view.store.refresh(force=view.store.sync is None)
        return None

    async def c_store(self, cmd: Command, args: Args) -> str:
        return await self._store(args, uid=False)

    async def c_uid_store(self, cmd: Command, args: Args) -> str:
        return await self._store(args, uid=True)

    async def _store(self, args: Args, *, uid: bool) -> str:
        numbers = args.atom("sequence set")
        unchangedsince = condstore.parse_store_modifiers(args)
        action = args.atom("store action").upper()
        mode, silent = action.removesuffix(".SILENT"), action.endswith(".SILENT")
        if mode not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise BadCommand("store action must be FLAGS, +FLAGS or -FLAGS, optionally .SILENT")
        tok = args.next("flag list")
        tokens: list[Token] = list(tok.items) if isinstance(tok, ParenList) else [tok]
        while args.more():
            tokens.append(args.next("flag"))
        flags = self._flag_list(tokens)
        if unchangedsince is not None:
            self._enable_condstore()
        targets = self._targets(numbers, uid=uid)
        view = self._selected()
        if view.read_only:
            raise CommandFailed("mailbox was opened with EXAMINE", "READ-ONLY")
        if DELETED in flags and mode != "-FLAGS":
            self._refuse_read_only_folder(view.store.name, "setting \\Deleted")
        if mode != "-FLAGS":
            self._check_new_keywords(view.store, flags)
        lines: list[bytes] = []
        modified: list[int] = []
        for seq, u in targets:
            msg = view.message(u)
            if msg is None:
                # RFC 2180 §4.2.1, RFC 9051 §6.4.6: a message another session expunged is left
                # out; the others are stored and the command succeeds.
                continue
            if unchangedsince is not None and msg.modseq > unchangedsince:
                # RFC 7162 §3.1.3: changed since the client looked; left alone and reported in MODIFIED.
                modified.append(u if uid else seq)
                continue
            if mode == "FLAGS":
                new = flags
            elif mode == "+FLAGS":
                new = msg.flags | flags
            else:
                new = msg.flags - flags
            changed = new != msg.flags
            if changed:
                if SEEN in new and SEEN not in msg.flags:
                    result = await self._mark_seen(view, u, new)
                else:
                    result = view.store.set_flags(u, new, view)
                if result is None:
                    continue
                msg = result
            uid_part = b"UID %d " % u if uid else b""
            if not silent:
                data = b"FLAGS " + format_flags(view.flags_of(msg))
                if self.condstore_enabled:
                    data += b" " + condstore.modseq_item(msg.modseq)
                lines.append(b"* %d FETCH (%s%s)" % (seq, uid_part, data))
            elif changed and self.condstore_enabled:
                # RFC 7162 §3.1.3: even .SILENT reports the new mod-sequence of what it changed.
                lines.append(b"* %d FETCH (%s%s)" % (seq, uid_part, condstore.modseq_item(msg.modseq)))
        if lines:
            await self.send(*self._announce(view), *lines)
        verb = f"{'UID ' if uid else ''}STORE"
        if modified:
            return f"[MODIFIED {format_uid_set(sorted(modified))}] {verb} completed"
        return f"{verb} completed"

    async def c_copy(self, cmd: Command, args: Args) -> str:
        return await self._copy(cmd, args, uid=False, move=False)

    async def c_uid_copy(self, cmd: Command, args: Args) -> str:
        return await self._copy(cmd, args, uid=True, move=False)

    async def c_move(self, cmd: Command, args: Args) -> str:
        return await self._copy(cmd, args, uid=False, move=True)

    async def c_uid_move(self, cmd: Command, args: Args) -> str:
        return await self._copy(cmd, args, uid=True, move=True)

    async def _copy(self, cmd: Command, args: Args, *, uid: bool, move: bool) -> str:
        numbers = args.atom("sequence set")
        name = self._mailbox(args)
        args.end()
        verb = "MOVE" if move else "COPY"
        targets = self._targets(numbers, uid=uid)
        view = self._selected()
        if move:
            self._expunge_allowed()
        if not folders.exists(self._md(), name):
            raise CommandFailed(f"no mailbox named {name}", "TRYCREATE")
        self._refuse_read_only_folder(name, f"{verb} into the folder")
        messages = [m for _, u in targets if (m := view.message(u)) is not None]
        if len(messages) != len(targets):
            raise CommandFailed("some of the messages no longer exist", "EXPUNGEISSUED")
        if not move:
            # RFC 9208 §4.3: a copy takes new room in the account; a move does not.
            used, limit = await self.server.reservations.usage(self.user, self._quota)
            quota.check_room(used, limit, sum(m.size for m in messages))
        dest = await self._open_store(name)
        try:
            self._check_new_keywords(dest, {k for m in messages for k in m.keywords})
            pairs: list[tuple[int, int]] = []
            for msg in messages:
                copied = await _copy_file(dest, msg)
                pairs.append((msg.uid, copied.uid))
        finally:
            self._release(dest)
        if not pairs:
            return f"{verb} completed"
        code = (
            f"COPYUID {dest.uidvalidity} {format_uid_set(s for s, _ in pairs)} "
            f"{format_uid_set(d for _, d in pairs)}"
        )
        if not move:
            return f"[{code}] COPY completed"
        # RFC 6851 §4.3: COPYUID goes in an untagged OK, before the EXPUNGE responses.
        await self.send(f"* OK [{code}] moved".encode())
        view.store.expunge([s for s, _ in pairs])
        return "MOVE completed"


class _AlreadyAnswered(Exception):
    """STARTTLS sends its tagged OK itself, before the handshake."""


def _tagged(tag: str, status: str, text: str) -> bytes:
    return f"{tag} {status} {text}".encode()


# Patterns one LIST may give at once (RFC 5258 §3 sets no bound; each is matched against every name).
_MAX_PATTERNS = 32


def _selection(tokens: Sequence[Token]) -> folders.ListOptions:
    """RFC 5258 §3 selection options (and RFC 6154 §3 SPECIAL-USE); SUBSCRIBED implies its return
    option. Unknown options are a BAD, as is RECURSIVEMATCH with nothing to recurse for."""
    names = set()
    for tok in tokens:
        if not isinstance(tok, Atom) or tok.section is not None:
            raise BadCommand("selection options must be atoms")
        names.add(tok.value.upper())
    unknown = names - {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
    if unknown:
        raise BadCommand(f"unknown LIST selection option {sorted(unknown)[0]}")
    if "RECURSIVEMATCH" in names and "SUBSCRIBED" not in names:
        # RFC 5258 §3: RECURSIVEMATCH alone, or with REMOTE only, is a BAD; of our options it
        # only means something with SUBSCRIBED.
        raise BadCommand("RECURSIVEMATCH needs the SUBSCRIBED selection option")
    # REMOTE (RFC 5258 §3): there are no remote mailboxes to add.
    subscribed = "SUBSCRIBED" in names
    return folders.ListOptions(
        subscribed=subscribed,
        recursive="RECURSIVEMATCH" in names,
        special_use="SPECIAL-USE" in names,
        return_subscribed=subscribed,
    )


def _return_options(
    tokens: Sequence[Token], options: folders.ListOptions
) -> tuple[folders.ListOptions, list[str]]:
    """RFC 5258 §3 return options, and RFC 5819 §2 STATUS with its items. CHILDREN and
    SPECIAL-USE (RFC 6154 §3) ask for what every LIST response carries already."""
    return_subscribed = options.return_subscribed
    status: list[str] = []
    items = Args(tokens)
    while items.more():
        value = items.atom("return option").upper()
        if value == "SUBSCRIBED":
            return_subscribed = True
        elif value == "STATUS":
            status = _status_items(items.paren_list("status data items"))
        elif value not in ("CHILDREN", "SPECIAL-USE"):
            raise BadCommand(f"unknown LIST return option {value}")
    return dataclasses.replace(options, return_subscribed=return_subscribed), status


def _status_items(tokens: Sequence[Token]) -> list[str]:
    wanted: list[str] = []
    for tok in tokens:
        if not isinstance(tok, Atom) or tok.value.upper() not in status.ITEMS:
            raise BadCommand("unknown STATUS item; use " + " ".join(status.ITEMS))
        if tok.value.upper() not in wanted:
            wanted.append(tok.value.upper())
    if not wanted:
        raise BadCommand("empty STATUS item list")
    return wanted


def _field_reader(summary: Summary | None) -> Callable[[str], str | None]:
    """The first value of a header field in the summary (decoded, case-folded), by upper-case name."""
    first: dict[str, str] = {}
    if summary is not None:
        for name, value in summary.fields:
            first.setdefault(name, value)
    return first.get


def _create(maildir: Maildir, name: str, limits: folders.FolderLimits, uses: tuple[str, ...]) -> None:
    """CREATE, with the special-use attributes recorded (RFC 6154 §3): a folder that cannot have
    them is not left behind."""
    folders.create(maildir, name, limits)
    if not uses:
        return
    name = folders.valid_new_name(name)
    try:
        specialuse.record(maildir.root, name, uses)
    except BaseException:
        _, doomed = folders.delete(maildir, name)
        folders.remove(doomed)
        raise


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadCommand(f"{what} is not valid UTF-8") from None


def _new_base() -> str:
    return Maildir.unique_name(f"{time.time_ns()}_{os.getpid()}_{next(_unique)}")


def _write_file(path: Path, data: bytes, when: float | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    _set_internal_date(path, when)


def _set_internal_date(path: Path, when: float | None) -> None:
    if when is not None:
        # INTERNALDATE is the file's mtime (RFC 3501 §6.3.11 APPEND date-time).
        os.utime(path, (when, when))


def _message_literal(tok: Token) -> String | None:
    """An APPEND message: a literal, or the one literal of UTF8 (...) (RFC 6855 §4)."""
    if isinstance(tok, ParenList) and len(tok.items) == 1:
        tok = tok.items[0]
    return tok if isinstance(tok, String) and tok.literal else None


@dataclass(frozen=True)
class _Appended:
    """One message of an APPEND: its flags, INTERNALDATE, and its literal (mostly a file)."""

    flags: frozenset[str]
    when: float | None
    literal: String

    @property
    def size(self) -> int:
        return self.literal.file.size if self.literal.file is not None else len(self.literal.value)


async def _stage(store: FolderStore, message: _Appended) -> Path:
    """Make a message's file complete and durable: one the reader wrote to the account's tmp/ was
    being synced since its last octet came in (usually done by now: no hop to a thread), one held
    in memory is written to the folder's tmp/ on a thread. The file's name is a new Maildir base,
    which stays the message's."""
    file = message.literal.file
    if file is not None:
        failed = await file.synced
        if failed is not None:
            raise failed
        _set_internal_date(file.path, message.when)
        return file.path
    staged = store.directory / "tmp" / _new_base()
    staged.parent.mkdir(exist_ok=True)
    await asyncio.to_thread(_write_file, staged, message.literal.value, message.when)
    return staged


async def _save_all(store: FolderStore, messages: list[_Appended]) -> list[int]:
    """Put an APPEND's messages into the folder, all or none (RFC 3502 §6.3.11): the slow part,
    writing and syncing, comes first; the renames that file them then run without an await, so
    no session sees some of them, and a failure takes back those already filed. The session
    removes the reader's files whatever happens."""
    staged: list[Path] = []
    try:
        for message in messages:
            staged.append(await _stage(store, message))
        added: list[MessageFile] = []
        try:
            for message, path in zip(messages, staged, strict=True):
                added.append(store.add(path, path.name, message.flags))
        except BaseException:
            store.expunge([m.uid for m in added])
            raise
        return [m.uid for m in added]
    except BaseException:
        for path in staged:
            path.unlink(missing_ok=True)
        raise


def _copy_into(src: Path, staged: Path) -> None:
    try:
        # Maildir files never change once delivered, so a hard link is a complete copy.
        os.link(src, staged)
    except OSError:
        shutil.copy2(src, staged)
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())


async def _copy_file(dest: FolderStore, msg: MessageFile) -> MessageFile:
    base = _new_base()
    staged = dest.directory / "tmp" / base
    staged.parent.mkdir(exist_ok=True)
    try:
        await asyncio.to_thread(_copy_into, msg.path, staged)
        return dest.add(staged, base, msg.flags)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        raise


_COMMANDS: dict[str, _Spec] = {
    "CAPABILITY": _Spec(Session.c_capability, _ANY),
    "NOOP": _Spec(Session.c_noop, _ANY),
    "LOGOUT": _Spec(Session.c_logout, _ANY),
    "ID": _Spec(Session.c_id, _ANY),
    "STARTTLS": _Spec(Session.c_starttls, _PRE),
    "LOGIN": _Spec(Session.c_login, _PRE),
    "AUTHENTICATE": _Spec(Session.c_authenticate, _PRE),
    "ENABLE": _Spec(Session.c_enable, _AUTH_ONLY),
    "COMPRESS": _Spec(Session.c_compress, _AUTH),
    "NAMESPACE": _Spec(Session.c_namespace, _AUTH),
    "SELECT": _Spec(Session.c_select, _AUTH),
    "EXAMINE": _Spec(Session.c_examine, _AUTH),
    "CREATE": _Spec(Session.c_create, _AUTH),
    "DELETE": _Spec(Session.c_delete, _AUTH),
    "RENAME": _Spec(Session.c_rename, _AUTH),
    "SUBSCRIBE": _Spec(Session.c_subscribe, _AUTH),
    "UNSUBSCRIBE": _Spec(Session.c_subscribe, _AUTH),
    "LIST": _Spec(Session.c_list, _AUTH),
    "LSUB": _Spec(Session.c_lsub, _AUTH),
    "STATUS": _Spec(Session.c_status, _AUTH),
    "APPEND": _Spec(Session.c_append, _AUTH),
    "IDLE": _Spec(Session.c_idle, _AUTH),
    "NOTIFY": _Spec(Session.c_notify, _AUTH),
    "CHECK": _Spec(Session.c_check, _SEL),
    "CLOSE": _Spec(Session.c_close, _SEL),
    "UNSELECT": _Spec(Session.c_unselect, _SEL),
    "EXPUNGE": _Spec(Session.c_expunge, _SEL),
    "SEARCH": _Spec(Session.c_search, _SEL),
    "FETCH": _Spec(Session.c_fetch, _SEL),
    "STORE": _Spec(Session.c_store, _SEL),
    "COPY": _Spec(Session.c_copy, _SEL),
    "MOVE": _Spec(Session.c_move, _SEL),
    "UID FETCH": _Spec(Session.c_uid_fetch, _SEL),
    "UID STORE": _Spec(Session.c_uid_store, _SEL),
    "UID SEARCH": _Spec(Session.c_uid_search, _SEL),
    "UID COPY": _Spec(Session.c_uid_copy, _SEL),
    "UID MOVE": _Spec(Session.c_uid_move, _SEL),
    "UID EXPUNGE": _Spec(Session.c_uid_expunge, _SEL),
    "SORT": _Spec(Session.c_sort, _SEL),
    "UID SORT": _Spec(Session.c_uid_sort, _SEL),
    "THREAD": _Spec(Session.c_thread, _SEL),
    "UID THREAD": _Spec(Session.c_uid_thread, _SEL),
    "GETQUOTA": _Spec(Session.c_getquota, _AUTH),
    "GETQUOTAROOT": _Spec(Session.c_getquotaroot, _AUTH),
    "SETQUOTA": _Spec(Session.c_setquota, _AUTH),
}
