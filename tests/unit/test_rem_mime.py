"""Writing MIME framing at the byte level; reading it is tested in tests/unit/test_message_*.py."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import re
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kepmta.rem.mime import (
    address_header,
    base64_lines,
    quoted_printable,
    text_header,
)


def test_base64_lines_are_76_wide_without_final_break() -> None:
    lines = base64_lines(bytes(200)).split(b"\r\n")
    assert [len(line) for line in lines] == [76, 76, 76, 40]


@pytest.mark.parametrize("text", ["Şu satır\nve bu " + "ğ" * 40, "tek satır " * 30])
def test_quoted_printable_uses_crlf(text: str) -> None:
    encoded = quoted_printable(text)
    assert b"\n" not in encoded.replace(b"\r\n", b"") and b"\r" not in encoded.replace(b"\r\n", b"")
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    assert binascii.a2b_qp(encoded).decode().replace("\r\n", "\n") == text


# -- header fields ---------------------------------------------------------------------------------

TURKISH = "çğıöşüÇĞİÖŞÜâî"
# Text as users type it: Turkish and ASCII words, spaces, tabs, line breaks, encoded-word look-alikes.
user_text = st.text(
    st.sampled_from(TURKISH) | st.sampled_from('aZ09 .,-()"\\\t\r\n=?_') | st.characters(codec="utf-8"),
    max_size=200,
)
# RFC 5322 §3.4.1 dot-atoms of the shape KEP addresses and most others have.
atoms = st.text(st.sampled_from("abcxyz0129!#$%&'*+/?^_`{|}~-"), min_size=1, max_size=12)
addr_specs = st.builds(
    lambda local, domain: ".".join(local) + "@" + ".".join(domain),
    st.lists(atoms, min_size=1, max_size=3),
    st.lists(st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True), min_size=1, max_size=3),
)


def reread(field: bytes) -> EmailMessage:
    message = email.message_from_bytes(field + b"\r\n", policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def assert_well_formed(field: bytes) -> None:
    """CRLF lines of at most 78 characters, 76 with encoded-words, none only white space, and
    encoded-words of at most 75 characters that each hold whole UTF-8 characters (RFC 5322 §2.1.1,
    §3.2.2; RFC 2047 §2, §5)."""
    text = field.decode("ascii")
    assert text.endswith("\r\n")
    lines = text[:-2].split("\r\n")
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert all(len(line) <= (76 if "=?" in line else 78) for line in lines)
    assert all(line.strip(" \t") for line in lines[1:])
    for word in re.findall(r"=\?[^?]*\?[bBqQ]\?[^?]*\?=", text):
        assert len(word) <= 75
        base64.b64decode(word[10:-2]).decode("utf-8")


@given(user_text)
@example("REM Dispatch: Sözleşme taslağı — ğüşiöç İ")
@example(" leading and trailing  ")
@example("ends in a line break\r\n")
@example("x =?utf-8?q?not_an_encoded_word?= y")
@example("a" * 100)
@example("\t")
def test_text_header_reads_back_as_the_value(value: str) -> None:
    field = text_header("Subject", value)
    assert_well_formed(field)
    assert str(reread(field)["Subject"]) == value.replace("\r", " ").replace("\n", " ")


def test_ascii_words_stay_readable() -> None:
    assert text_header("Subject", "REM Dispatch: hello") == b"Subject: REM Dispatch: hello\r\n"
    assert text_header("Subject", "REM Dispatch: Kira sözleşmesi" + " uzun metin" * 8) == (
        b"Subject: REM Dispatch: Kira =?utf-8?b?c8O2emxlxZ9tZXNp?= uzun metin uzun\r\n"
        b" metin uzun metin uzun metin uzun metin uzun metin uzun metin uzun metin\r\n"
    )
    assert address_header("Cc", [("", "ayse.kaya@kep.test"), ("Ali Yilmaz", "ali.yilmaz@kep.test")]) == (
        b"Cc: ayse.kaya@kep.test, Ali Yilmaz <ali.yilmaz@kep.test>\r\n"
    )


@given(
    st.lists(st.tuples(user_text.filter(lambda t: len(t.encode()) <= 45), addr_specs), min_size=1, max_size=4)
)
@example([("ali.yilmaz@kep.test adına", "rem-service@kep.test")])
@example([("", "a@kep.test"), ('O"Brien, J.', "b@kep.test"), ("Ayşe Kaya", "c@kep.test")])
@example([("  ", "a@kep.test"), ("back\\slash", "b@kep.test")])
def test_address_header_reads_back_as_the_mailboxes(mailboxes: list[tuple[str, str]]) -> None:
    """Display names compare with each run of white space as one space: RFC 5322 §3.2.2 gives runs
    of white space between the words of a phrase that meaning, and CPython reads a display name
    so, encoded-words included."""
    field = address_header("To", mailboxes)
    assert_well_formed(field)
    found = [(one_space(a.display_name), a.addr_spec) for a in reread(field)["To"].addresses]
    assert found == [(one_space(name), addr) for name, addr in mailboxes]


def one_space(name: str) -> str:
    """A run of white space that starts with a space or tab, as CPython reads it in a phrase."""
    return re.sub(r"[ \t]\s*", " ", name.replace("\r", " ").replace("\n", " "))


@given(st.text(st.sampled_from(TURKISH + "ab .@"), min_size=30, max_size=120))
def test_long_display_name_is_split_into_encoded_words(name: str) -> None:
    """Past one encoded-word the name takes several. RFC 2047 §6.2 readers join them without the
    white space between; CPython's phrase parser keeps it, so the RFC decoder is the judge here."""
    field = address_header("From", [(name, "rem-service@kep.test")])
    assert_well_formed(field)
    phrase = field.decode("ascii").replace("\r\n", "")[len("From:") :].rpartition(" <")[0]
    (mailbox,) = reread(field)["From"].addresses
    if "=?" in phrase:
        assert str(make_header(decode_header(phrase))) == name
    else:
        assert mailbox.display_name == name
    assert mailbox.addr_spec == "rem-service@kep.test"


@pytest.mark.parametrize("addr", ["ayşe@kep.test", '"a b"@example.com', "x@[192.0.2.1]"])
def test_unusual_addresses_still_read_back(addr: str) -> None:
    assert reread(address_header("Cc", [("", "a@kep.test"), ("", addr)]))["Cc"].addresses[1].addr_spec == addr
