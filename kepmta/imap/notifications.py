"""RFC 5465 NOTIFY: which mailboxes a session hears about unasked, and what it is told of them.

NOTIFY SET names event groups, each a mailbox filter (§6: the selected mailbox, the personal
namespace, the mailboxes mail is delivered to, the subscribed ones, subtrees, single mailboxes) and
the events wanted from it (§5). Message events of the selected mailbox go out as the usual EXISTS,
EXPUNGE and FETCH responses (session.py); those of any other mailbox as a STATUS response.

A `Notifier` holds the FolderStore of every such mailbox: the one store of its folder that every
session shares, which inotify keeps current (`imap/notify.py`), so a watch costs no polling. A
`_Watch` attached to the store only marks its mailbox when a wanted change happens; the STATUS is
computed once, when the session may next speak, and left out when it says what the client was last
told. Mailbox events, CREATE, DELETE, RENAME and (UN)SUBSCRIBE by another session of the account,
reach every notifier of the account through the server's `Hub`, as a new picture of the account's
names, taken under the lock every such command holds; each notifier tells its client the
difference as LIST responses (§5.4, §5.5), and re-evaluates which mailboxes it watches.

Everything is bounded: the mailboxes watched by the account's folder limit (a folder is watched
once however many groups name it), the names a command may give likewise, and the LIST responses
waiting for a client that does not read by `MAX_PENDING_LISTS`, past which the session is told
NOTIFICATIONOVERFLOW and notifications stop (§5.8).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kepmta.imap import fetch, folders, specialuse, status, subscriptions
from kepmta.imap.mailbox import FolderStore, StoreRegistry
from kepmta.imap.protocol import Args, Atom, BadCommand, CommandFailed, ParenList, Token, string
from kepmta.maildir import INBOX, Maildir

log = logging.getLogger("kepmta.imap")

# RFC 5465 §5.1-§5.3: what a STATUS of another mailbox carries (HIGHESTMODSEQ once CONDSTORE is on).
_STATUS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN")
_STATUS_WITH_MODSEQ = (*_STATUS, "HIGHESTMODSEQ")

MESSAGE_NEW = "MessageNew"
MESSAGE_EXPUNGE = "MessageExpunge"
FLAG_CHANGE = "FlagChange"
ANNOTATION_CHANGE = "AnnotationChange"
MAILBOX_NAME = "MailboxName"
SUBSCRIPTION_CHANGE = "SubscriptionChange"
MAILBOX_METADATA_CHANGE = "MailboxMetadataChange"
SERVER_METADATA_CHANGE = "ServerMetadataChange"
# RFC 5465 §8: every event name the RFC defines, by its upper-case spelling.
_EVENTS = {
    e.upper(): e
    for e in (
        MESSAGE_NEW,
        MESSAGE_EXPUNGE,
        FLAG_CHANGE,
        ANNOTATION_CHANGE,
        MAILBOX_NAME,
        SUBSCRIPTION_CHANGE,
        MAILBOX_METADATA_CHANGE,
        SERVER_METADATA_CHANGE,
    )
}
_MESSAGE_EVENTS = frozenset({MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE, ANNOTATION_CHANGE})
# What this server reports: no ANNOTATE (RFC 5257) and no METADATA (RFC 5464) here, so their
# events are refused (§3.1: NO [BADEVENT] listing these).
SUPPORTED = (MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE, MAILBOX_NAME, SUBSCRIPTION_CHANGE)
_WATCHED = frozenset({MESSAGE_NEW, MESSAGE_EXPUNGE, FLAG_CHANGE})

SELECTED = "SELECTED"
SELECTED_DELAYED = "SELECTED-DELAYED"
PERSONAL = "PERSONAL"
INBOXES = "INBOXES"
SUBSCRIBED = "SUBSCRIBED"
SUBTREE = "SUBTREE"
MAILBOXES = "MAILBOXES"
_FILTERS = frozenset({SELECTED, SELECTED_DELAYED, PERSONAL, INBOXES, SUBSCRIBED, SUBTREE, MAILBOXES})
_SELECTED_FILTERS = frozenset({SELECTED, SELECTED_DELAYED})

# Event groups one NOTIFY may give: each is matched against every folder name.
MAX_GROUPS = 32
# LIST responses held for a client that is not reading before notifications stop (§5.8).
MAX_PENDING_LISTS = 1000
_OVERFLOW = b"* OK [NOTIFICATIONOVERFLOW] too many changes to report; notifications are off (NOTIFY NONE)"


@dataclass(frozen=True)
class Group:
    """One event group (RFC 5465 §8 event-group): a mailbox filter and the events wanted from it.

    `names` are SUBTREE's or MAILBOXES' mailboxes; `fetch` is MessageNew's FETCH attributes (for
    the selected mailbox only), as the token the client sent, for the session's FETCH to read.
    """

    filter: str
    events: frozenset[str]
    names: frozenset[str] = frozenset()
    fetch: ParenList | None = None

    def covers(self, name: str, subscribed: frozenset[str], inboxes: frozenset[str]) -> bool:
        """Whether the filter takes in the mailbox `name` (RFC 5465 §6.2-§6.6)."""
        if self.filter == PERSONAL:
            # §6.2: the account has one namespace, its own.
            return True
        if self.filter == INBOXES:
            return name in inboxes
        if self.filter == SUBSCRIBED:
            return name in subscribed
        if self.filter == MAILBOXES:
            # §6.6: exactly these names, no wildcards.
            return name in self.names
        if self.filter == SUBTREE:
            # §6.5: the names and every mailbox below them.
            return any(level in self.names for level in _levels(name))
        return False


@dataclass(frozen=True)
class Request:
    """A NOTIFY SET: the STATUS indicator and its event groups."""

    status: bool
    groups: tuple[Group, ...]

    @property
    def selected(self) -> Group | None:
        """The SELECTED or SELECTED-DELAYED group; none means no events of the selected mailbox
        (§3.1: as SELECTED NONE)."""
        return next((g for g in self.groups if g.filter in _SELECTED_FILTERS), None)

    def events(self, name: str, subscribed: frozenset[str], inboxes: frozenset[str]) -> frozenset[str]:
        """The events wanted of mailbox `name` when it is not the selected one."""
        out: set[str] = set()
        for g in self.groups:
            if g.filter not in _SELECTED_FILTERS and g.covers(name, subscribed, inboxes):
                out |= g.events
        return frozenset(out)


def _levels(name: str) -> Iterable[str]:
    """The name and its superiors: "A.B.C" gives "A", "A.B" and "A.B.C"."""
    for i, ch in enumerate(name):
        if ch == folders.DELIMITER:
            yield name[:i]
    yield name


def parse(args: Args, name_of: Callable[[bytes], str], max_names: int) -> Request | None:
    """The arguments of NOTIFY (RFC 5465 §8 notify): the request of NOTIFY SET, None for NOTIFY NONE.

    A malformed request, or one breaking a rule of §5 or §6.1, is a BadCommand; events this
    server does not report, a NO [BADEVENT] listing those it does (§3.1); more names than the
    account may have folders, a NO [NOTIFICATIONOVERFLOW]. Nothing is changed by a refusal.
    """
    verb = args.atom("SET or NONE").upper()
    if verb == "NONE":
        args.end()
        return None
    if verb != "SET":
        raise BadCommand("NOTIFY takes SET or NONE")
    status = False
    first = args.peek()
    if isinstance(first, Atom) and first.section is None and first.value.upper() == "STATUS":
        args.next("STATUS")
        status = True
    groups: list[Group] = []
    unsupported: list[str] = []
    while args.more():
        if len(groups) == MAX_GROUPS:
            raise CommandFailed(
                f"one NOTIFY may give at most {MAX_GROUPS} event groups", "NOTIFICATIONOVERFLOW"
            )
        groups.append(_group(args.paren_list("event group"), name_of, unsupported))
    if not groups:
        raise BadCommand("NOTIFY SET needs at least one event group")
    if sum(1 for g in groups if g.filter in _SELECTED_FILTERS) > 1:
        # RFC 5465 §6.1: one of SELECTED and SELECTED-DELAYED, once.
        raise BadCommand("only one SELECTED or SELECTED-DELAYED event group may be given")
    if sum(len(g.names) for g in groups) > max_names:
        raise CommandFailed(
            f"NOTIFY may name at most {max_names} mailboxes, as many as an account may have",
            "NOTIFICATIONOVERFLOW",
        )
    if unsupported:
        # RFC 5465 §3.1: NO, not BAD, and the code lists the events that are supported.
        raise CommandFailed(
            f"{unsupported[0]} is not reported by this server", f"BADEVENT ({' '.join(SUPPORTED)})"
        )
    return Request(status, tuple(groups))


def _group(tokens: Iterable[Token], name_of: Callable[[bytes], str], unsupported: list[str]) -> Group:
    items = Args(tuple(tokens))
    kind = items.atom("mailbox filter").upper()
    if kind not in _FILTERS:
        raise BadCommand(f"unknown NOTIFY mailbox filter {kind}")
    names: frozenset[str] = frozenset()
    if kind in (SUBTREE, MAILBOXES):
        tok = items.next("mailboxes")
        raw = tok.items if isinstance(tok, ParenList) else (tok,)
        if not raw:
            raise BadCommand(f"{kind} needs at least one mailbox")
        names = frozenset(name_of(Args((t,)).astring("mailbox name")) for t in raw)
    tok = items.next("events")
    items.end()
    if isinstance(tok, Atom) and tok.section is None and tok.value.upper() == "NONE":
        return Group(kind, frozenset(), names)
    if not isinstance(tok, ParenList) or not tok.items:
        raise BadCommand("events must be NONE or a list of event names in parentheses")
    events: set[str] = set()
    fetch_atts: ParenList | None = None
    listed = Args(tok.items)
    while listed.more():
        word = listed.atom("event name")
        event = _EVENTS.get(word.upper())
        if event is None:
            # RFC 5465 §8 event-ext: any atom is an event name; one not known is not supported.
            unsupported.append(word)
            continue
        events.add(event)
        if event == MESSAGE_NEW and isinstance(listed.peek(), ParenList):
            fetch_atts = _fetch_atts(listed.next("FETCH attributes"), kind)
        if event not in SUPPORTED:
            unsupported.append(event)
    if (MESSAGE_NEW in events) != (MESSAGE_EXPUNGE in events):
        raise BadCommand("MessageNew and MessageExpunge must be given together (RFC 5465 §5)")
    if events & {FLAG_CHANGE, ANNOTATION_CHANGE} and MESSAGE_NEW not in events:
        raise BadCommand(
            "FlagChange and AnnotationChange need MessageNew and MessageExpunge as well (RFC 5465 §5)"
        )
    if kind in _SELECTED_FILTERS and events - _MESSAGE_EVENTS:
        raise BadCommand(f"{kind} takes message events only (RFC 5465 §6.1)")
    return Group(kind, frozenset(events), names, fetch_atts)


def _fetch_atts(tok: Token, kind: str) -> ParenList:
    assert isinstance(tok, ParenList)
    if kind not in _SELECTED_FILTERS:
        # RFC 5465 §5.2: a new message elsewhere is told by STATUS; FETCH data is for the selected one.
        raise BadCommand("MessageNew takes FETCH attributes only for SELECTED or SELECTED-DELAYED")
    items = fetch.parse_items(tok)
    if any(i.sets_seen for i in items):
        # RFC 5465 §5.2: the client should not ask for attributes that set \Seen; here a read is
        # evidence (the read hook), which a notification must never make.
        raise BadCommand("MessageNew FETCH attributes must not set \\Seen; use BODY.PEEK")
    return tok


# --- the account's names ------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """The account's folders and subscriptions at one moment, and what LIST says of each name."""

    existing: frozenset[str]
    subscribed: frozenset[str]
    parents: frozenset[str]
    special_use: Mapping[str, str]

    def attributes(self, name: str) -> tuple[str, ...]:
        """The LIST attributes of `name` (RFC 5258 §3.4, RFC 5465 §5.4-§5.5)."""
        out: list[str] = []
        exists = name in self.existing
        if not exists:
            out.append("\\NonExistent")
        if name in self.subscribed:
            out.append("\\Subscribed")
        if name in self.parents:
            out.append("\\HasChildren")
        elif exists:
            out.append("\\HasNoChildren")
        use = self.special_use.get(name) if exists else None
        if use is not None:
            out.append(use)
        return tuple(out)


def load_names(maildir: Maildir, max_names: int, special_use: Mapping[str, str]) -> Names:
    """Read the account's names (in a worker thread: it lists the account's directories)."""
    existing = frozenset(maildir.folders())
    parents = {level for name in existing for level in list(_levels(name))[:-1]}
    return Names(
        existing,
        frozenset(subscriptions.subscribed(maildir, max_names)),
        frozenset(parents),
        {**specialuse.load(maildir.root), **special_use},
    )


# --- one session's notifications ------------------------------------------------------------------


@dataclass(frozen=True)
class _Listed:
    """A LIST response waiting to be sent: rendered when sent, in the session's name encoding."""

    name: str
    attributes: tuple[str, ...]
    old_name: str | None = None


class _Watch:
    """A mailbox a notifier watches unselected: told by the store of each change, it marks the
    mailbox for a STATUS response if the change is one of the events wanted."""

    def __init__(self, notifier: Notifier, name: str, store: FolderStore, events: frozenset[str]) -> None:
        self.notifier = notifier
        self.name = name
        self.store = store
        self.events = events
        self.read_only = True  # a watch never moves messages out of new/ as a selection does

    def added(self, uids: list[int]) -> None:
        if MESSAGE_NEW in self.events:
            self.notifier.mark(self)

    def removed(self, uids: list[int]) -> None:
        if MESSAGE_EXPUNGE in self.events:
            self.notifier.mark(self)

    def flags_changed(self, uid: int) -> None:
        if FLAG_CHANGE in self.events:
            self.notifier.mark(self)


class Notifier:
    """The NOTIFY state of one session: its request, the mailboxes it watches and what is due.

    `ready` is set whenever something is due; the session then calls `catch_up` and `take` at the
    next point it may speak. Every method runs on the event loop and only `catch_up` awaits.
    """

    def __init__(
        self,
        request: Request,
        stores: StoreRegistry,
        maildir: Maildir,
        inboxes: frozenset[str],
        max_watched: int,
    ) -> None:
        self.request = request
        self.ready = asyncio.Event()
        self.overflowed = False
        self._stores = stores
        self._maildir = maildir
        self._inboxes = inboxes
        self._max_watched = max_watched
        self._names: Names | None = None
        self._target: dict[str, frozenset[str]] | None = None
        self._watches: dict[str, _Watch] = {}
        self._dirty: dict[_Watch, None] = {}
        self._told: dict[str, tuple[tuple[str, int], ...]] = {}
        self._lists: list[_Listed] = []

    # --- what is watched -----------------------------------------------------------------------

    def begin(self, names: Names) -> None:
        """Take the account's names as NOTIFY SET found them; NO [NOTIFICATIONOVERFLOW] when the
        mailboxes to watch exceed what an account may have (§3.1)."""
        target = self._wanted(names)
        if len(target) > self._max_watched:
            raise CommandFailed(
                f"NOTIFY would watch {len(target)} mailboxes; at most {self._max_watched} may be",
                "NOTIFICATIONOVERFLOW",
            )
        self._names, self._target = names, target

    def _wanted(self, names: Names) -> dict[str, frozenset[str]]:
        out: dict[str, frozenset[str]] = {}
        for name in names.existing:
            events = self.request.events(name, names.subscribed, self._inboxes) & _WATCHED
            if events:
                out[name] = events
        return out

    async def catch_up(self) -> None:
        """Watch the mailboxes the latest names call for, and stop watching the others. Opening a
        store reads its index: one at a time, letting other sessions in between."""
        target, self._target = self._target, None
        if target is None:
            return
        for name, watch in list(self._watches.items()):
            if name not in target or watch.store.dead:
                self._drop(name)
        for name, events in target.items():
            held = self._watches.get(name)
            if held is not None:
                held.events = events
                continue
            try:
                directory = folders.folder_dir(self._maildir, name)
            except CommandFailed:
                continue
            store = await self._stores.acquire(name, directory, self._maildir.sizes)
            watch = _Watch(self, name, store, events)
            store.attach(watch)
            self._watches[name] = watch
            await asyncio.sleep(0)

    def _drop(self, name: str) -> None:
        watch = self._watches.pop(name)
        self._dirty.pop(watch, None)
        self._told.pop(name, None)
        watch.store.detach(watch)
        self._stores.release(watch.store)

    def close(self) -> None:
        for name in list(self._watches):
            self._drop(name)
        self._target = None

    def stores(self) -> list[FolderStore]:
        """The folders watched: what this session may be told of between commands."""
        return [watch.store for watch in self._watches.values()]

    @property
    def pushed(self) -> bool:
        """Whether every watched store hears of changes from inotify (else `poll` must look)."""
        return all(w.store.sync is not None for w in self._watches.values())

    def poll(self) -> None:
        """Look at the watched folders inotify does not watch: a change found marks them."""
        for watch in self._watches.values():
            if watch.store.sync is None:
                watch.store.refresh()

    # --- changes ---------------------------------------------------------------------------------

    def mark(self, watch: _Watch) -> None:
        self._dirty[watch] = None
        self.ready.set()

    def unselected(self, store: FolderStore) -> None:
        """The session leaves `store`: what it changed there while selected it knows already."""
        for watch in [w for w in self._dirty if w.store is store]:
            del self._dirty[watch]

    def names_changed(self, names: Names, renamed: tuple[str, str] | None, *, own: bool) -> None:
        """The account's names after a CREATE, DELETE, RENAME or (UN)SUBSCRIBE: LIST responses for
        the differences the client asked for, unless its own session made them (§5: the server
        SHOULD NOT tell a client of its own changes), and the mailboxes to watch again (§6.4)."""
        before, self._names = self._names, names
        self._target = self._wanted(names)
        self.ready.set()
        if own or before is None:
            return
        subscribed = before.subscribed | names.subscribed
        moved: dict[str, str] = {}
        if renamed is not None:
            old, new = renamed
            for gone in before.existing - names.existing:
                if gone == old or gone.startswith(old + folders.DELIMITER):
                    moved[new + gone[len(old) :]] = gone
        olds = set(moved.values())
        found: list[_Listed] = []
        for name in sorted(before.existing - names.existing - olds):
            if self._wants(MAILBOX_NAME, name, subscribed):
                found.append(_Listed(name, names.attributes(name)))
        for name in sorted(names.existing - before.existing):
            old_name = moved.get(name)
            if self._wants(MAILBOX_NAME, name, subscribed) or (
                old_name is not None and self._wants(MAILBOX_NAME, old_name, subscribed)
            ):
                # RFC 5465 §5.4: a renamed mailbox's LIST carries its old name.
                found.append(_Listed(name, names.attributes(name), old_name))
        for name in sorted(before.subscribed ^ names.subscribed):
            if self._wants(SUBSCRIPTION_CHANGE, name, subscribed):
                found.append(_Listed(name, names.attributes(name)))
        self._lists.extend(found)
        if len(self._lists) > MAX_PENDING_LISTS:
            self.overflowed = True

    def _wants(self, event: str, name: str, subscribed: frozenset[str]) -> bool:
        return event in self.request.events(name, subscribed, self._inboxes)

    # --- what the client is told -----------------------------------------------------------------

    async def status_all(self, selected: FolderStore | None, *, condstore: bool, utf8: bool) -> list[bytes]:
        """NOTIFY SET STATUS (§3.1): a STATUS response for each watched mailbox but the selected one.
        Each counts its mailbox's messages: other sessions get their turn in between."""
        self._dirty.clear()
        lines = []
        for watch in list(self._watches.values()):
            if watch.store is not selected:
                line = self._status(watch, condstore=condstore, utf8=utf8, always=True)
                if line is not None:
                    lines.append(line)
                await asyncio.sleep(0)
        return lines

    def take(self, selected: FolderStore | None, *, condstore: bool, utf8: bool) -> list[bytes]:
        """The LIST and STATUS responses due, each mailbox's STATUS once however often it changed;
        after an overflow only NOTIFICATIONOVERFLOW, and the session must stop notifying (§5.8)."""
        if self.overflowed:
            return [_OVERFLOW]
        delim = string(folders.DELIMITER.encode())
        lines: list[bytes] = []
        for e in self._lists:
            line = b"* LIST (%s) %s %s" % (
                " ".join(e.attributes).encode(),
                delim,
                folders.name_to_wire(e.name, utf8=utf8),
            )
            if e.old_name is not None:
                line += b' ("OLDNAME" (%s))' % folders.name_to_wire(e.old_name, utf8=utf8)
            lines.append(line)
        self._lists.clear()
        dirty, self._dirty = self._dirty, {}
        for watch in dirty:
            # The selected mailbox's changes go out as EXISTS, EXPUNGE and FETCH (§5.1-§5.3).
            if watch.store is not selected and self._watches.get(watch.name) is watch:
                status = self._status(watch, condstore=condstore, utf8=utf8, always=False)
                if status is not None:
                    lines.append(status)
        return lines

    def _status(self, watch: _Watch, *, condstore: bool, utf8: bool, always: bool) -> bytes | None:
        """The mailbox's STATUS (§5.1-§5.3: MESSAGES, UIDNEXT, UIDVALIDITY, UNSEEN, and
        HIGHESTMODSEQ once CONDSTORE is on); None when it is gone or says what was last said."""
        store = watch.store
        store.refresh()
        if store.dead:
            return None
        items = status.values(store, _STATUS_WITH_MODSEQ if condstore else _STATUS)
        if not always and self._told.get(watch.name) == items:
            return None
        self._told[watch.name] = items
        return status.response(watch.name, items, utf8=utf8)


class Hub:
    """The notifiers of every account, so that one session's CREATE, DELETE, RENAME or
    (UN)SUBSCRIBE reaches the others (RFC 5465 §5.4, §5.5)."""

    def __init__(self) -> None:
        self._by_user: dict[str, set[Notifier]] = {}

    def add(self, user: str, notifier: Notifier) -> None:
        self._by_user.setdefault(user, set()).add(notifier)

    def remove(self, user: str, notifier: Notifier) -> None:
        held = self._by_user.get(user)
        if held is not None:
            held.discard(notifier)
            if not held:
                del self._by_user[user]

    async def changed(
        self,
        user: str,
        origin: Notifier | None,
        load: Callable[[], Names],
        renamed: tuple[str, str] | None = None,
    ) -> None:
        """The account's names changed: every notifier of it gets them, read once, in a worker
        thread. The caller holds the server's lock of folder changes, so the pictures reach each
        notifier in the order the changes were made."""
        if not self._by_user.get(user):
            return
        try:
            names = await asyncio.to_thread(load)
        except OSError as e:
            # The change itself is made; only its notifications are lost.
            log.error("NOTIFY: reading the names of %s failed: %s", user, e)
            return
        for notifier in list(self._by_user.get(user, ())):
            notifier.names_changed(names, renamed, own=notifier is origin)


def inboxes(read_only_folders: Iterable[str]) -> frozenset[str]:
    """RFC 5465 §6.3 INBOXES: the mailboxes this server delivers into, INBOX and the evidence
    folder (the read-only folders, which only the server fills)."""
    return frozenset({INBOX, *read_only_folders})
