"""Mailbox names on the wire and the folder operations: LIST/LSUB, CREATE, DELETE, RENAME.

Names travel in modified UTF-7 (RFC 3501 §5.1.3) with "." as the hierarchy delimiter, the one
Maildir++ uses, so a folder "A.B" is the directory `.A.B` next to INBOX's cur/new/tmp.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from kepmta.imap.protocol import BadCommand, CommandFailed, string
from kepmta.maildir import INBOX, SEPARATOR, MailboxNameError, Maildir, decode_mutf7, encode_mutf7

DELIMITER = SEPARATOR


def name_from_wire(raw: bytes) -> str:
    """A client's mailbox argument as a Unicode folder name; INBOX in any case is INBOX (§5.1)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadCommand("mailbox name must be 7-bit modified UTF-7 (RFC 3501 §5.1.3)") from None
    try:
        name = decode_mutf7(text)
    except MailboxNameError as e:
        raise BadCommand(str(e)) from None
    return INBOX if name.upper() == INBOX else name


def name_to_wire(name: str) -> bytes:
    return string(encode_mutf7(name).encode("ascii"))


def valid_new_name(name: str) -> str:
    """A name a folder may be created under: no wildcards, no empty levels; trailing delimiter dropped."""
    # RFC 3501 §6.3.3: a trailing delimiter only says the client means to create inferiors.
    name = name.rstrip(DELIMITER)
    if not name or any(c in name for c in "%*") or any(ord(c) < 0x20 for c in name):
        raise CommandFailed(f"invalid mailbox name {name!r}", "CANNOT")
    if "/" in name:
        raise CommandFailed("'/' is not allowed in mailbox names; the hierarchy delimiter is '.'", "CANNOT")
    if any(not p for p in name.split(DELIMITER)):
        raise CommandFailed(f"invalid mailbox name {name!r}: empty hierarchy level", "CANNOT")
    return name


def folder_dir(maildir: Maildir, name: str) -> Path:
    try:
        return maildir.folder_dir(name)
    except MailboxNameError as e:
        raise CommandFailed(str(e), "CANNOT") from None


def exists(maildir: Maildir, name: str) -> bool:
    try:
        path = maildir.folder_dir(name)
    except MailboxNameError:
        return False
    return (path / "cur").is_dir()


@dataclass(frozen=True)
class ListEntry:
    name: str
    attributes: tuple[str, ...]


def _pattern_regex(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    # RFC 3501 §6.3.8: "*" matches anything, "%" anything but the hierarchy delimiter.
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def list_folders(
    maildir: Maildir, reference: str, pattern: str, special_use: dict[str, str]
) -> list[ListEntry]:
    """LIST/LSUB results; parents that exist only as a prefix of deeper folders are \\Noselect."""
    full = reference + pattern
    names = list(maildir.folders())
    existing = set(names)
    everything = set(names)
    for name in names:
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            everything.add(DELIMITER.join(parts[:i]))
    regex = _pattern_regex(full, ignore_case=False)
    inbox_regex = _pattern_regex(full, ignore_case=True)
    entries: list[ListEntry] = []
    for name in sorted(everything, key=lambda n: (n != INBOX, n)):
        matcher = inbox_regex if name == INBOX else regex
        if not matcher.fullmatch(name):
            continue
        has_children = any(other.startswith(name + DELIMITER) for other in everything)
        attrs: list[str] = []
        if name not in existing:
            attrs.append("\\Noselect")
        # RFC 3348 §4 child information.
        attrs.append("\\HasChildren" if has_children else "\\HasNoChildren")
        if name in special_use:
            attrs.append(special_use[name])
        entries.append(ListEntry(name, tuple(attrs)))
    return entries


def _children(maildir: Maildir, name: str) -> list[str]:
    return [n for n in maildir.folders() if n.startswith(name + DELIMITER)]


def create(maildir: Maildir, name: str) -> None:
    name = valid_new_name(name)
    if name == INBOX or exists(maildir, name):
        raise CommandFailed("mailbox already exists", "ALREADYEXISTS")
    folder_dir(maildir, name)
    parts = name.split(DELIMITER)
    # RFC 3501 §6.3.3: superior names needed for the new one are created too.
    for i in range(1, len(parts) + 1):
        maildir.create(DELIMITER.join(parts[:i]))


def delete(maildir: Maildir, name: str) -> list[Path]:
    """Remove a folder's directory; its inferiors stay (RFC 3501 §6.3.4). Returns removed directories."""
    if name == INBOX:
        raise CommandFailed("INBOX cannot be deleted", "CANNOT")
    if not exists(maildir, name):
        raise CommandFailed("no such mailbox", "NONEXISTENT")
    path = maildir.folder_dir(name)
    shutil.rmtree(path)
    return [path]


def rename(maildir: Maildir, old: str, new: str) -> list[tuple[Path, Path]]:
    """Rename a folder and its inferiors (RFC 3501 §6.3.5). Returns the (old, new) directories moved."""
    new = valid_new_name(new)
    if not exists(maildir, old):
        raise CommandFailed("no such mailbox", "NONEXISTENT")
    if new == INBOX or exists(maildir, new):
        raise CommandFailed("target mailbox already exists", "ALREADYEXISTS")
    if new.startswith(old + DELIMITER):
        raise CommandFailed("a mailbox cannot be moved below itself", "CANNOT")
    if old == INBOX:
        return _rename_inbox(maildir, new)
    moves: list[tuple[Path, Path]] = []
    for name in [old, *_children(maildir, old)]:
        target_name = new + name[len(old) :]
        src, dst = maildir.folder_dir(name), folder_dir(maildir, target_name)
        if dst.exists():
            raise CommandFailed(f"mailbox {target_name!r} already exists", "ALREADYEXISTS")
        moves.append((src, dst))
    parts = new.split(DELIMITER)
    for i in range(1, len(parts)):
        parent = DELIMITER.join(parts[:i])
        if not exists(maildir, parent):
            maildir.create(parent)
    for src, dst in moves:
        os.rename(src, dst)
    return moves


def _rename_inbox(maildir: Maildir, new: str) -> list[tuple[Path, Path]]:
    # RFC 3501 §6.3.5: renaming INBOX moves its messages into the new folder and leaves INBOX empty.
    target = maildir.create(new)
    source = maildir.folder_dir(INBOX)
    for sub in ("cur", "new"):
        for entry in os.scandir(source / sub):
            if not entry.name.startswith("."):
                os.rename(entry.path, target / sub / entry.name)
    return []
