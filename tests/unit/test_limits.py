"""The limits of kepmta.limits as the policy file gives them: defaults, one-line mistakes, and the
counting itself (places held per key, quota reserved by messages still arriving)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from kepmta.config import DEFAULT_POLICY, ConfigError, Policy, load_policy
from kepmta.imap.protocol import Limits
from kepmta.limits import ImapLimits, QuotaReservations, Slots


def test_the_policy_file_holds_the_defaults() -> None:
    policy = load_policy(DEFAULT_POLICY)
    assert policy.imap_limits == ImapLimits(message=policy.local_max_size)
    assert policy.imap_limits.message == ImapLimits().message
    assert policy.submission_connections_per_address == Policy.submission_connections_per_address
    assert policy.submission_sessions_per_account == Policy.submission_sessions_per_account
    assert policy.relay_connections_per_address == Policy.relay_connections_per_address
    assert policy.imap_limits.before_login == Limits(line=65536, literal=4096, command=16384, message=4096)
    assert policy.imap_limits.after_login == Limits(
        line=65536, literal=65536, command=1048576, message=100 * 1024 * 1024
    )


def _set(text: str, table: str, key: str, value: str) -> str:
    head = f"\n[{table}]\n"
    start = text.index(head) + len(head)
    following = text.find("\n[", start)
    end = len(text) if following < 0 else following
    body, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text[start:end])
    assert n == 1, (table, key)
    return text[:start] + body + text[end:]


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        ("imap", "connections_per_address", "0", "imap.connections_per_address must be an integer from 1 "),
        ("imap", "sessions_per_account", "true", "imap.sessions_per_account must be an integer from 1 "),
        # RFC 7162 §4: lines of 8192 octets must be taken.
        ("imap", "max_line", "8191", "imap.max_line must be an integer from 8192 "),
        (
            "imap",
            "max_literal_before_login",
            "255",
            "imap.max_literal_before_login must be an integer from 256 ",
        ),
        # A command holds at least one literal.
        (
            "imap",
            "max_command_before_login",
            "4095",
            "imap.max_command_before_login must be an integer from 4096 ",
        ),
        ("imap", "max_literal", '"64k"', "imap.max_literal must be an integer from 1024 "),
        ("imap", "max_command", "65535", "imap.max_command must be an integer from 65536 "),
        (
            "submission",
            "connections_per_address",
            "0",
            "submission.connections_per_address must be an integer",
        ),
        (
            "submission",
            "sessions_per_account",
            "-1",
            "submission.sessions_per_account must be an integer from 1 ",
        ),
        ("relay", "connections_per_address", "0", "relay.connections_per_address must be an integer from 1 "),
    ],
)
def test_a_bad_limit_is_one_line_naming_file_and_key(
    tmp_path: Path, table: str, key: str, value: str, message: str
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(_set(DEFAULT_POLICY.read_text(), table, key, value))
    with pytest.raises(ConfigError) as e:
        load_policy(policy)
    text = str(e.value)
    assert text.startswith(f"{policy}: ") and message in text and "\n" not in text


def test_the_limits_at_their_lowest_load(tmp_path: Path) -> None:
    text = DEFAULT_POLICY.read_text()
    for table, key, value in [
        ("imap", "connections_per_address", "1"),
        ("imap", "sessions_per_account", "1"),
        ("imap", "max_line", "8192"),
        ("imap", "max_literal_before_login", "256"),
        ("imap", "max_command_before_login", "256"),
        ("imap", "max_literal", "1024"),
        ("imap", "max_command", "1024"),
        ("submission", "connections_per_address", "1"),
        ("submission", "sessions_per_account", "1"),
        ("relay", "connections_per_address", "1"),
    ]:
        text = _set(text, table, key, value)
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    loaded = load_policy(policy)
    assert loaded.imap_limits == ImapLimits(1, 1, 8192, 256, 256, 1024, 1024, loaded.local_max_size)
    assert (
        loaded.submission_connections_per_address,
        loaded.submission_sessions_per_account,
        loaded.relay_connections_per_address,
    ) == (1, 1, 1)


def test_slots_per_key_up_to_the_limit_and_back() -> None:
    slots = Slots(2)
    a, b = slots.take("192.0.2.1"), slots.take("192.0.2.1")
    assert a is not None and b is not None
    assert slots.take("192.0.2.1") is None
    # Another key has places of its own.
    other = slots.take("2001:db8::/64")
    assert other is not None and slots.held("2001:db8::/64") == 1
    a.release()
    a.release()  # given back once, however often released
    assert slots.held("192.0.2.1") == 1
    c = slots.take("192.0.2.1")
    assert c is not None and slots.take("192.0.2.1") is None
    for slot in (b, c, other):
        slot.release()
    assert slots.held("192.0.2.1") == 0 and slots.held("2001:db8::/64") == 0


async def test_reservations_count_until_released() -> None:
    reservations = QuotaReservations()
    stored = {"ali": 100}

    async def read() -> tuple[int, int]:
        return stored["ali"], 1000

    first = reservations.reserve("ali", 300)
    second = reservations.reserve("ali", 200)
    reservations.reserve("veli", 999)
    assert await reservations.usage("ali", read) == (600, 1000)
    # The holder's own reservation is left out when it checks again for itself.
    assert await reservations.usage("ali", read, exclude=first) == (300, 1000)
    first.release()
    first.release()
    assert reservations.reserved("ali") == 200
    second.release()
    assert await reservations.usage("ali", read) == (100, 1000)


async def test_a_reservation_given_up_while_usage_is_read_still_counts() -> None:
    """Its message may have been stored after the stored octets were counted: counting it again
    errs high for a moment, never low."""
    reservations = QuotaReservations()
    held = reservations.reserve("ali", 300)
    reading = asyncio.Event()
    proceed = asyncio.Event()

    async def slow_read() -> tuple[int, int]:
        reading.set()
        await proceed.wait()
        return 100, 1000

    task = asyncio.create_task(reservations.usage("ali", slow_read))
    await reading.wait()
    held.release()  # its message stored after the count was taken
    late = reservations.reserve("ali", 50)  # announced while the count was taken
    proceed.set()
    assert await task == (100 + 300 + 50, 1000)
    late.release()
    # A later read has only the stored octets: nothing is held any more.
    assert await reservations.usage("ali", slow_read) == (100, 1000)
