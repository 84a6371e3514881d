"""The numbers that identify a KEP account's holder: T.C. kimlik no and MERSİS number.

A T.C. kimlik no has public check digits (Nüfus ve Vatandaşlık İşleri's rule, used by every form
that takes one): 11 digits, the first not 0; the 10th is ((d1+d3+d5+d7+d9)·7 − (d2+d4+d6+d8))
mod 10, the 11th is (d1+…+d10) mod 10. A MERSİS number is 16 digits; no check rule for it is
published (the Ministry of Trade and TOBB assign them), so only that form is checked.
"""

from __future__ import annotations

import re

_NATIONAL_ID = re.compile(r"[1-9][0-9]{10}")
_MERSIS = re.compile(r"[0-9]{16}")


class IdentityNumberError(ValueError):
    """Not a well-formed T.C. kimlik no or MERSİS number; the message says why in one line."""


def national_id_check_digits(first_nine: str) -> str:
    """The 10th and 11th digits that complete the first nine of a T.C. kimlik no."""
    d = [int(c) for c in first_nine]
    tenth = ((d[0] + d[2] + d[4] + d[6] + d[8]) * 7 - (d[1] + d[3] + d[5] + d[7])) % 10
    eleventh = (sum(d) + tenth) % 10
    return f"{tenth}{eleventh}"


def is_national_id(value: str) -> bool:
    return _NATIONAL_ID.fullmatch(value) is not None and value[9:] == national_id_check_digits(value[:9])


def check_national_id(value: str) -> str:
    """`value` if it is a T.C. kimlik no, else IdentityNumberError."""
    if not (value.isascii() and value.isdigit() and len(value) == 11):
        raise IdentityNumberError(f"T.C. kimlik no must be 11 digits, got {value!r}")
    if value.startswith("0"):
        raise IdentityNumberError(f"T.C. kimlik no never starts with 0, got {value!r}")
    if not is_national_id(value):
        raise IdentityNumberError(f"{value} is not a T.C. kimlik no: its check digits (10th, 11th) are wrong")
    return value


def check_mersis(value: str) -> str:
    """`value` if it has the form of a MERSİS number (16 digits), else IdentityNumberError."""
    if _MERSIS.fullmatch(value) is None:
        raise IdentityNumberError(f"MERSİS number must be 16 digits, got {value!r}")
    return value
