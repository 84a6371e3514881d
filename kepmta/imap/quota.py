"""QUOTA (RFC 9208): one quota root, "", holding the account's STORAGE as the backend counts it.

The figures are the ones the submission policy enforces, so what a client shows is what decides
whether the user may send; IMAP only reports them and refuses storing mail past the limit.
"""

from __future__ import annotations

from kepmta.imap.protocol import CommandFailed, string

ROOT = ""
RESOURCE = "STORAGE"


def kib_used(octets: int) -> int:
    """RFC 9208 §5.1: STORAGE counts units of 1024 octets; partly used units count as used."""
    return (octets + 1023) // 1024


def kib_limit(octets: int) -> int:
    """The limit in whole units, so a client never sees room that is not there."""
    return octets // 1024


def quota_response(used: int, limit: int) -> bytes:
    """RFC 9208 §5.2 `* QUOTA "" (STORAGE used limit)`."""
    usage = b" (%s %d %d)" % (RESOURCE.encode(), kib_used(used), kib_limit(limit))
    return b"* QUOTA " + string(ROOT.encode()) + usage


def quotaroot_response(mailbox_wire: bytes) -> bytes:
    """RFC 9208 §5.3 `* QUOTAROOT mailbox ""`: every folder of the account shares the one root."""
    return b"* QUOTAROOT " + mailbox_wire + b" " + string(ROOT.encode())


def check_room(used: int, limit: int, adding: int) -> None:
    """RFC 9208 §4.3: storing `adding` octets past the limit fails with NO [OVERQUOTA]."""
    if used + adding > limit:
        raise CommandFailed(
            f"mailbox quota exceeded: {kib_used(used)} of {kib_limit(limit)} KiB in use, "
            f"{kib_used(adding)} KiB more do not fit",
            "OVERQUOTA",
        )


def require_root(root: bytes) -> None:
    name = root.decode("utf-8", "replace")
    if name != ROOT:
        raise CommandFailed(f'no quota root {name!r}; the only one is ""', "NONEXISTENT")
