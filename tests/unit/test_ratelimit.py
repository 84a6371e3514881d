"""Failed-login throttling: by (account, address) and by address with growing waits, a short fixed
wait for an account attacked from elsewhere, never a lock-out of its holder; and AccountStore.login
on a real database with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.accounts import AccountState, AccountStore, LoginRefusal
from kepmta.config import DEFAULT_POLICY, ConfigError, load_policy
from kepmta.db.engine import open_engine
from kepmta.db.runner import close
from kepmta.ratelimit import FailureLimiter, Limits, Verdict, client_key

LIMITS = Limits(
    per_pair=3,
    per_address=6,
    per_account=3,
    window_seconds=100,
    first_delay=1,
    account_delay=0.5,
    max_delay=8,
    waiting_per_address=2,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(limits: Limits = LIMITS) -> tuple[FailureLimiter, Clock]:
    clock = Clock()
    return FailureLimiter(limits, clock), clock


def fail(lim: FailureLimiter, account: str, ip: str, times: int) -> None:
    for _ in range(times):
        lim.failed(account, ip)


def test_a_pair_waits_longer_after_each_failure_past_its_limit_then_is_told_to_come_later() -> None:
    lim, _ = limiter()
    waits = []
    for _ in range(8):
        waits.append(lim.verdict("ali@kep.test", "192.0.2.1"))
        lim.failed("ali@kep.test", "192.0.2.1")
    assert [v.delay for v in waits[:7]] == [0, 0, 0, 1, 2, 4, 8]
    assert not any(v.try_later for v in waits[:7])
    assert waits[7] == Verdict(16, try_later=True, suspect=True)


def test_the_account_attacked_from_one_address_is_only_slowed_for_another() -> None:
    lim, _ = limiter()
    fail(lim, "ali@kep.test", "192.0.2.1", 20)
    assert lim.verdict("ali@kep.test", "192.0.2.1").try_later
    # The holder elsewhere: a short fixed wait, never "try later", however many failures.
    assert lim.verdict("ali@kep.test", "198.51.100.7") == Verdict(0.5)
    # Other accounts from elsewhere: nothing at all.
    assert lim.verdict("ayse@kep.test", "198.51.100.7") == Verdict(0)


def test_fewer_failures_than_the_account_limit_from_elsewhere_cost_the_holder_nothing() -> None:
    lim, _ = limiter()
    fail(lim, "ali@kep.test", "192.0.2.1", LIMITS.per_account - 1)
    assert lim.verdict("ali@kep.test", "198.51.100.7") == Verdict(0)
    lim.failed("ali@kep.test", "192.0.2.2")
    assert lim.verdict("ali@kep.test", "198.51.100.7") == Verdict(0.5)


def test_an_address_spraying_many_accounts_waits_for_every_account() -> None:
    lim, _ = limiter()
    for i in range(LIMITS.per_address):
        assert lim.verdict(f"u{i}@kep.test", "192.0.2.9").delay == 0
        lim.failed(f"u{i}@kep.test", "192.0.2.9")
    assert lim.verdict("fresh@kep.test", "192.0.2.9") == Verdict(1, suspect=True)
    fail(lim, "other@kep.test", "192.0.2.9", 4)
    assert lim.verdict("fresh@kep.test", "192.0.2.9").try_later
    assert lim.verdict("fresh@kep.test", "192.0.2.10") == Verdict(0)


def test_failures_older_than_the_window_are_forgotten() -> None:
    lim, clock = limiter()
    fail(lim, "ali@kep.test", "192.0.2.1", 10)
    assert lim.verdict("ali@kep.test", "192.0.2.1").try_later
    clock.now += LIMITS.window_seconds + 1
    assert lim.verdict("ali@kep.test", "192.0.2.1") == Verdict(0)
    assert lim.verdict("ali@kep.test", "198.51.100.7") == Verdict(0)


def test_memory_follows_the_window_and_one_key_stays_bounded() -> None:
    lim, clock = limiter()
    fail(lim, "ali@kep.test", "192.0.2.1", 10_000)
    assert all(len(times) <= 100 for times in lim._failures.values())
    for i in range(500):
        lim.failed(f"u{i}@kep.test", f"192.0.2.{i % 250}")
    clock.now += LIMITS.window_seconds + 1
    lim.failed("late@kep.test", "203.0.113.1")
    assert {key[0] for key in lim._failures} == {"pair", "address", "account"}
    assert len(lim._failures) == 3


def test_the_right_password_clears_only_its_own_pair() -> None:
    lim, _ = limiter()
    fail(lim, "ali@kep.test", "192.0.2.1", 3)
    fail(lim, "ali@kep.test", "192.0.2.2", 3)
    lim.succeeded("ali@kep.test", "192.0.2.1")
    assert lim.verdict("ali@kep.test", "192.0.2.1") == Verdict(0.5)  # others' failures remain
    assert lim.verdict("ali@kep.test", "192.0.2.2") == Verdict(1, suspect=True)


def test_ipv6_clients_are_counted_by_their_64() -> None:
    assert client_key("2001:db8:0:0:aaaa::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") == "2001:db8:0:1::/64"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    lim, _ = limiter()
    fail(lim, "ali@kep.test", "2001:db8::1", 3)
    assert lim.verdict("ali@kep.test", "2001:db8::2").suspect
    assert not lim.verdict("ali@kep.test", "2001:db8:0:1::2").suspect


async def test_a_suspect_address_may_have_only_a_few_tries_asleep() -> None:
    lim = FailureLimiter(
        Limits(per_pair=1, per_account=100, first_delay=0.5, max_delay=1, waiting_per_address=2)
    )
    lim.failed("ali@kep.test", "192.0.2.1")
    results = await asyncio.gather(*(lim.wait("ali@kep.test", "192.0.2.1") for _ in range(5)))
    assert sorted(results) == [False, False, False, True, True]
    assert lim._waiting == {}
    # a clean address is never turned away, however many of its tries wait at once
    fail(lim, "ayse@kep.test", "192.0.2.1", 100)
    clean = await asyncio.gather(*(lim.wait("ayse@kep.test", "198.51.100.7") for _ in range(5)))
    assert clean == [True] * 5


async def test_a_wait_past_the_cap_is_refused_at_once() -> None:
    lim = FailureLimiter(Limits(per_pair=1, first_delay=3600, max_delay=60))
    lim.failed("ali@kep.test", "192.0.2.1")
    assert await asyncio.wait_for(lim.wait("ali@kep.test", "192.0.2.1"), timeout=30) is False


def test_the_policy_file_gives_the_limits(tmp_path: Path) -> None:
    limits = Limits.from_policy(load_policy(DEFAULT_POLICY))
    assert limits == Limits()
    text = DEFAULT_POLICY.read_text().replace("account_delay_seconds = 1", "account_delay_seconds = 31")
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(ConfigError, match="account_delay_seconds must be an integer from 0 to 30"):
        load_policy(tmp_path / "p.toml")


# -- AccountStore.login on a real database -----------------------------------------------------------


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_engine(database_url)
    yield eng
    await close(eng)


async def test_login_lets_the_holder_in_while_an_attacker_is_turned_away(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    fast = Limits(per_pair=3, per_address=20, per_account=3, first_delay=1, account_delay=0.1, max_delay=1)
    store = AccountStore(
        engine, tmp_path / "mail", domain="kep.test", default_quota=10**6, limiter=FailureLimiter(fast)
    )
    ali = await store.add_person("Ali", "Yılmaz", password="dogru-parola-1", state=AccountState.ACTIVE)
    for _ in range(4):
        login = await store.login(ali.address, "yanlis", "192.0.2.66")
        assert login.refusal is LoginRefusal.BAD_CREDENTIALS
    # the attacker's address: "try later", even with the right password
    assert (await store.login(ali.address, "dogru-parola-1", "192.0.2.66")).refusal is LoginRefusal.THROTTLED
    # the holder, from anywhere else, gets in
    assert (await store.login(ali.address, "dogru-parola-1", "198.51.100.7")).account == ali
    assert await store.authenticate(ali.address.upper(), "dogru-parola-1", "2001:db8::1") == ali


async def test_names_that_are_no_address_share_one_key(engine: AsyncEngine, tmp_path: Path) -> None:
    lim = FailureLimiter(Limits(per_pair=100, per_address=100))
    store = AccountStore(engine, tmp_path / "mail", domain="kep.test", default_quota=10**6, limiter=lim)
    for name in ("x" * 5000, "yok", "\x00\x01"):
        assert (await store.login(name, "p", "192.0.2.1")).refusal is LoginRefusal.BAD_CREDENTIALS
    assert {key for key in lim._failures if key[0] == "account"} == {("account", "")}
