"""SEARCH result options and the saved result: ESEARCH (RFC 4731), SEARCHRES (RFC 5182) and PARTIAL
(RFC 9394).

`SEARCH RETURN (MIN MAX ALL COUNT SAVE PARTIAL range) criteria` answers with one ESEARCH response
instead of the list of every number, PARTIAL giving one page of the result, and SAVE keeps the result
(as UIDs) for "$" in later commands of the same selection. IMAP4rev2 (RFC 9051 §6.4.4) answers every
SEARCH this way, RETURN () standing for ALL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kepmta.imap import search
from kepmta.imap.partial import Partial, parse_partial
from kepmta.imap.protocol import Atom, BadCommand, SequenceSet, Token, format_uid_set

_OPTIONS = ("MIN", "MAX", "ALL", "COUNT", "SAVE")
_OPTION_NAMES = "MIN, MAX, ALL, COUNT, SAVE and PARTIAL"


@dataclass(frozen=True)
class ReturnOptions:
    min: bool = False
    max: bool = False
    all: bool = False
    count: bool = False
    save: bool = False
    partial: Partial | None = None

    @property
    def answered(self) -> bool:
        """RFC 5182 §2.4: SAVE alone saves the result without an ESEARCH response."""
        return self.min or self.max or self.all or self.count or self.partial is not None


# RFC 4731 §3.1: RETURN () is RETURN (ALL).
ALL = ReturnOptions(all=True)


def parse_return(tokens: Sequence[Token]) -> ReturnOptions:
    """The items of `RETURN (...)`; an unknown one is a BAD (RFC 4731 §3.1), and so are PARTIAL
    with ALL, or either given twice (RFC 9394 §3.1)."""
    names: set[str] = set()
    partial: Partial | None = None
    items = iter(tokens)
    for tok in items:
        name = _atom(tok)
        if name == "PARTIAL":
            if partial is not None:
                raise BadCommand("SEARCH RETURN takes PARTIAL at most once")
            partial = parse_partial(next(items, None))
        elif name in _OPTIONS:
            if name == "ALL" and "ALL" in names:
                raise BadCommand("SEARCH RETURN takes ALL at most once")
            names.add(name)
        else:
            raise BadCommand(f"SEARCH RETURN options are {_OPTION_NAMES}")
    if partial is not None and "ALL" in names:
        raise BadCommand("SEARCH RETURN cannot take both PARTIAL and ALL: ask for one or the other")
    if not names and partial is None:
        return ALL
    return ReturnOptions(
        min="MIN" in names,
        max="MAX" in names,
        all="ALL" in names,
        count="COUNT" in names,
        save="SAVE" in names,
        partial=partial,
    )


def _atom(tok: Token | None) -> str:
    if not isinstance(tok, Atom) or tok.section is not None:
        raise BadCommand(f"SEARCH RETURN options are {_OPTION_NAMES}")
    return tok.value.upper()


def response(
    tag: str, numbers: Sequence[int], options: ReturnOptions, *, uid: bool, modseq: int | None
) -> bytes:
    """The ESEARCH response (RFC 4731 §3.2) for the sorted `numbers` found; MIN, MAX and ALL are
    left out when nothing matched, COUNT and PARTIAL never. `modseq` is RFC 7162 §3.1.5's highest
    mod-sequence of the messages found, when the criteria asked for one."""
    quoted = tag.replace("\\", "\\\\").replace('"', '\\"')
    parts = [f'* ESEARCH (TAG "{quoted}")']
    if uid:
        parts.append("UID")
    if numbers:
        if options.min:
            parts.append(f"MIN {numbers[0]}")
        if options.max:
            parts.append(f"MAX {numbers[-1]}")
        if options.all:
            parts.append(f"ALL {format_uid_set(numbers)}")
    if options.count:
        parts.append(f"COUNT {len(numbers)}")
    if options.partial is not None:
        # RFC 9394 §3.1: the numbers in that window of the result, NIL when it holds none.
        page = numbers[options.partial.window(len(numbers))]
        parts.append(f"PARTIAL ({options.partial} {format_uid_set(page) if page else 'NIL'})")
    if modseq is not None and numbers:
        parts.append(f"MODSEQ {modseq}")
    return " ".join(parts).encode()


def to_save(uids: Sequence[int], options: ReturnOptions) -> list[int]:
    """RFC 5182 §2.4: with MIN and/or MAX and neither ALL nor COUNT, only those are saved; RFC 9394
    §3.2: with PARTIAL and without COUNT, the window's UIDs, and MIN's and MAX's when asked for."""
    if not uids or options.all or options.count:
        return list(uids)
    if options.partial is None and not (options.min or options.max):
        return list(uids)
    kept = set(uids[options.partial.window(len(uids))]) if options.partial is not None else set()
    if options.min:
        kept.add(uids[0])
    if options.max:
        kept.add(uids[-1])
    return sorted(kept)


def resolve(key: search.Key, saved: Sequence[int]) -> search.Key:
    """The criteria with "$" (RFC 5182 §2.1) replaced by the saved UIDs."""
    if isinstance(key, search.SetKey) and key.numbers.saved:
        return search.SetKey(SequenceSet.of(saved), uid=True)
    if isinstance(key, search.NotKey):
        return search.NotKey(resolve(key.key, saved))
    if isinstance(key, search.OrKey):
        return search.OrKey(resolve(key.left, saved), resolve(key.right, saved))
    if isinstance(key, search.AndKey):
        return search.AndKey(tuple(resolve(k, saved) for k in key.keys))
    return key
