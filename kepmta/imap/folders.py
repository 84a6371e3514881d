"""Mailbox names on the wire and the folder operations: LIST/LSUB, CREATE, DELETE, RENAME.

Names travel in modified UTF-7 (RFC 3501 §5.1.3) with "." as the hierarchy delimiter, the one
Maildir++ uses, so a folder "A.B" is the directory `.A.B` next to INBOX's cur/new/tmp.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kepmta.imap.protocol import BadCommand, CommandFailed, string
from kepmta.maildir import INBOX, SEPARATOR, MailboxNameError, Maildir, decode_mutf7, encode_mutf7

DELIMITER = SEPARATOR
# The longest file name Linux file systems take (NAME_MAX). A Maildir++ folder is one directory
# named after its whole hierarchy, so this bounds every folder name, however deep.
NAME_MAX = 255


@dataclass(frozen=True)
class FolderLimits:
    """What an account's folders may cost ([imap] of the policy file): each is a directory with
    cur/, new/ and tmp/ (four inodes and their blocks, outside the quota) that LIST, STATUS and
    every quota count walk."""

    # Every folder but INBOX counts, those kepmta makes at login too.
    max_folders: int = 1000
    # Levels of the hierarchy: "A.B.C" has three.
    max_folder_depth: int = 16
    # Octets of the folder's directory name: "." and the modified UTF-7 name (RFC 3501 §5.1.3).
    max_folder_name: int = NAME_MAX


def name_from_wire(raw: bytes, *, utf8: bool = False) -> str:
    """A client's mailbox argument as a Unicode folder name; INBOX in any case is INBOX (§5.1).

    A name that is not modified UTF-7 is refused with NO, not BAD: it is a well-formed string
    that names no mailbox (RFC 3501 §5.1.3, RFC 9051 §5.1.3). So is a spelling that is not the
    one encoding of its name ("&AGE-" for "a", two shifts side by side, padding bits set): taken
    as it decodes, it would make a second spelling of an existing folder, or one that Dovecot on
    the same Maildir reads as another name. After ENABLE UTF8=ACCEPT (`utf8`), names are UTF-8.
    """
    if utf8:
        return _utf8_name(raw)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise CommandFailed("mailbox name must be 7-bit modified UTF-7 (RFC 3501 §5.1.3)", "CANNOT") from None
    try:
        name = decode_mutf7(text)
    except MailboxNameError as e:
        raise CommandFailed(str(e), "CANNOT") from None
    if encode_mutf7(name) != text:
        raise CommandFailed(
            f"mailbox name {text!r} is not in canonical modified UTF-7 (RFC 3501 §5.1.3); "
            f"it is spelled {encode_mutf7(name)!r}",
            "CANNOT",
        )
    return INBOX if name.upper() == INBOX else name


# RFC 6855 §3: no control characters, DEL, line or paragraph separator in a UTF-8 mailbox name.
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _utf8_name(raw: bytes) -> str:
    """RFC 6855 §3: a mailbox name in UTF-8, in Unicode normalization form C (RFC 5198 §2): a name
    in another form would be a second spelling of the same folder."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandFailed("mailbox name is not UTF-8 (RFC 6855 §3)", "CANNOT") from None
    if _NOT_IN_NAMES.search(name):
        raise CommandFailed("mailbox names may not hold control characters (RFC 6855 §3)", "CANNOT")
    if not unicodedata.is_normalized("NFC", name):
        raise CommandFailed("mailbox name is not in Unicode normalization form C (RFC 5198 §2)", "CANNOT")
    return INBOX if name.upper() == INBOX else name


def name_to_wire(name: str, *, utf8: bool = False) -> bytes:
    """A folder name as a mailbox in a response: modified UTF-7, or UTF-8 once enabled (RFC 6855 §3)."""
    return string(name.encode("utf-8") if utf8 else encode_mutf7(name).encode("ascii"))


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


def _path(maildir: Maildir, name: str) -> Path | None:
    try:
        return maildir.folder_dir(name)
    except MailboxNameError:
        return None


def _octets(path: Path) -> int:
    return len(os.fsencode(path.name))


def _directory(maildir: Maildir, name: str) -> Path | None:
    """The folder's directory, or None when no folder can have the name."""
    path = _path(maildir, name)
    # A longer name is refused by the file system (ENAMETOOLONG), which Path.is_dir does not
    # take for "no such folder".
    return path if path is not None and _octets(path) <= NAME_MAX else None


def folder_dir(maildir: Maildir, name: str) -> Path:
    path = _directory(maildir, name)
    if path is None:
        raise CommandFailed(f"no folder can be named {name!r}", "CANNOT")
    return path


def exists(maildir: Maildir, name: str) -> bool:
    path = _directory(maildir, name)
    return path is not None and (path / "cur").is_dir()


def count(maildir: Maildir) -> int:
    """The account's folders but INBOX: its dot-directories, whatever state each is in, since each
    costs its inodes all the same. Directory entries only, no stat of each."""
    try:
        with os.scandir(maildir.root) as entries:
            return sum(1 for e in entries if e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return 0


def check_name(maildir: Maildir, name: str, limits: FolderLimits) -> None:
    """NO [LIMIT] (RFC 9051 §7.1) for a new name deeper or longer than the policy allows."""
    levels = name.count(DELIMITER) + 1
    if levels > limits.max_folder_depth:
        raise CommandFailed(
            f"folders may be nested at most {limits.max_folder_depth} levels deep; {name!r} has {levels}",
            "LIMIT",
        )
    path = _path(maildir, name)
    if path is None:
        raise CommandFailed(f"invalid mailbox name {name!r}", "CANNOT")
    octets = _octets(path)
    if octets > limits.max_folder_name:
        # The directory name is "." and the name in modified UTF-7: one octet more than the name.
        raise CommandFailed(
            f"mailbox name too long: at most {limits.max_folder_name - 1} octets in modified UTF-7, "
            f"this one has {octets - 1}",
            "LIMIT",
        )


def _check_room(maildir: Maildir, new: int, limits: FolderLimits) -> None:
    if new and count(maildir) + new > limits.max_folders:
        raise CommandFailed(
            f"an account may have at most {limits.max_folders} folders; delete some before creating more",
            "LIMIT",
        )


def _lookalike(name: str) -> str:
    """What a name looks like, for telling whether one passes for another: compatibility forms,
    case, accents and invisible characters aside, and the dotless ı as i ("KANIT", "kanit" and
    "Kanıt " all look like "Kanıt")."""
    decomposed = unicodedata.normalize("NFKD", name).casefold().replace("ı", "i")
    kept = "".join(c for c in decomposed if unicodedata.category(c) not in ("Mn", "Cf"))
    return DELIMITER.join(level.strip() for level in kept.split(DELIMITER))


def within(name: str, folder: str) -> bool:
    """Whether `name` is, or looks like, `folder` or one of its inferiors."""
    mine, theirs = _lookalike(name), _lookalike(folder)
    return mine == theirs or mine.startswith(theirs + DELIMITER)


@dataclass(frozen=True)
class ListEntry:
    name: str
    attributes: tuple[str, ...]
    # RFC 5258 §3.5 CHILDINFO ("SUBSCRIBED"): returned for a subscribed descendant the pattern
    # did not reach.
    childinfo: bool = False

    @property
    def selectable(self) -> bool:
        return not any(a in ("\\Noselect", "\\NonExistent") for a in self.attributes)


@dataclass(frozen=True)
class ListOptions:
    """What a LIST or LSUB asks for beyond names matching its patterns (RFC 5258 §3, RFC 6154 §3).

    `subscribed` selects subscribed names instead of existing folders, `recursive` (RECURSIVEMATCH)
    adds the parents of subscribed names the patterns do not reach, `special_use` selects the
    special-use folders; `return_subscribed` marks subscribed names; `lsub` answers LSUB.
    """

    subscribed: bool = False
    recursive: bool = False
    special_use: bool = False
    return_subscribed: bool = False
    lsub: bool = False


# RFC 3501 §6.3.8 leaves the pattern's length open; one far longer than any folder name can only
# cost time.
MAX_PATTERN = 1024


def _fold(ch: str) -> str:
    # INBOX is case-insensitive (RFC 3501 §5.1), and INBOX is ASCII: folding ASCII suffices.
    return ch.lower() if ch.isascii() else ch


def _collapse(pattern: str) -> str:
    """The pattern with each run of wildcards as one: "*" if the run holds a "*", else "%"."""
    out: list[str] = []
    for ch in pattern:
        if ch in "*%" and out and out[-1] in "*%":
            if ch == "*":
                out[-1] = "*"
            continue
        out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class WildcardPattern:
    """A LIST pattern (RFC 3501 §6.3.8, RFC 9051 §6.3.9): "*" matches anything, "%" anything but
    the hierarchy delimiter, every other character itself.

    Matched as a set of states, one bit per pattern position (bit i: the first i characters of the
    pattern matched the name so far), all advanced at once for each character of the name. That is
    O(len(name) × len(pattern) / word size) whatever the pattern, where a backtracking regular
    expression took exponential time for "*%*%…x" and froze the event loop.
    """

    literal_positions: dict[str, int]
    star_positions: int
    percent_positions: int
    accept: int
    ignore_case: bool

    @classmethod
    def compile(cls, pattern: str, *, ignore_case: bool = False) -> WildcardPattern:
        # Collapsing the runs leaves no two wildcards side by side, so the positions a state can
        # reach without consuming a character are at most one further: one shift in `matches`.
        pattern = _collapse(pattern)
        literals: dict[str, int] = {}
        star = percent = 0
        for i, ch in enumerate(pattern):
            if ch == "*":
                star |= 1 << i
            elif ch == "%":
                percent |= 1 << i
            else:
                key = _fold(ch) if ignore_case else ch
                literals[key] = literals.get(key, 0) | 1 << i
        return cls(literals, star, percent, 1 << len(pattern), ignore_case)

    def matches(self, name: str) -> bool:
        wild = self.star_positions | self.percent_positions
        states = 1 | (1 & wild) << 1
        for ch in name:
            key = _fold(ch) if self.ignore_case else ch
            # A literal position moves on past a matching character; a wildcard stays where it is.
            step = (states & self.literal_positions.get(key, 0)) << 1
            step |= states & self.star_positions
            if ch != DELIMITER:
                step |= states & self.percent_positions
            if not step:
                return False
            states = step | (step & wild) << 1
        return bool(states & self.accept)


def _superiors(names: Iterable[str]) -> set[str]:
    """Every proper superior of `names`: "A.B.C" gives "A" and "A.B"."""
    out: set[str] = set()
    for name in names:
        parts = name.split(DELIMITER)
        out.update(DELIMITER.join(parts[:i]) for i in range(1, len(parts)))
    return out


def list_folders(
    maildir: Maildir,
    reference: str,
    patterns: str | Sequence[str],
    special_use: dict[str, str],
    options: ListOptions = ListOptions(),
    subscribed: Sequence[str] = (),
) -> list[ListEntry]:
    """LIST/LSUB results, each name once, INBOX first.

    Parents that exist only as a prefix of deeper folders are \\Noselect (RFC 3501 §6.3.8); a
    subscribed name without a folder is \\NonExistent (RFC 5258 §3), or \\Noselect in LSUB; LSUB
    with a pattern ending in "%" gives the superiors of deeper subscribed names, \\Noselect unless
    subscribed themselves (RFC 3501 §6.3.9).
    """
    if isinstance(patterns, str):
        patterns = (patterns,)
    fulls = [reference + p for p in patterns]
    if any(len(full) > MAX_PATTERN for full in fulls):
        raise BadCommand(f"reference and pattern together may not exceed {MAX_PATTERN} characters")
    matchers = [
        (WildcardPattern.compile(full), WildcardPattern.compile(full, ignore_case=True)) for full in fulls
    ]

    def matches(name: str) -> bool:
        return any((folded if name == INBOX else exact).matches(name) for exact, folded in matchers)

    existing = set(maildir.folders())
    # The hierarchy holds every prefix of its names, so a name has children exactly when it is the
    # parent of one of them: one pass, not a scan of all names for each.
    hierarchy = existing | _superiors(existing)
    parents = {n.rsplit(DELIMITER, 1)[0] for n in hierarchy if DELIMITER in n}
    subs = set(subscribed)
    # RFC 5258 §3 RECURSIVEMATCH: names with a subscribed descendant the patterns do not reach.
    holding = _superiors(n for n in subs if not matches(n)) if options.recursive else set()
    if options.lsub:
        candidates = subs | _superiors(subs)
    elif options.subscribed:
        candidates = subs | holding
    else:
        candidates = hierarchy
    levels = any(full.endswith("%") for full in fulls)
    entries: list[ListEntry] = []
    for name in sorted(candidates, key=lambda n: (n != INBOX, n)):
        if not matches(name):
            continue
        exists = name in existing
        if options.lsub:
            if name in subs:
                entries.append(ListEntry(name, () if exists else ("\\Noselect",)))
            elif levels:
                entries.append(ListEntry(name, ("\\Noselect",)))
            continue
        use = special_use.get(name) if exists else None
        if options.special_use and use is None:
            continue
        attrs: list[str] = []
        if not exists:
            attrs.append("\\NonExistent" if options.subscribed else "\\Noselect")
        if (options.subscribed or options.return_subscribed) and name in subs:
            attrs.append("\\Subscribed")
        # RFC 3348 §4 / RFC 5258 §4 child information.
        if name in parents:
            attrs.append("\\HasChildren")
        elif exists:
            attrs.append("\\HasNoChildren")
        if use is not None:
            attrs.append(use)
        entries.append(ListEntry(name, tuple(attrs), childinfo=name in holding))
    return entries


def _children(maildir: Maildir, name: str) -> list[str]:
    return [n for n in maildir.folders() if n.startswith(name + DELIMITER)]


def _levels(name: str) -> list[str]:
    """The name and its superiors, outermost first: "A.B" gives "A", "A.B"."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts) + 1)]


def _missing(maildir: Maildir, names: list[str]) -> int:
    """How many of `names` have no directory yet: the folders making them would add."""
    return sum(1 for n in names if not maildir.folder_dir(n).exists())


def create(maildir: Maildir, name: str, limits: FolderLimits) -> None:
    name = valid_new_name(name)
    if name == INBOX or exists(maildir, name):
        raise CommandFailed("mailbox already exists", "ALREADYEXISTS")
    check_name(maildir, name, limits)
    # RFC 3501 §6.3.3: superior names needed for the new one are created too.
    levels = _levels(name)
    _check_room(maildir, _missing(maildir, levels), limits)
    for level in levels:
        maildir.create(level)


def delete(maildir: Maildir, name: str) -> tuple[Path, Path]:
    """Take a folder out of the account; its inferiors stay (RFC 3501 §6.3.4). One rename moves its
    directory into the account's tmp/, where no reader looks, so it is gone at once and whole;
    the caller removes it from there (`remove`), a folder full of messages taking a while.
    Returns the folder's directory and where it went."""
    if name == INBOX:
        raise CommandFailed("INBOX cannot be deleted", "CANNOT")
    if not exists(maildir, name):
        raise CommandFailed("no such mailbox", "NONEXISTENT")
    path = maildir.folder_dir(name)
    tmp = maildir.root / "tmp"
    tmp.mkdir(exist_ok=True)
    doomed = Path(tempfile.mkdtemp(prefix="deleted-", dir=tmp))
    os.rename(path, doomed / "folder")
    return path, doomed


def remove(doomed: Path) -> None:
    shutil.rmtree(doomed)


def rename(maildir: Maildir, old: str, new: str, limits: FolderLimits) -> list[tuple[Path, Path]]:
    """Rename a folder and its inferiors (RFC 3501 §6.3.5). Returns the (old, new) directories moved."""
    new = valid_new_name(new)
    if not exists(maildir, old):
        raise CommandFailed("no such mailbox", "NONEXISTENT")
    if new == INBOX or exists(maildir, new):
        raise CommandFailed("target mailbox already exists", "ALREADYEXISTS")
    if new.startswith(old + DELIMITER):
        raise CommandFailed("a mailbox cannot be moved below itself", "CANNOT")
    parents = _levels(new)[:-1]
    if old == INBOX:
        check_name(maildir, new, limits)
        # The messages move into a new folder.
        _check_room(maildir, _missing(maildir, [*parents, new]), limits)
        return _rename_inbox(maildir, parents, new)
    moves: list[tuple[Path, Path]] = []
    for name in [old, *_children(maildir, old)]:
        target_name = new + name[len(old) :]
        check_name(maildir, target_name, limits)
        src, dst = maildir.folder_dir(name), maildir.folder_dir(target_name)
        if dst.exists():
            raise CommandFailed(f"mailbox {target_name!r} already exists", "ALREADYEXISTS")
        moves.append((src, dst))
    # The moved folders take their places; only superiors of the new name are added.
    _check_room(maildir, _missing(maildir, parents), limits)
    for parent in parents:
        if not exists(maildir, parent):
            maildir.create(parent)
    for src, dst in moves:
        os.rename(src, dst)
    return moves


def _rename_inbox(maildir: Maildir, parents: list[str], new: str) -> list[tuple[Path, Path]]:
    # RFC 3501 §6.3.5: renaming INBOX moves its messages into the new folder and leaves INBOX empty.
    for parent in parents:
        if not exists(maildir, parent):
            maildir.create(parent)
    target = maildir.create(new)
    source = maildir.folder_dir(INBOX)
    for sub in ("cur", "new"):
        for entry in os.scandir(source / sub):
            if not entry.name.startswith("."):
                os.rename(entry.path, target / sub / entry.name)
    return []
