"""REM-DigestValue of a dispatch, recomputed from its bytes (EVIDENCE.md, "Digest of the original").

The dispatch may come from another provider, so nothing about its layout is assumed beyond MIME:
multiparts are walked by their boundaries, and the original is the message/rfc822 part marked
`REM-Section-Type: rem_message/original` (else the first message/rfc822 part found). A dispatch
whose original is not reachable through multiparts (say, inside opaque CMS) gives None.
"""

from __future__ import annotations

import base64
import hashlib

from kepmta.message.buffer import Buffer
from kepmta.message.content import parse_content_type
from kepmta.message.header import read_header
from kepmta.message.multipart import MultipartError, strict_parts

__all__ = ["original_digest", "original_range"]

# Real dispatches nest three deep; the limit only stops a hostile message from recursing forever.
_MAX_DEPTH = 16


def original_digest(dispatch: bytes) -> str | None:
    """Base64 SHA-256 over the attached original: its part body, up to the line break before the
    next delimiter (RFC 2046 §5.1.1 makes that line break part of the delimiter)."""
    found = original_range(dispatch)
    if found is None:
        return None
    return base64.b64encode(hashlib.sha256(dispatch[found[0] : found[1]]).digest()).decode("ascii")


def original_range(dispatch: Buffer) -> tuple[int, int] | None:
    """The [start, end) offsets of the bytes `original_digest` covers, or None."""
    found: list[tuple[bool, int, int]] = []
    _collect(dispatch, 0, len(dispatch), 0, found)
    if not found:
        return None
    _, start, end = next((c for c in found if c[0]), found[0])
    return start, end


def _collect(buf: Buffer, start: int, end: int, depth: int, found: list[tuple[bool, int, int]]) -> None:
    """Append (marked as the REM original, body start, body end) for each message/rfc822 part."""
    head = read_header(buf, start, end)
    ctype = parse_content_type(head.get("Content-Type"))
    if ctype.maintype != "multipart" or depth > _MAX_DEPTH:
        return
    boundary = ctype.boundary
    if not boundary:
        return
    try:
        parts = strict_parts(buf, head.body_start, end, boundary)
    except MultipartError:
        return
    for part_start, part_end in parts:
        part = read_header(buf, part_start, part_end)
        if parse_content_type(part.get("Content-Type")).mime_type == "message/rfc822":
            section = (part.get("REM-Section-Type") or "").strip().lower()
            found.append((section == "rem_message/original", part.body_start, part_end))
        else:
            _collect(buf, part_start, part_end, depth + 1, found)
