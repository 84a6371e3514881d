"""T.C. kimlik no check digits and the MERSİS number's form, wherever accounts take them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.accounts import AccountError, AccountState, AccountStore
from kepmta.db.engine import open_engine
from kepmta.db.runner import close
from kepmta.policy.identity import (
    IdentityNumberError,
    check_mersis,
    check_national_id,
    is_national_id,
    national_id_check_digits,
)


def reference_check(number: str) -> bool:
    """The published rule, written out digit by digit."""
    d = [int(c) for c in number]
    if len(d) != 11 or d[0] == 0:
        return False
    odd, even = d[0] + d[2] + d[4] + d[6] + d[8], d[1] + d[3] + d[5] + d[7]
    return d[9] == (odd * 7 - even) % 10 and d[10] == sum(d[:10]) % 10


@pytest.mark.parametrize("number", ["10000000146", "12345678950", "10987654370", "98765432150"])
def test_valid_numbers(number: str) -> None:
    assert reference_check(number)
    assert is_national_id(number) and check_national_id(number) == number


@pytest.mark.parametrize(
    ("number", "why"),
    [
        ("00000000000", "never starts with 0"),
        ("12345678901", "check digits"),  # the README's old example
        ("10987654321", "check digits"),
        ("12345678940", "check digits"),  # 10th digit wrong
        ("12345678951", "check digits"),  # 11th digit wrong
        ("1234567895", "11 digits"),
        ("123456789500", "11 digits"),
        ("1234567895a", "11 digits"),
        ("١٢٣٤٥٦٧٨٩٥٠", "11 digits"),  # Arabic-Indic digits are digits to str.isdigit, not to us
        ("", "11 digits"),
    ],
)
def test_invalid_numbers(number: str, why: str) -> None:
    assert not is_national_id(number)
    with pytest.raises(IdentityNumberError, match=why):
        check_national_id(number)


def test_the_rule_agrees_with_the_reference_over_many_numbers() -> None:
    for n in range(100_000_000, 100_000_000 + 20_000, 7):
        nine = str(n)
        whole = nine + national_id_check_digits(nine)
        assert is_national_id(whole) and reference_check(whole)
        wrong = whole[:10] + str((int(whole[10]) + 1) % 10)
        assert not is_national_id(wrong) and not reference_check(wrong)


def test_mersis_form() -> None:
    assert check_mersis("0123456789012345") == "0123456789012345"
    for bad in ("123", "01234567890123456", "012345678901234x", "０１２３４５６７８９０１２３４５"):
        with pytest.raises(IdentityNumberError, match="16 digits"):
            check_mersis(bad)


@pytest.fixture
async def store(tmp_path: Path, database_url: str) -> AsyncIterator[AccountStore]:
    engine: AsyncEngine = await open_engine(database_url)
    yield AccountStore(engine, tmp_path / "mail", domain="kep.test", default_quota=10**6)
    await close(engine)


async def test_accounts_take_only_valid_numbers(store: AccountStore) -> None:
    for bad in ("00000000000", "12345678901"):
        with pytest.raises(AccountError, match=r"T\.C\. kimlik no"):
            await store.add_person("Ayşe", "Kaya", password="uzun-parola-1", national_id=bad)
    with pytest.raises(AccountError, match="MERSİS number must be 16 digits"):
        await store.add_entity(legal_name="Örnek A.Ş.", mersis="12")
    assert await store.all() == []
    person = await store.add_person(
        "Ayşe", "Kaya", password="uzun-parola-1", national_id="12345678950", state=AccountState.ACTIVE
    )
    await store.transition(person.address, "close")
    with pytest.raises(AccountError, match="check digits"):
        await store.reopen(person.address, national_id="12345678901")
    with pytest.raises(AccountError, match="not that of"):
        await store.reopen(person.address, national_id="10987654370")
    assert (await store.reopen(person.address, national_id="12345678950")).state is AccountState.ACTIVE
