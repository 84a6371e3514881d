"""SEARCH result options and the saved result: ESEARCH (RFC 4731) and SEARCHRES (RFC 5182).

`SEARCH RETURN (MIN MAX ALL COUNT SAVE) criteria` answers with one ESEARCH response instead of the
list of every number, and SAVE keeps the result (as UIDs) for "$" in later commands of the same
selection. IMAP4rev2 (RFC 9051 §6.4.4) answers every SEARCH this way, RETURN () standing for ALL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kepmta.imap import search
from kepmta.imap.protocol import Atom, BadCommand, SequenceSet, Token, format_uid_set

_OPTIONS = ("MIN", "MAX", "ALL", "COUNT", "SAVE")


@dataclass(frozen=True)
class ReturnOptions:
    min: bool = False
    max: bool = False
    all: bool = False
    count: bool = False
    save: bool = False

    @property
    def answered(self) -> bool:
        """RFC 5182 §2.4: SAVE alone saves the result without an ESEARCH response."""
        return self.min or self.max or self.all or self.count


# RFC 4731 §3.1: RETURN () is RETURN (ALL).
ALL = ReturnOptions(all=True)


def parse_return(tokens: Sequence[Token]) -> ReturnOptions:
    """The items of `RETURN (...)`; an unknown one is a BAD (RFC 4731 §3.1)."""
    names: set[str] = set()
    for tok in tokens:
        if not isinstance(tok, Atom) or tok.section is not None or tok.value.upper() not in _OPTIONS:
            raise BadCommand("SEARCH RETURN options are MIN, MAX, ALL, COUNT and SAVE")
        names.add(tok.value.upper())
    if not names:
        return ALL
    return ReturnOptions(*(name in names for name in _OPTIONS))


def response(
    tag: str, numbers: Sequence[int], options: ReturnOptions, *, uid: bool, modseq: int | None
) -> bytes:
    """The ESEARCH response (RFC 4731 §3.2) for the sorted `numbers` found; MIN, MAX and ALL are
    left out when nothing matched, COUNT never. `modseq` is RFC 7162 §3.1.5's highest
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
    if modseq is not None and numbers:
        parts.append(f"MODSEQ {modseq}")
    return " ".join(parts).encode()


def to_save(uids: Sequence[int], options: ReturnOptions) -> list[int]:
    """RFC 5182 §2.4: with MIN and/or MAX and neither ALL nor COUNT, only those are saved."""
    if not uids or options.all or options.count or not (options.min or options.max):
        return list(uids)
    kept = {uids[0]} if options.min else set()
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
