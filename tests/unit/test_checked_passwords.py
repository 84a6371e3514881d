"""kepmta.passwords.CheckedPasswords: a confirmed password skips scrypt for a while, and nothing
else does. scrypt itself is counted by wrapping hashlib's, which still does the work."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from kepmta.passwords import CheckedPasswords, hash_password


@pytest.fixture
def scrypts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real: Callable[..., bytes] = hashlib.scrypt

    def counted(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counted)
    return calls


STORED = hash_password("doğru-parola")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_confirmed_password_is_taken_again_without_scrypt(scrypts: list[int]) -> None:
    checked = CheckedPasswords(lambda: 300)
    assert await checked.check("doğru-parola", STORED)
    assert await checked.check("doğru-parola", STORED)
    assert len(scrypts) == 1


async def test_a_wrong_password_is_checked_in_full_every_time(scrypts: list[int]) -> None:
    checked = CheckedPasswords(lambda: 300)
    assert await checked.check("doğru-parola", STORED)
    for _ in range(3):
        assert not await checked.check("yanlış-parola", STORED)
    assert len(scrypts) == 4


async def test_a_new_password_matches_nothing_kept(scrypts: list[int]) -> None:
    checked = CheckedPasswords(lambda: 300)
    assert await checked.check("doğru-parola", STORED)
    renewed = hash_password("yeni-parola")  # hashing is one scrypt call too
    assert not await checked.check("doğru-parola", renewed)
    assert await checked.check("yeni-parola", renewed)
    assert len(scrypts) == 4


async def test_kept_only_for_the_policy_seconds(scrypts: list[int]) -> None:
    clock, seconds = Clock(), [300.0]
    checked = CheckedPasswords(lambda: seconds[0], clock=clock)
    assert await checked.check("doğru-parola", STORED)
    clock.now += 299
    assert await checked.check("doğru-parola", STORED)
    assert len(scrypts) == 1
    clock.now += 2
    assert await checked.check("doğru-parola", STORED)
    assert len(scrypts) == 2
    seconds[0] = 0  # a reload to 0: every login is checked, and nothing kept is used again
    assert await checked.check("doğru-parola", STORED)
    assert await checked.check("doğru-parola", STORED)
    assert len(scrypts) == 4


async def test_the_oldest_is_forgotten_past_the_size(scrypts: list[int]) -> None:
    checked = CheckedPasswords(lambda: 300, size=2)
    stored = [hash_password(f"parola-{i}") for i in range(3)]
    del scrypts[:]
    for i in range(3):
        assert await checked.check(f"parola-{i}", stored[i])
    assert await checked.check("parola-2", stored[2])
    assert await checked.check("parola-1", stored[1])
    assert len(scrypts) == 3
    assert await checked.check("parola-0", stored[0])
    assert len(scrypts) == 4
