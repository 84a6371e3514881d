"""SORT (RFC 5256): several criteria, REVERSE, base subjects, address keys, UID SORT and errors."""

from __future__ import annotations

import os
import time

from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    Running,
    imap_fixture,
    tagged,
    tls_fixture,
    untagged,
)

from kepmta.imap.sort import base_subject


def _message(subject: str, sender: str, date: str, to: str = "ali@kep.test", body: str = "x") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n\r\n{body}\r\n").encode()


def test_base_subject() -> None:
    # RFC 5256 §2.1
    assert base_subject("Re: Fwd: [kep] Toplantı (fwd)") == "TOPLANTı"
    assert base_subject("[Fwd: re: Hello]") == "HELLO"
    assert base_subject("RE [2]: Re:   hello\t world  ") == "HELLO WORLD"
    assert base_subject("[only a blob]") == "[ONLY A BLOB]"
    assert base_subject("=?UTF-8?Q?Re=3A_=C3=A7ay?=") == "çAY"
    assert base_subject("") == ""


async def test_sort_by_several_criteria(imap: Running) -> None:
    messages = [
        _message("Re: beta", "Zeynep <zeynep@kep.test>", "Tue, 14 May 2024 10:00:00 +0300", body="y" * 50),
        _message("alpha", "ahmet@kep.test", "Mon, 13 May 2024 09:00:00 +0000"),
        _message("Fwd: Beta", "Burak <burak@kep.test>", "Tue, 14 May 2024 06:30:00 +0000", body="y" * 10),
        _message("[liste] ALPHA", "Ahmet <AHMET@kep.test>", "not a date", to="cem@kep.test"),
    ]
    base = time.time() - 1000
    for i, msg in enumerate(messages):
        path = imap.deliver(msg)
        os.utime(path, (base + i, base + i))
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    assert untagged(await c.ok("SORT (SUBJECT) UTF-8 ALL")) == [b"* SORT 2 4 1 3"]
    # Ties in SUBJECT broken by the second key; REVERSE applies to its own key only.
    assert untagged(await c.ok("SORT (SUBJECT REVERSE DATE) UTF-8 ALL")) == [b"* SORT 4 2 1 3"]
    assert untagged(await c.ok("SORT (REVERSE SUBJECT FROM) US-ASCII ALL")) == [b"* SORT 3 1 2 4"]
    # DATE is the sent date in UTC (msg 1 is 07:00Z, msg 3 06:30Z); an unparsable one falls
    # back to INTERNALDATE, which here is the most recent.
    assert untagged(await c.ok("SORT (DATE) UTF-8 ALL")) == [b"* SORT 2 3 1 4"]
    assert untagged(await c.ok("SORT (ARRIVAL) UTF-8 ALL")) == [b"* SORT 1 2 3 4"]
    by_size = sorted(range(1, 5), key=lambda n: len(messages[n - 1]), reverse=True)
    assert untagged(await c.ok("SORT (REVERSE SIZE) UTF-8 ALL")) == [
        b"* SORT " + " ".join(map(str, by_size)).encode()
    ]
    assert untagged(await c.ok("SORT (TO FROM) UTF-8 ALL")) == [b"* SORT 2 3 1 4"]
    assert untagged(await c.ok("SORT (CC REVERSE ARRIVAL) UTF-8 ALL")) == [b"* SORT 4 3 2 1"]
    assert untagged(await c.ok("UID SORT (FROM) UTF-8 NOT FROM zeynep")) == [b"* SORT 2 4 3"]
    assert untagged(await c.ok("SORT (FROM) UTF-8 SUBJECT nothing-matches")) == [b"* SORT"]
    assert tagged(await c.command("SORT (FROM) KOI8-R ALL")) == (
        b"NO [BADCHARSET (UTF-8 US-ASCII)] unsupported charset KOI8-R"
    )
    assert tagged(await c.command("SORT (COLOUR) UTF-8 ALL")) == b"BAD SORT: unknown sort criterion 'COLOUR'"
    assert tagged(await c.command("SORT (REVERSE) UTF-8 ALL")).startswith(b"BAD SORT: sort criteria must")
    assert (
        tagged(await c.command("SORT FROM UTF-8 ALL")) == b"BAD SORT: expected sort criteria in parentheses"
    )
    assert tagged(await c.command("SORT (FROM) UTF-8")) == b"BAD SORT: missing search criteria"
    await c.close()
