"""CONDSTORE and QRESYNC (RFC 7162): mod-sequences in SELECT, FETCH, STORE, SEARCH, STATUS; VANISHED."""

from __future__ import annotations

import re

from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    RawClient,
    Running,
    imap_fixture,
    simple_message,
    tagged,
    tls_fixture,
    untagged,
)


def _validity(select: list[bytes]) -> int:
    for line in select:
        m = re.search(rb"\[UIDVALIDITY (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(select)


async def test_select_condstore_fetch_modseq_and_changedsince(imap: Running) -> None:
    for i in range(3):
        imap.deliver(simple_message(f"m{i}"))
    c = await imap.raw()
    r = untagged(await c.ok("SELECT INBOX (CONDSTORE)"))
    # Each arrival got its own mod-sequence; RFC 7162 §3.1.2.1 reports the highest on SELECT.
    assert r[-1] == b"* OK [HIGHESTMODSEQ 3] highest mod-sequence"
    assert untagged(await c.ok("FETCH 1:3 (FLAGS MODSEQ)")) == [
        b"* 1 FETCH (FLAGS (\\Recent) MODSEQ (1))",
        b"* 2 FETCH (FLAGS (\\Recent) MODSEQ (2))",
        b"* 3 FETCH (FLAGS (\\Recent) MODSEQ (3))",
    ]
    assert untagged(await c.ok("STORE 2 +FLAGS (\\Flagged)")) == [
        b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (4))"
    ]
    assert untagged(await c.ok("FETCH 1:* (FLAGS) (CHANGEDSINCE 3)")) == [
        b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (4))"
    ]
    assert untagged(await c.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 4)")) == []
    assert untagged(await c.ok("SEARCH MODSEQ 4")) == [b"* SEARCH 2 (MODSEQ 4)"]
    assert untagged(await c.ok('SEARCH MODSEQ "/flags/\\\\flagged" all 1 UNFLAGGED')) == [
        b"* SEARCH 1 3 (MODSEQ 3)"
    ]
    assert untagged(await c.ok("SEARCH MODSEQ 5")) == [b"* SEARCH"]
    assert untagged(await c.ok("STATUS INBOX (HIGHESTMODSEQ MESSAGES)")) == [
        b'* STATUS "INBOX" (HIGHESTMODSEQ 4 MESSAGES 3)'
    ]
    assert tagged(await c.command("FETCH 1 FLAGS (CHANGEDSINCE x)")) == b"BAD FETCH: invalid mod-sequence 'x'"
    assert tagged(await c.command("FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)")) == (
        b"BAD FETCH: VANISHED needs UID FETCH and ENABLE QRESYNC"
    )
    assert tagged(await c.command("FETCH 1 FLAGS (BOGUS)")) == b"BAD FETCH: unknown FETCH modifier BOGUS"
    assert tagged(await c.command("SELECT INBOX (BOGUS)")) == b"BAD SELECT: unknown select parameter BOGUS"
    await c.close()


async def test_store_unchangedsince_reports_modified_and_keeps_the_read_hook(imap: Running) -> None:
    for i in range(3):
        imap.deliver(simple_message(f"m{i}"))
    c = await imap.raw()
    await c.ok("ENABLE CONDSTORE")
    await c.ok("SELECT INBOX")
    await c.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
    # RFC 7162 §3.1.3: message 2 changed after mod-sequence 3 and is left alone; .SILENT still
    # reports the new mod-sequences of what did change.
    r = await c.ok("UID STORE 1:3 (UNCHANGEDSINCE 3) +FLAGS.SILENT (\\Answered)")
    assert untagged(r) == [b"* 1 FETCH (UID 1 MODSEQ (5))", b"* 3 FETCH (UID 3 MODSEQ (6))"]
    assert tagged(r) == b"OK [MODIFIED 2] UID STORE completed"
    # UNCHANGEDSINCE 0 always fails (RFC 7162 §3.1.3), so no \Seen and no read evidence.
    r = await c.ok("STORE 1:2 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
    assert untagged(r) == [] and tagged(r) == b"OK [MODIFIED 1:2] STORE completed"
    assert imap.backend.seen == []
    r = await c.ok("STORE 3 (UNCHANGEDSINCE 6) +FLAGS (\\Seen)")
    assert untagged(r) == [b"* 3 FETCH (FLAGS (\\Answered \\Seen \\Recent) MODSEQ (7))"]
    assert len(imap.backend.seen) == 1
    r = await c.ok("STORE 3 (UNCHANGEDSINCE 7) FLAGS (\\Seen)")
    assert len(imap.backend.seen) == 1
    # A \Seen set by FETCH under CONDSTORE is reported with its mod-sequence, the hook called once.
    r = await c.ok("FETCH 1 (BINARY.PEEK[1] BODY[TEXT])")
    assert r[0].endswith(b" FLAGS (\\Answered \\Seen \\Recent) MODSEQ (9))\r\n")
    assert len(imap.backend.seen) == 2
    bad = await c.command("STORE 1 (UNCHANGEDSINCE) +FLAGS (\\Seen)")
    assert tagged(bad) == b"BAD STORE: the only STORE modifier is (UNCHANGEDSINCE mod-sequence)"
    await c.close()


async def test_other_sessions_changes_carry_modseq_once_enabled(imap: Running) -> None:
    imap.deliver(simple_message("a"))
    one = await imap.raw()
    two = await imap.raw()
    await one.ok("SELECT INBOX (CONDSTORE)")
    await two.ok("SELECT INBOX")
    await two.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    assert untagged(await one.ok("NOOP")) == [b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (2))"]
    await two.ok("STORE 1 -FLAGS.SILENT (\\Flagged)")
    # Without CONDSTORE enabled the same update has no MODSEQ.
    await two.ok("STORE 1 +FLAGS.SILENT (\\Answered)")
    assert untagged(await two.ok("NOOP")) == []
    assert untagged(await one.ok("NOOP")) == [b"* 1 FETCH (UID 1 FLAGS (\\Answered \\Recent) MODSEQ (4))"]
    await one.close()
    await two.close()


async def test_qresync_vanished_and_resynchronising_select(imap: Running) -> None:
    for i in range(4):
        imap.deliver(simple_message(f"m{i}"))
    c = await imap.raw()
    bad = await c.command("SELECT INBOX (QRESYNC (1 1))")
    assert tagged(bad) == b"BAD SELECT: QRESYNC must be enabled before it is used in SELECT/EXAMINE"
    assert untagged(await c.ok("ENABLE QRESYNC")) == [b"* ENABLED QRESYNC"]
    r = untagged(await c.ok("SELECT INBOX"))
    validity = _validity(r)
    assert r[-1] == b"* OK [HIGHESTMODSEQ 4] highest mod-sequence"
    await c.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    # RFC 7162 §3.2.10: with QRESYNC an expunge is announced as VANISHED, by UID.
    assert untagged(await c.ok("EXPUNGE")) == [b"* VANISHED 2"]
    other = await imap.raw()
    await other.ok("SELECT INBOX")
    await other.ok("UID STORE 3 +FLAGS.SILENT (\\Flagged)")
    await other.ok("UID STORE 4 +FLAGS.SILENT (\\Deleted)")
    await other.ok("UID EXPUNGE 4")
    assert untagged(await c.ok("NOOP")) == [
        b"* VANISHED 4",
        b"* 2 FETCH (UID 3 FLAGS (\\Flagged \\Recent) MODSEQ (7))",
    ]
    r = untagged(await c.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 4 VANISHED)"))
    assert r == [b"* VANISHED (EARLIER) 2,4", b"* 2 FETCH (UID 3 FLAGS (\\Flagged \\Recent) MODSEQ (7))"]
    r = untagged(await c.ok("UID FETCH 3:* (FLAGS) (CHANGEDSINCE 7 VANISHED)"))
    assert r == [b"* VANISHED (EARLIER) 4"]
    # Reselecting with what the client remembers: RFC 7162 §3.2.5.2, after [CLOSED] (§3.2.11).
    r = untagged(await c.ok(f"SELECT INBOX (QRESYNC ({validity} 4 1:4))"))
    assert r[0] == b"* OK [CLOSED] previous mailbox closed"
    assert r[-3:] == [
        b"* OK [HIGHESTMODSEQ 9] highest mod-sequence",
        b"* VANISHED (EARLIER) 2,4",
        b"* 2 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ (7))",
    ]
    r = untagged(await c.ok(f"EXAMINE INBOX (QRESYNC ({validity} 5 3:10 (1:2 1:3)))"))
    assert r[-2:] == [b"* VANISHED (EARLIER) 4", b"* 2 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ (7))"]
    # Another UIDVALIDITY: the client's cache is useless and nothing beyond a plain SELECT is sent.
    r = untagged(await c.ok(f"SELECT INBOX (QRESYNC ({validity + 1} 4))"))
    assert r[-1] == b"* OK [HIGHESTMODSEQ 9] highest mod-sequence"
    bad = await c.command("SELECT INBOX (QRESYNC (0 4))")
    assert tagged(bad) == b"BAD SELECT: invalid UIDVALIDITY in QRESYNC"
    await c.close()
    await other.close()


async def test_modseqs_survive_a_restart(imap: Running) -> None:
    imap.deliver(simple_message("a"))
    c = await imap.raw()
    await c.ok("SELECT INBOX (CONDSTORE)")
    await c.ok("STORE 1 +FLAGS.SILENT ($Important)")
    await c.close()
    await imap.server.close()
    await imap.server.start("127.0.0.1", 0, 0)
    c = await RawClient.connect(imap.imaps, imap.tls.strict_client)
    await c.ok('LOGIN "ali@kep.test" "parola-1"')
    r = untagged(await c.ok("SELECT INBOX (CONDSTORE)"))
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Important)" in r
    assert r[-1] == b"* OK [HIGHESTMODSEQ 2] highest mod-sequence"
    assert untagged(await c.ok("FETCH 1 (MODSEQ FLAGS)")) == [b"* 1 FETCH (MODSEQ (2) FLAGS ($Important))"]
    await c.close()
