"""An account's subscribed mailbox names (RFC 3501 §6.3.6–6.3.9, RFC 9051 §6.3.7–6.3.8).

They are kept in the file `subscriptions` at the root of the account's Maildir, in the format
Dovecot 2.3 reads and writes there (its "V\\t2" version): a header line `V<TAB>2`, an empty line,
then one name a line, each hierarchy level in modified UTF-7 (RFC 3501 §5.1.3) and the levels
separated by a TAB. Dovecot fronting the same Maildir (conf/dovecot) so sees the same
subscriptions as kepmta's own IMAP, whichever of them the client used to change them.

A change is written the way Dovecot writes it: the new list into `subscriptions.lock`, created
exclusively (so a change by either server waits for the other's), then renamed over the file.
Everything here does file I/O and runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from pathlib import Path

from kepmta.imap.protocol import CommandFailed
from kepmta.maildir import INBOX, SEPARATOR, MailboxNameError, Maildir, decode_mutf7, encode_mutf7

FILE = "subscriptions"
_LOCK = FILE + ".lock"
_HEADER = b"V\t2\n\n"
# The file is read no further than this: what `max_names` names of the longest folder name take
# is far less, and a file grown past it by another program costs no more than this to read.
MAX_FILE = 1 << 20
# How long a change waits for another writer's lock, and when a lock is taken for a left-over of
# a writer that died (Dovecot's own writes hold it for milliseconds).
_LOCK_WAIT = 5.0
_LOCK_STALE = 120.0


def _decode(line: bytes, levels: bytes) -> str | None:
    """A stored name as a Unicode folder name; None for one that cannot name a folder."""
    try:
        parts = [decode_mutf7(p) for p in line.decode("ascii").split(levels.decode())]
    except (UnicodeDecodeError, MailboxNameError):
        return None
    name = SEPARATOR.join(parts)
    if not name or any(not p for p in parts) or any(ord(c) < 0x20 for c in name):
        return None
    return INBOX if name.upper() == INBOX else name


def _encode(name: str) -> bytes:
    return "\t".join(encode_mutf7(p) for p in name.split(SEPARATOR)).encode("ascii")


def load(root: Path) -> list[str] | None:
    """The subscribed names in their order, or None when the account has no subscriptions file."""
    try:
        with open(root / FILE, "rb") as f:
            data = f.read(MAX_FILE)
    except FileNotFoundError:
        return None
    if len(data) == MAX_FILE:
        # Cut in the middle of a name: that name is not one.
        data = data[: data.rfind(b"\n") + 1]
    lines = data.split(b"\n")
    levels = SEPARATOR.encode()
    if lines and lines[0].startswith(b"V\t"):
        # Dovecot's version 2 (and later) header: the header lines end at the first empty one,
        # and the names have their levels separated by TAB. A file without it is version 1,
        # names spelled with the hierarchy delimiter.
        end = lines.index(b"") if b"" in lines else len(lines)
        lines = lines[end + 1 :]
        levels = b"\t"
    names: list[str] = []
    seen: set[str] = set()
    for line in lines:
        name = _decode(line.rstrip(b"\r"), levels) if line else None
        if name is not None and name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _write(root: Path, names: list[str], wait: float = _LOCK_WAIT) -> None:
    """Replace the file with `names`, under Dovecot's lock: the lock file is the new file."""
    lock = root / _LOCK
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.stat(lock).st_mtime > _LOCK_STALE:
                    # Left by a writer that died between creating and renaming it.
                    lock.unlink()
                    continue
            if time.monotonic() > deadline:
                # RFC 5530 §3: INUSE, the resource is held by another session for now.
                raise CommandFailed(
                    "the subscription list is being changed elsewhere; try again", "INUSE"
                ) from None
            time.sleep(0.02)
    try:
        data = _HEADER + b"".join(_encode(n) + b"\n" for n in names)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        lock.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(lock, root / FILE)


def ensure(maildir: Maildir, max_names: int) -> None:
    """Give an account that has no subscriptions yet its folders (at its first login, its default
    ones): before this file, every folder was listed as subscribed, and clients that show only
    the subscribed ones must not lose any. A lock left by a writer that died (a crash mid-change)
    never fails the login: the file is written at a later login, and until then `subscribed`
    treats every folder as subscribed."""
    if (maildir.root / FILE).exists():
        return
    maildir.root.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(CommandFailed):
        _write(maildir.root, list(itertools.islice(maildir.folders(), max_names)), wait=0.5)


def subscribed(maildir: Maildir, max_names: int) -> list[str]:
    """The subscribed names; every folder while the account has no subscriptions file yet."""
    names = load(maildir.root)
    if names is None:
        return list(itertools.islice(maildir.folders(), max_names))
    return names


def change(maildir: Maildir, name: str, *, subscribe: bool, max_names: int) -> None:
    """SUBSCRIBE or UNSUBSCRIBE `name`. The caller serialises changes within this process; the
    lock file does it against Dovecot."""
    root = maildir.root
    names = subscribed(maildir, max_names)
    if subscribe:
        if name in names:
            return
        if len(names) >= max_names:
            # RFC 9051 §7.1 LIMIT: an account may subscribe no more names than it may have folders.
            raise CommandFailed(f"at most {max_names} names can be subscribed", "LIMIT")
        names.append(name)
    else:
        if name not in names:
            # RFC 3501 §6.3.7: NO, "can't unsubscribe that name".
            raise CommandFailed(f"{name} is not subscribed", "NONEXISTENT")
        names.remove(name)
    root.mkdir(parents=True, exist_ok=True)
    _write(root, names)


def rename(maildir: Maildir, old: str, new: str, max_names: int) -> None:
    """After RENAME of `old` (not INBOX) to `new`: its subscription and its inferiors' follow it.
    RFC 3501 §6.3.5 leaves this open; Dovecot carries them, and a client that subscribed a folder
    expects to find it subscribed under its new name, not a \\NonExistent leftover."""
    names = load(maildir.root)
    if names is None:
        return  # every folder counts as subscribed until the file exists
    prefix = old + SEPARATOR
    moved = [new + n[len(old) :] if n == old or n.startswith(prefix) else n for n in names]
    if moved != names:
        _write(maildir.root, list(dict.fromkeys(moved))[:max_names])
