"""PARTIAL's range of result positions (RFC 9394): for SEARCH's return option and FETCH's modifier."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kepmta.imap.protocol import Atom, BadCommand, Token

# RFC 9394 §4: partial-range-first = nz-number ":" nz-number, partial-range-last = MINUS nz-number
# ":" MINUS nz-number.
_RANGE = re.compile(r"(-?)([1-9][0-9]*):(-?)([1-9][0-9]*)")
# RFC 3501 §9: nz-number is a non-zero unsigned 32-bit number, at most ten digits.
_MAX_NZ = 0xFFFFFFFF
_MAX_DIGITS = len(str(_MAX_NZ))


@dataclass(frozen=True)
class Partial:
    """RFC 9394 §3.1: the positions `first:last` in the result, the lowest-numbered match being 1;
    negative positions count from the highest, -1 being the last. 5:1 is 1:5, -5:-1 is -1:-5."""

    first: int
    last: int

    def window(self, count: int) -> slice:
        """Where the range falls in a result of `count` numbers: empty when wholly beyond it, cut
        short where it runs past either end."""
        near, far = sorted((abs(self.first), abs(self.last)))
        if self.first > 0:
            return slice(min(near - 1, count), min(far, count))
        return slice(max(count - far, 0), max(count - near + 1, 0))

    def __str__(self) -> str:
        # RFC 9394 §3.1: the PARTIAL return data carries the range as requested.
        return f"{self.first}:{self.last}"


def parse_partial(tok: Token | None) -> Partial:
    """RFC 9394 §4: PARTIAL's range, both ends from 1 or both from -1, each at most 4294967295."""
    text = tok.value if isinstance(tok, Atom) and tok.section is None else ""
    m = _RANGE.fullmatch(text)
    if m is None or m.group(1) != m.group(3):
        raise BadCommand(
            "PARTIAL takes a range of result positions, first:last counted from 1 or -first:-last"
            " counted from -1 (the last), without 0 or *"
        )
    ends = (m.group(2), m.group(4))
    # The length first, so that no long run of digits is ever converted.
    if any(len(end) > _MAX_DIGITS or int(end) > _MAX_NZ for end in ends):
        raise BadCommand(f"PARTIAL range positions are at most {_MAX_NZ}")
    first, last = (int(end) for end in ends)
    sign = -1 if m.group(1) else 1
    return Partial(sign * first, sign * last)
