"""KEP addresses: the one parser every other module uses, and the assignment rules of KEP.md.

Natural persons get `ad.soyad`, or `ad.soyad.N` when taken; legal entities their MERSİS number or
legal name, optionally followed by `.freefield`. Turkish letters are transliterated to ASCII.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

# A conservative dot-atom (RFC 5322 §3.4.1) in lower-case ASCII: KEP addresses are transliterated
# to ASCII, and this shape can never name a path outside a mail folder.
_LOCAL = re.compile(r"[a-z0-9](?:[a-z0-9_+-]|\.(?!\.))*(?<!\.)")
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
# Turkish letters without an ASCII decomposition of their own (ı, İ); the rest fold below.
_TURKISH = str.maketrans({"ı": "i", "İ": "i", "I": "i"})
_MERSIS = re.compile(r"\d{16}")


class AddressError(ValueError):
    """Not a well-formed KEP address, or no address can be made from the given names."""


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


def is_domain(text: str) -> bool:
    return _DOMAIN.fullmatch(text) is not None


def transliterate(text: str) -> str:
    """ç→c, ğ→g, ı→i, İ→i, ö→o, ş→s, ü→u (and any other accent dropped), lower-case ASCII."""
    folded = unicodedata.normalize("NFKD", text.translate(_TURKISH).lower())
    return "".join(ch for ch in folded if ord(ch) < 128)


def _word(text: str, what: str) -> str:
    """One address label from a name: letters and digits only, words run together."""
    label = re.sub(r"[^a-z0-9]", "", transliterate(text))
    if not label:
        raise AddressError(f"{what} {text!r} has no letters or digits to make an address from")
    return label


def person_locals(first_name: str, last_name: str) -> Iterator[str]:
    """Local parts to try, in order, for a natural person: ad.soyad, ad.soyad.1, ad.soyad.2, …"""
    base = f"{_word(first_name, 'first name')}.{_word(last_name, 'last name')}"
    yield base
    n = 1
    while True:
        yield f"{base}.{n}"
        n += 1


def entity_local(*, mersis: str | None = None, legal_name: str | None = None, free: str | None = None) -> str:
    """The local part of a legal entity: its MERSİS number or legal name, then `.freefield`."""
    if (mersis is None) == (legal_name is None):
        raise AddressError("an entity address comes from exactly one of its MERSİS number or legal name")
    if mersis is not None:
        if not _MERSIS.fullmatch(mersis):
            raise AddressError(f"MERSİS number must be 16 digits, got {mersis!r}")
        base = mersis
    else:
        assert legal_name is not None
        base = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", transliterate(legal_name))).strip("-")
        if not base:
            raise AddressError(f"legal name {legal_name!r} has no letters or digits to make an address from")
    if free:
        base = f"{base}.{_word(free, 'free field')}"
    if len(base) > 64:
        raise AddressError(f"the address {base!r} would be longer than 64 characters")
    return base
