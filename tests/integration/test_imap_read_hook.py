"""The read hook (`ImapBackend.on_seen`): it produces legal evidence, so every case is pinned down."""

from __future__ import annotations

import imaplib

from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    EVIDENCE,
    NESTED,
    USER,
    Running,
    imap_fixture,
    iter_fetch_literals,
    ok_data,
    simple_message,
    tagged,
    tls_fixture,
    untagged,
)

from kepmta.maildir import encode_mutf7


def _current_path(imap: Running, folder: str = "INBOX") -> str:
    (path,) = (imap.store().folder_dir(folder) / "cur").iterdir()
    return str(path)


async def test_peek_does_not_call_and_fetch_calls_once(imap: Running) -> None:
    imap.deliver(NESTED)
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    for peek in (
        "BODY.PEEK[]",
        "BODY.PEEK[TEXT]",
        "BODY.PEEK[1]",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "FLAGS",
        "ENVELOPE",
        "BODYSTRUCTURE",
        "BODY",
        "INTERNALDATE",
    ):
        await c.ok(f"FETCH 1 ({peek})")
    assert imap.backend.seen == []
    assert untagged(await c.ok("FETCH 1 FLAGS")) == [b"* 1 FETCH (FLAGS (\\Recent))"]

    unread = _current_path(imap)
    r = await c.ok("FETCH 1 BODY[]")
    assert list(iter_fetch_literals(r)) == [NESTED]
    # RFC 3501 §6.4.5: the \Seen that FETCH set is reported with the data.
    assert r[0].endswith(b" FLAGS (\\Seen \\Recent))\r\n")
    assert _current_path(imap).endswith(":2,S")
    # The hook ran first, on the file as it was before \Seen: a crash between the two leaves the
    # message unread rather than read without evidence.
    assert [(u, m, str(p)) for u, m, p in imap.backend.seen] == [(USER, "INBOX", unread)]

    await c.ok("FETCH 1 BODY[]")
    await c.ok("FETCH 1 RFC822")
    assert len(imap.backend.seen) == 1
    await c.close()


async def test_store_seen_calls_only_on_transition(imap: Running) -> None:
    imap.deliver(simple_message())
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    await c.ok("STORE 1 +FLAGS (\\Seen)")
    assert len(imap.backend.seen) == 1
    await c.ok("STORE 1 +FLAGS (\\Seen)")
    await c.ok("STORE 1 FLAGS (\\Seen \\Flagged)")
    assert len(imap.backend.seen) == 1
    await c.ok("STORE 1 -FLAGS (\\Seen)")
    await c.ok("FETCH 1 BODY[TEXT]")
    assert len(imap.backend.seen) == 2
    await c.ok("STORE 1 FLAGS ()")
    await c.ok("UID STORE 1 FLAGS.SILENT (\\Seen)")
    await c.ok("STORE 1 -FLAGS.SILENT (\\Seen)")
    await c.ok("FETCH 1 RFC822.TEXT")
    await c.ok("STORE 1 -FLAGS.SILENT (\\Seen)")
    await c.ok("UID FETCH 1 RFC822")
    assert len(imap.backend.seen) == 5
    # Every call carried the file's name as it was right before \Seen was set, which came after.
    assert not any(str(p).endswith("S") for _, _, p in imap.backend.seen)
    assert str(imap.backend.seen[-1][2]) + "S" == _current_path(imap)
    await c.close()


async def test_examine_never_calls_or_changes_flags(imap: Running) -> None:
    imap.deliver(simple_message())
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    r = await c.ok("FETCH 1 (BODY[] RFC822 RFC822.TEXT FLAGS)")
    assert b"\\Seen" not in r[0]
    assert imap.backend.seen == []
    assert untagged(await c.ok("STATUS INBOX (UNSEEN)")) == [b'* STATUS "INBOX" (UNSEEN 1)']
    # The file was neither renamed nor moved out of new/.
    assert [p.name.startswith("Ktest") for p in (imap.store().root / "new").iterdir()] == [True]
    await c.close()


async def test_append_with_seen_does_not_call(imap: Running) -> None:
    def run(c: imaplib.IMAP4_SSL) -> None:
        ok_data(c.append("INBOX", "(\\Seen)", None, simple_message()))
        c.select("INBOX")
        ok_data(c.fetch("1", "(BODY[])"))

    await imap.client(run)
    assert imap.backend.seen == []


async def test_evidence_folder_reads_are_reported_with_its_name(imap: Running) -> None:
    imap.store().create("INBOX")
    imap.deliver(simple_message(), EVIDENCE)
    c = await imap.raw()
    await c.ok(f'SELECT "{encode_mutf7(EVIDENCE)}"')
    unread = _current_path(imap, EVIDENCE)
    await c.ok("FETCH 1 BODY[1]")
    assert [(m, str(p)) for _, m, p in imap.backend.seen] == [(EVIDENCE, unread)]
    await c.close()


async def test_hook_failure_undoes_seen_and_withholds_the_body(imap: Running) -> None:
    imap.deliver(simple_message())
    imap.backend.fail_seen = True
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    r = await c.command("FETCH 1 BODY[]")
    assert tagged(r) == b"NO [SERVERBUG] could not record the read receipt; try again"
    assert list(iter_fetch_literals(r)) == []
    r = await c.command("STORE 1 +FLAGS (\\Seen)")
    assert tagged(r).startswith(b"NO [SERVERBUG]")
    assert untagged(await c.ok("FETCH 1 FLAGS")) == [b"* 1 FETCH (FLAGS (\\Recent))"]
    imap.backend.fail_seen = False
    await c.ok("FETCH 1 BODY[]")
    assert len(imap.backend.seen) == 1
    await c.close()


async def test_imaplib_reads(imap: Running) -> None:
    imap.deliver(simple_message("one"))
    imap.deliver(simple_message("two"))

    def run(c: imaplib.IMAP4_SSL) -> None:
        c.select("INBOX")
        ok_data(c.fetch("1:2", "(BODY.PEEK[])"))
        ok_data(c.fetch("2", "(RFC822)"))

    await imap.client(run)
    assert len(imap.backend.seen) == 1
    # The hook is given the file before \Seen is set on it (see Session._mark_seen).
    assert "Ktest" in str(imap.backend.seen[0][2]) and str(imap.backend.seen[0][2]).endswith(":2,")
