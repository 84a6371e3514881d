"""Special-use attributes an account's own folders were created with (RFC 6154 §3 CREATE-SPECIAL-USE).

The provider's folders (Sent, Drafts, Trash, Junk, the evidence folder) have theirs from the
server's configuration; what `CREATE name (USE (...))` gives another folder is kept in the file
`kepmta-special-use` at the root of the account's Maildir, one folder a line: its name in modified
UTF-7 (RFC 3501 §5.1.3, "." between levels, as its directory is named), a TAB, and its attributes
separated by spaces. The file is replaced whole (written aside, then renamed), under the server's
folder lock, in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from kepmta.imap.protocol import CommandFailed
from kepmta.maildir import INBOX, SEPARATOR, MailboxNameError, decode_mutf7, encode_mutf7

FILE = "kepmta-special-use"
# RFC 6154 §2: \All and \Flagged are virtual mailboxes this store cannot make.
SUPPORTED = ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")
_KNOWN = frozenset({"\\All", "\\Flagged", *SUPPORTED})
# The file is read no further than this (an account has at most so many folders).
MAX_FILE = 1 << 20


def attributes(tokens: Iterable[str]) -> tuple[str, ...]:
    """The canonical spelling of USE's attributes; NO [USEATTR] (RFC 6154 §3) for one this server
    cannot give a folder."""
    by_lower = {a.lower(): a for a in _KNOWN}
    out: list[str] = []
    for token in tokens:
        canonical = by_lower.get(token.lower())
        if canonical is None or canonical not in SUPPORTED:
            raise CommandFailed(f"{token} is not a special use a folder here can have", "USEATTR")
        if canonical not in out:
            out.append(canonical)
    return tuple(out)


def load(root: Path) -> dict[str, str]:
    """Folder name → its attributes as one string ("\\Sent \\Archive")."""
    try:
        with open(root / FILE, "rb") as f:
            data = f.read(MAX_FILE)
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    for line in data.decode("ascii", "replace").splitlines():
        wire, _, attrs = line.partition("\t")
        try:
            name = SEPARATOR.join(decode_mutf7(p) for p in wire.split(SEPARATOR))
        except MailboxNameError:
            continue
        kept = [a for a in attrs.split() if a in SUPPORTED]
        if name and kept:
            out[name] = " ".join(kept)
    return out


def _save(root: Path, uses: dict[str, str]) -> None:
    staged = root / (FILE + ".new")
    data = "".join(
        SEPARATOR.join(encode_mutf7(p) for p in name.split(SEPARATOR)) + "\t" + attrs + "\n"
        for name, attrs in sorted(uses.items())
    ).encode("ascii")
    with open(staged, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(staged, root / FILE)


def record(root: Path, name: str, attrs: tuple[str, ...]) -> None:
    uses = load(root)
    uses[name] = " ".join(attrs)
    _save(root, uses)


def forget(root: Path, name: str) -> None:
    """A deleted folder's attributes go with it (its inferiors stay, and keep theirs)."""
    uses = load(root)
    if uses.pop(name, None) is not None:
        _save(root, uses)


def rename(root: Path, old: str, new: str) -> None:
    """A renamed folder and its inferiors keep their attributes under their new names; INBOX's
    messages move into a new folder, which has none (RFC 3501 §6.3.5)."""
    if old == INBOX:
        return
    uses = load(root)
    moved = {
        new + n[len(old) :]: attrs for n, attrs in uses.items() if n == old or n.startswith(old + SEPARATOR)
    }
    if moved:
        kept = {n: a for n, a in uses.items() if n != old and not n.startswith(old + SEPARATOR)}
        _save(root, {**kept, **moved})
