"""What one session is told of another's changes, over TLS against `kepmta serve --dev`: a keyword
only after an untagged FLAGS announced it (RFC 3501 §7.2.6), and a STORE naming a message another
session expunged (RFC 2180 §4.2.1, RFC 9051 §6.4.6), and a FETCH naming one (RFC 2180 §4.1.3)."""

from __future__ import annotations

import re

from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer


async def login(srv: DevServer, account: int) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(account)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


def message(subject: str) -> bytes:
    return f"From: a@kep.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


async def fill(c: RawClient, folder: str, count: int) -> None:
    await c.ok(f"CREATE {folder}")
    for i in range(count):
        m = message(f"m{i}")
        await c.ok(b"APPEND %s {%d+}\r\n%s" % (folder.encode(), len(m), m))


def first_index(lines: list[bytes], pattern: bytes) -> int:
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


async def test_a_keyword_is_announced_in_flags_before_any_fetch_shows_it(srv: DevServer) -> None:
    a, b = await login(srv, 0), await login(srv, 0)
    await fill(a, "Etiket", 2)
    selected = untagged(await a.ok("SELECT Etiket"))
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)" in selected
    await b.ok("SELECT Etiket")

    # Another session's keyword: FLAGS and PERMANENTFLAGS come before the FETCH that shows it.
    await b.ok("STORE 1 +FLAGS ($Proje)")
    lines = untagged(await a.ok("NOOP"))
    flags = first_index(lines, rb"^\* FLAGS \(.*\$Proje")
    permanent = first_index(lines, rb"^\* OK \[PERMANENTFLAGS \(.*\$Proje \\\*\)\]")
    fetch = first_index(lines, rb"^\* 1 FETCH \(.*\$Proje")
    assert flags < fetch and permanent < fetch, lines
    # Told once: the next change needs no new FLAGS.
    await b.ok("STORE 2 +FLAGS ($Proje)")
    lines = untagged(await a.ok("NOOP"))
    assert not any(line.startswith(b"* FLAGS") for line in lines), lines

    # This session's own new keyword, in STORE's own FETCH response.
    lines = untagged(await a.ok("STORE 2 +FLAGS (Acil)"))
    assert first_index(lines, rb"^\* FLAGS \(.*Acil") < first_index(lines, rb"^\* 2 FETCH \(.*Acil")

    # A message appended with a keyword by another session: announced before its FETCH.
    m = message("m2")
    await b.ok(b"APPEND Etiket (Yeni) {%d+}\r\n%s" % (len(m), m))
    lines = untagged(await a.ok("FETCH 1:* (FLAGS)"))
    lines += untagged(await a.ok("FETCH 3 (FLAGS)"))
    assert first_index(lines, rb"^\* FLAGS \(.*Yeni") < first_index(lines, rb"^\* 3 FETCH \(.*Yeni")
    for c in (a, b):
        await c.close()


async def behind_an_expunge(srv: DevServer, folder: str) -> tuple[RawClient, RawClient]:
    """Two sessions on a new `folder` of three messages; the first has expunged message 2, which
    the second, not told yet, still numbers 2."""
    a, b = await login(srv, 1), await login(srv, 1)
    await fill(a, folder, 3)
    await a.ok(f"SELECT {folder}")
    await b.ok(f"SELECT {folder}")
    await a.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    await a.ok("EXPUNGE")
    return a, b


async def test_store_leaves_out_a_message_another_session_expunged(srv: DevServer) -> None:
    a, b = await behind_an_expunge(srv, "Silinen")
    # b still numbers the message 2: the STORE succeeds for 1 and 3, says nothing of 2, and no
    # EXPUNGE may come while a STORE is answered (RFC 3501 §7.4.1).
    r = await b.command("STORE 1:3 +FLAGS (\\Flagged)")
    assert tagged(r) == b"OK STORE completed", r
    lines = untagged(r)
    # b selected after a, which holds \\Recent for the new messages.
    assert [line for line in lines if b"FETCH" in line] == [
        b"* 1 FETCH (FLAGS (\\Flagged))",
        b"* 3 FETCH (FLAGS (\\Flagged))",
    ], lines
    assert not any(b"EXPUNGE" in line for line in lines)
    assert b"* 2 EXPUNGE" in untagged(await b.ok("NOOP"))
    await a.ok("FETCH 1:2 (FLAGS)")
    for c in (a, b):
        await c.close()


async def test_fetch_leaves_out_a_message_another_session_expunged(srv: DevServer) -> None:
    a, b = await behind_an_expunge(srv, "Gidenler")
    # bench/imap.py's writing mix met this from imaplib-like clients fetching new mail while others
    # expunged: the rest arrives and the command is OK, as Dovecot answers.
    for command, tag, seqs in (
        ("UID FETCH 2:* (UID BODY.PEEK[HEADER])", b"OK UID FETCH completed", [3]),
        ("FETCH 1:3 (FLAGS BODY.PEEK[TEXT])", b"OK FETCH completed", [1, 3]),
    ):
        r = await b.command(command)
        assert tagged(r) == tag, r
        fetched = [line for line in untagged(r) if b"FETCH" in line]
        assert [int(line.split()[1]) for line in fetched] == seqs, r
        assert not any(b"EXPUNGE" in line for line in untagged(r))
    assert b"* 2 EXPUNGE" in untagged(await b.ok("NOOP"))
    for c in (a, b):
        await c.close()


async def test_keywords_a_folder_may_hold_are_bounded(srv: DevServer) -> None:
    c = await login(srv, 2)
    await fill(c, "Cok", 1)
    await c.ok("SELECT Cok")
    assert tagged(await c.command("STORE 1 +FLAGS (" + "k" * 129 + ")")).startswith(b"NO [LIMIT]")
    for start in range(0, 256, 64):
        await c.ok("STORE 1 +FLAGS.SILENT (" + " ".join(f"k{i}" for i in range(start, start + 64)) + ")")
    assert tagged(await c.command("STORE 1 +FLAGS (k256)")).startswith(b"NO [LIMIT]")
    # Known keywords can still be set; PERMANENTFLAGS no longer offers new ones.
    await c.ok("STORE 1 -FLAGS.SILENT (k0)")
    await c.ok("STORE 1 +FLAGS.SILENT (k0)")
    selected = untagged(await c.ok("SELECT Cok"))
    permanent = next(line for line in selected if b"PERMANENTFLAGS" in line)
    assert b"k255" in permanent and b"\\*" not in permanent
    await c.close()
