"""What a client sent, fit for a log line: a bounded prefix, escaped, with the full length.

A log must not grow by what a stranger types (a 100 MB user name once became a 400 MB log), and a
value with line breaks or terminal escapes must not forge or garble the lines around it.
"""

from __future__ import annotations

PREFIX = 64


def excerpt(value: str | bytes, limit: int = PREFIX) -> str:
    """`repr` of at most `limit` characters (octets) of `value`; a cut value says how long it was."""
    if len(value) <= limit:
        return repr(value)
    unit = "octets" if isinstance(value, bytes) else "characters"
    return f"{value[:limit]!r}... ({len(value)} {unit})"
