"""KEP address grammar, assignment forms and Turkish transliteration."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kepmta import addresses
from kepmta.addresses import AddressError


@pytest.mark.parametrize(
    ("text", "ascii"),
    [
        ("Çağrı", "cagri"),
        ("IŞIK", "isik"),
        ("İsmail", "ismail"),
        ("Gülşen Öğüt", "gulsen ogut"),
        ("ÂLİ", "ali"),
    ],
)
def test_turkish_letters_transliterate(text: str, ascii: str) -> None:
    assert addresses.transliterate(text) == ascii


def test_person_addresses_count_up_when_taken() -> None:
    got = list(itertools.islice(addresses.person_locals("Ayşe Nur", "Kaya"), 4))
    assert got == ["aysenur.kaya", "aysenur.kaya.1", "aysenur.kaya.2", "aysenur.kaya.3"]


def test_entity_addresses() -> None:
    assert addresses.entity_local(legal_name="Örnek Dış Ticaret A.Ş.") == "ornek-dis-ticaret-a-s"
    assert addresses.entity_local(legal_name="Örnek A.Ş.", free="Hukuk Birimi") == "ornek-a-s.hukukbirimi"
    assert addresses.entity_local(mersis="0123456789012345") == "0123456789012345"
    with pytest.raises(AddressError, match="16 digits"):
        addresses.entity_local(mersis="123")
    with pytest.raises(AddressError, match="exactly one"):
        addresses.entity_local(mersis="0123456789012345", legal_name="X")
    with pytest.raises(AddressError, match="no letters"):
        addresses.entity_local(legal_name="!!!")


@pytest.mark.parametrize(
    "bad",
    [
        "../etc@kep.test",
        "a..b@kep.test",
        ".a@kep.test",
        "a.@kep.test",
        "a/b@kep.test",
        "a@kep",
        "a@-x.test",
        "@kep.test",
        "a@",
        "plain",
        "a@b@kep.test",
        "a\x00b@kep.test",
        "ça@kep.test",
    ],
)
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises(AddressError):
        addresses.parse(bad)


def test_parse_normalises() -> None:
    assert str(addresses.parse("<Ali.Yilmaz@KEP.test>")) == "ali.yilmaz@kep.test"


@given(st.text(max_size=80))
def test_a_parsed_address_can_never_name_another_path(text: str) -> None:
    try:
        addr = addresses.parse(text)
    except AddressError:
        return
    for part in (addr.local, addr.domain):
        assert "/" not in part and "\x00" not in part and ".." not in part
        assert not part.startswith(".") and part.isascii()
