"""CONDSTORE and QRESYNC (RFC 7162): the command parameters and modifiers, and their responses.

The modification sequences themselves live with the messages (`mailbox.FolderStore`); this module
reads what a client asks for in SELECT/EXAMINE, FETCH and STORE and formats what is answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from kepmta.imap.partial import Partial, parse_partial
from kepmta.imap.protocol import Args, Atom, BadCommand, ParenList, SequenceSet, Token, format_uid_set

CONDSTORE = "CONDSTORE"
QRESYNC = "QRESYNC"
# RFC 7162 §7: mod-sequence-value is 1*DIGIT below 2^63.
_MAX_MODSEQ = (1 << 63) - 1


def mod_sequence(text: str, *, zero: bool = False) -> int:
    """A mod-sequence-value, or mod-sequence-valzer when `zero` allows 0 (RFC 7162 §7)."""
    if not text.isdigit() or len(text) > 19:
        raise BadCommand(f"invalid mod-sequence {text!r}")
    value = int(text)
    if value > _MAX_MODSEQ or (value == 0 and not zero):
        raise BadCommand(f"mod-sequence {text} out of range")
    return value


def _atom(tok: Token, what: str) -> str:
    if not isinstance(tok, Atom) or tok.section is not None:
        raise BadCommand(f"expected {what}")
    return tok.value


@dataclass(frozen=True)
class Qresync:
    """SELECT's QRESYNC parameter (RFC 7162 §3.2.5): what the client remembers of the mailbox."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None


@dataclass(frozen=True)
class SelectParams:
    condstore: bool = False
    qresync: Qresync | None = None


def parse_select_params(args: Args) -> SelectParams:
    """The optional parenthesised parameters after SELECT/EXAMINE's mailbox name (RFC 4466 §2.1)."""
    if not args.more():
        return SelectParams()
    items = args.paren_list("select parameters")
    args.end()
    condstore = False
    qresync: Qresync | None = None
    i = 0
    while i < len(items):
        name = _atom(items[i], "select parameter").upper()
        if name == CONDSTORE:
            condstore = True
            i += 1
        elif name == QRESYNC:
            if i + 1 >= len(items) or not isinstance(items[i + 1], ParenList):
                raise BadCommand("QRESYNC needs (uidvalidity modseq [known-uids [seq-match-data]])")
            qresync = _qresync(items[i + 1])
            i += 2
        else:
            raise BadCommand(f"unknown select parameter {name}")
    return SelectParams(condstore, qresync)


def _qresync(tok: Token) -> Qresync:
    assert isinstance(tok, ParenList)
    values = tok.items
    if not 2 <= len(values) <= 4:
        raise BadCommand("QRESYNC needs (uidvalidity modseq [known-uids [seq-match-data]])")
    validity_text = _atom(values[0], "UIDVALIDITY")
    # RFC 7162 §7, RFC 9051 §9: uidvalidity is nz-number, ten digits at most.
    if not validity_text.isdigit() or len(validity_text) > 10 or not 0 < int(validity_text) <= 0xFFFFFFFF:
        raise BadCommand("invalid UIDVALIDITY in QRESYNC")
    modseq = mod_sequence(_atom(values[1], "mod-sequence"))
    known: SequenceSet | None = None
    if len(values) >= 3:
        if isinstance(values[2], ParenList):
            # Only seq-match-data, no known-uids; it merely narrows what we would report anyway.
            if len(values) != 3:
                raise BadCommand("unexpected data after the sequence match list")
        else:
            known = SequenceSet.parse(_atom(values[2], "known UIDs"))
            if len(values) == 4 and not isinstance(values[3], ParenList):
                raise BadCommand("sequence match data must be parenthesised")
    return Qresync(int(validity_text), modseq, known)


@dataclass(frozen=True)
class FetchModifiers:
    """FETCH's (CHANGEDSINCE n [VANISHED]) (RFC 7162 §3.1.4.1, §3.2.6) and (PARTIAL range)
    (RFC 9394 §3.3)."""

    changedsince: int | None = None
    vanished: bool = False
    partial: Partial | None = None


def parse_fetch_modifiers(args: Args) -> FetchModifiers:
    if not args.more():
        return FetchModifiers()
    items = args.paren_list("FETCH modifiers")
    args.end()
    changedsince: int | None = None
    vanished = False
    partial: Partial | None = None
    i = 0
    while i < len(items):
        name = _atom(items[i], "FETCH modifier").upper()
        if name == "CHANGEDSINCE" and i + 1 < len(items):
            changedsince = mod_sequence(_atom(items[i + 1], "mod-sequence"), zero=True)
            i += 2
        elif name == "PARTIAL" and partial is None:
            partial = parse_partial(items[i + 1] if i + 1 < len(items) else None)
            i += 2
        elif name == "VANISHED":
            vanished = True
            i += 1
        else:
            raise BadCommand(f"unknown FETCH modifier {name}")
    if vanished and changedsince is None:
        # RFC 7162 §3.2.6: VANISHED only makes sense together with CHANGEDSINCE.
        raise BadCommand("VANISHED requires CHANGEDSINCE")
    return FetchModifiers(changedsince, vanished, partial)


def parse_store_modifiers(args: Args) -> int | None:
    """STORE's optional (UNCHANGEDSINCE n) before the action (RFC 7162 §3.1.3)."""
    if not isinstance(args.peek(), ParenList):
        return None
    items = args.paren_list("STORE modifiers")
    if len(items) != 2 or _atom(items[0], "STORE modifier").upper() != "UNCHANGEDSINCE":
        raise BadCommand("the only STORE modifier is (UNCHANGEDSINCE mod-sequence)")
    return mod_sequence(_atom(items[1], "mod-sequence"), zero=True)


def vanished_earlier(uids: list[int]) -> bytes | None:
    """RFC 7162 §3.2.10 `* VANISHED (EARLIER) uids`, or None when nothing vanished."""
    if not uids:
        return None
    return b"* VANISHED (EARLIER) " + format_uid_set(uids).encode("ascii")


def modseq_item(modseq: int) -> bytes:
    return b"MODSEQ (%d)" % modseq
