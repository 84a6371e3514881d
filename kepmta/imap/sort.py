"""SORT (RFC 5256 §3): ordering the messages a search found by one or more criteria.

Keys that only need the index (ARRIVAL, SIZE) need nothing else; the others come from each message's
summary (`imap/summary.py`), worked out once from its header. Strings compare under i;ascii-casemap
(RFC 5256 §3: the default collation), which folds only the ASCII letters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from kepmta.imap.protocol import Args, Atom, BadCommand, CommandFailed
from kepmta.imap.summary import Summary
from kepmta.message.addresses import mailboxes
from kepmta.message.words import decode_words

_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})
_HEADER_KEYS = frozenset({"CC", "DATE", "FROM", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})
_CHARSETS = ("UTF-8", "US-ASCII")


@dataclass(frozen=True)
class Criterion:
    key: str
    reverse: bool


def parse_criteria(args: Args) -> tuple[Criterion, ...]:
    """`(criterion...) charset`: criteria in parentheses, then the charset of the search strings."""
    tokens = args.paren_list("sort criteria")
    out: list[Criterion] = []
    reverse = False
    for tok in tokens:
        if not isinstance(tok, Atom) or tok.section is not None:
            raise BadCommand("expected a sort criterion")
        name = tok.value.upper()
        if name == "REVERSE":
            if reverse:
                raise BadCommand("REVERSE REVERSE is not a sort criterion")
            reverse = True
            continue
        if name not in _KEYS:
            raise BadCommand(f"unknown sort criterion {tok.value!r}")
        out.append(Criterion(name, reverse))
        reverse = False
    if reverse or not out:
        raise BadCommand("sort criteria must name at least one key, REVERSE only before a key")
    charset = args.astring("charset").decode("ascii", "replace").upper()
    if charset not in _CHARSETS:
        raise CommandFailed(f"unsupported charset {charset}", "BADCHARSET (UTF-8 US-ASCII)")
    return tuple(out)


# --- base subject (RFC 5256 §2.1) ---------------------------------------------------------------------

_WSP_RUN = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:\s*\(fwd\)|\s+)$", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\]\s*"
_LEADER = re.compile(rf"^(?:{_BLOB})*(?:re|fwd?)\s*(?:{_BLOB})?:\s*", re.IGNORECASE)
_LEADING_BLOB = re.compile(rf"^{_BLOB}")
_FWD_WRAP = re.compile(r"^\[fwd:(.*)\]$", re.IGNORECASE | re.DOTALL)


def base_subject(raw: str) -> str:
    """The subject without Re:/Fwd: leaders, [blob] prefixes and (fwd) trailers, folded."""
    text = _WSP_RUN.sub(" ", decode_words(raw)).strip()
    while True:
        # Step 2: trailers.
        while True:
            stripped = _TRAILER.sub("", text)
            if stripped == text:
                break
            text = stripped
        # Steps 3 and 4, until neither changes anything.
        while True:
            before = text
            text = _LEADER.sub("", text)
            blob = _LEADING_BLOB.match(text)
            if blob and text[blob.end() :]:
                text = text[blob.end() :]
            if text == before:
                break
        # Step 5: a "[fwd: ...]" wrapper is peeled off and the whole process starts again.
        wrapped = _FWD_WRAP.match(text)
        if not wrapped:
            break
        text = wrapped.group(1).strip()
    return _ascii_casemap(text)


def _ascii_casemap(text: str) -> str:
    return "".join(c.upper() if "a" <= c <= "z" else c for c in text)


def first_mailbox(value: str | None) -> str:
    """RFC 5256 §3: the addr-mailbox (local part) of the first address, empty when there is none;
    a group's first address is its first member."""
    if value is None:
        return ""
    found = mailboxes(value)
    return _ascii_casemap(found[0].mailbox or "") if found else ""


# --- sorting ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One message to sort: sequence number, UID, and what the index knows."""

    seq: int
    uid: int
    size: int
    internal: float


def header_needed(criteria: tuple[Criterion, ...]) -> bool:
    """Whether the criteria need the messages' summaries, not just what the index holds."""
    return any(c.key in _HEADER_KEYS for c in criteria)


def _keys(item: Item, summary: Summary | None) -> dict[str, str | float]:
    if summary is None:
        # A message expunged meanwhile still sorts somewhere: by what the index knows.
        return {
            "ARRIVAL": item.internal,
            "SIZE": item.size,
            "DATE": item.internal,
            "SUBJECT": "",
            "FROM": "",
            "TO": "",
            "CC": "",
            "DISPLAYFROM": "",
            "DISPLAYTO": "",
        }
    return {
        "ARRIVAL": item.internal,
        "SIZE": item.size,
        # RFC 5256 §3 DATE: the sent date in UTC; an unparsable one falls back to INTERNALDATE.
        "DATE": item.internal if summary.sent is None else summary.sent,
        "SUBJECT": summary.sort_subject,
        "FROM": summary.sort_from,
        "TO": summary.sort_to,
        "CC": summary.sort_cc,
        "DISPLAYFROM": display(summary, "FROM"),
        "DISPLAYTO": display(summary, "TO"),
    }


def display(summary: Summary, field: str) -> str:
    """RFC 5957 §3 DISPLAYFROM/DISPLAYTO: the first address's display name, or its addr-spec when
    it has none; from the summary's decoded, case-folded field (the first of its two copies)."""
    value = next((v for name, v in summary.fields if name == field), None)
    found = mailboxes(value) if value is not None else []
    if not found:
        return ""
    first = found[0]
    return (first.name or "").strip() or first.addr_spec


def sort(criteria: tuple[Criterion, ...], items: list[Item], summaries: Mapping[int, Summary]) -> list[Item]:
    """`items` in the order the criteria give; ties keep mailbox order (RFC 5256 §3).

    `summaries` (by UID) is needed only when `header_needed`.
    """
    keys = {item.uid: _keys(item, summaries.get(item.uid)) for item in items}
    ordered = sorted(items, key=lambda i: i.seq)
    # Python's sort is stable, so sorting by the least significant key first leaves the
    # earlier keys deciding and mailbox order breaking the remaining ties.
    for criterion in reversed(criteria):

        def by(item: Item, name: str = criterion.key) -> tuple[int, str | float]:
            return _key(keys[item.uid][name])

        ordered.sort(key=by, reverse=criterion.reverse)
    return ordered


def _key(value: str | float) -> tuple[int, str | float]:
    return (0, value) if isinstance(value, float | int) else (1, value)
