"""KEP addresses: the one parser every other module uses, so no path trick gets past it."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A conservative dot-atom (RFC 5322 §3.4.1) in lower-case ASCII: KEP addresses are transliterated
# to ASCII, and this shape can never name a path outside a mail folder.
_LOCAL = re.compile(r"[a-z0-9](?:[a-z0-9_+-]|\.(?!\.))*(?<!\.)")
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


class AddressError(ValueError):
    """Not a well-formed KEP address."""


@dataclass(frozen=True)
class Address:
    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse(text: str) -> Address:
    """The normalised (lower-case) address in `text`, which may be wrapped in <>."""
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    value = value.lower()
    local, sep, domain = value.rpartition("@")
    if not sep or len(value) > 254 or len(local) > 64:
        raise AddressError(f"not an e-mail address: {text!r}")
    if not _LOCAL.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        raise AddressError(f"not a valid KEP address: {text!r}")
    return Address(local, domain)
