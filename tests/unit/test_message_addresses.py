"""Address lists (kepmta.message.addresses): comments anywhere, a comment as the display name,
groups with start and end markers (RFC 5322 §3.4, RFC 3501 §7.4.2)."""

from __future__ import annotations

import pytest

from kepmta.message.addresses import Address, addr_specs, mailboxes, parse_addresses, searchable


def test_mailboxes_names_and_routes() -> None:
    assert parse_addresses('"Doe, John" <john@example.com>, plain@example.org') == (
        Address("Doe, John", None, "john", "example.com"),
        Address(None, None, "plain", "example.org"),
    )
    assert parse_addresses("x <@relay.net:x@y.org> (comment)") == (Address("x", "@relay.net", "x", "y.org"),)
    assert parse_addresses("John Q. Public <jqp@example.com>")[0].name == "John Q. Public"
    assert parse_addresses(r'"a \"quoted\" name" <q@x.org>')[0].name == 'a "quoted" name'


def test_groups_have_start_and_end_markers() -> None:
    assert parse_addresses("Team: a@x.org, B <b@y.org>;, c@z.org") == (
        Address(None, None, "Team", None),
        Address(None, None, "a", "x.org"),
        Address("B", None, "b", "y.org"),
        Address(None, None, None, None),
        Address(None, None, "c", "z.org"),
    )
    assert parse_addresses("undisclosed-recipients:;") == (
        Address(None, None, "undisclosed-recipients", None),
        Address(None, None, None, None),
    )
    # An unterminated group still ends.
    assert parse_addresses("team: a@b.org")[-1] == Address(None, None, None, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 5322 §3.4: the obsolete but common form, a comment naming the address.
        ("user@domain.org (Real Name)", Address("Real Name", None, "user", "domain.org")),
        ("<user@domain.org> (Real Name)", Address("Real Name", None, "user", "domain.org")),
        (
            "user@domain.org (Real (nested) Name) (second)",
            Address("Real (nested) Name", None, "user", "domain.org"),
        ),
        (r"user@domain.org (Real \) Name)", Address("Real ) Name", None, "user", "domain.org")),
        # A display name given as a phrase wins over a comment.
        ("Ali <ali@kep.test> (not a name)", Address("Ali", None, "ali", "kep.test")),
        # RFC 5322 §3.2.2: CFWS between the tokens of an addr-spec is no part of it, nor a name.
        ("<user (c)@ (c) domain.org>", Address(None, None, "user", "domain.org")),
        ("user (c)@ (c) domain.org", Address(None, None, "user", "domain.org")),
        ("(first) user@domain.org", Address(None, None, "user", "domain.org")),
    ],
)
def test_comments(value: str, expected: Address) -> None:
    assert parse_addresses(value) == (expected,)


def test_mailboxes_and_addr_specs_flatten_groups() -> None:
    value = 'team: "john doe"@x.org, <b (c)@ y.org>;, c@z.org (C)'
    assert [a.addr_spec for a in mailboxes(value)] == ['"john doe"@x.org', "b@y.org", "c@z.org"]
    assert addr_specs([value, "d@w.org, nobody"]) == ('"john doe"@x.org', "b@y.org", "c@z.org", "d@w.org")


def test_searchable_form() -> None:
    assert searchable(
        "=?utf-8?b?w4dpw6dlaw==?= <cicek@kep.test>, <user (c)@ (c) domain.org>, x@y.z (Ex)"
    ) == ("Çiçek <cicek@kep.test>, user@domain.org, Ex <x@y.z>")


@pytest.mark.parametrize(
    ("junk", "count"),
    [
        ("(" * 100_000, 0),
        ('"' + "\\" * 100_001, 1),
        ("<" * 100_000, 1),
        ("a:" * 50_000, 3),
        (")\\" * 50_000, 0),
    ],
)
def test_hostile_lists_are_read_in_linear_time(junk: str, count: int) -> None:
    assert len(parse_addresses(junk)) == count
