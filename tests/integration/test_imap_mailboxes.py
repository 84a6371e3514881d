"""Mailbox commands: LIST/LSUB, CREATE/DELETE/RENAME, SELECT/EXAMINE, STATUS, APPEND, CLOSE, and
the read-only evidence folder."""

from __future__ import annotations

import asyncio
import imaplib
import os
import time

from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    EVIDENCE,
    NESTED,
    RawClient,
    Running,
    imap_fixture,
    ok_data,
    simple_message,
    tagged,
    tls_fixture,
    untagged,
)

from kepmta.imap.index import INDEX
from kepmta.maildir import encode_mutf7

EVIDENCE_WIRE = encode_mutf7(EVIDENCE)


async def test_list_with_special_use_children_and_utf7(imap: Running) -> None:
    md = imap.store()
    md.create("INBOX")
    for name in ("Sent", EVIDENCE, "Projeler.2024.Ocak", "Arşiv"):
        md.create(name)
    c = await imap.raw()
    r = untagged(await c.ok('LIST "" "*"'))
    # The special-use folders (RFC 6154) exist from the first login on.
    assert r == [
        b'* LIST (\\HasNoChildren) "." "INBOX"',
        b'* LIST (\\HasNoChildren) "." "' + encode_mutf7("Arşiv").encode() + b'"',
        b'* LIST (\\HasNoChildren \\Drafts) "." "Drafts"',
        b'* LIST (\\HasNoChildren \\Junk) "." "Junk"',
        b'* LIST (\\HasNoChildren \\Archive) "." "' + EVIDENCE_WIRE.encode() + b'"',
        b'* LIST (\\Noselect \\HasChildren) "." "Projeler"',
        b'* LIST (\\Noselect \\HasChildren) "." "Projeler.2024"',
        b'* LIST (\\HasNoChildren) "." "Projeler.2024.Ocak"',
        b'* LIST (\\HasNoChildren \\Sent) "." "Sent"',
        b'* LIST (\\HasNoChildren \\Trash) "." "Trash"',
    ]
    assert untagged(await c.ok('LIST "" "%"'))[5] == b'* LIST (\\Noselect \\HasChildren) "." "Projeler"'
    assert untagged(await c.ok('LIST "Projeler." "%"')) == [
        b'* LIST (\\Noselect \\HasChildren) "." "Projeler.2024"'
    ]
    assert untagged(await c.ok('LIST "" "inbox"')) == [b'* LIST (\\HasNoChildren) "." "INBOX"']
    assert untagged(await c.ok('LIST "" ""')) == [b'* LIST (\\Noselect) "." ""']
    # The folders made at the first login are subscribed (test_imap_subscriptions has the rest).
    assert untagged(await c.ok('LSUB "" "S*"')) == [b'* LSUB () "." "Sent"']
    await c.ok('SUBSCRIBE "Sent"')
    await c.ok('UNSUBSCRIBE "Sent"')
    assert tagged(await c.command('LIST "" "Ar\xc5\x9fiv"'.encode("latin-1"))).startswith(b"NO")
    await c.close()


async def test_create_delete_rename(imap: Running) -> None:
    c = await imap.raw()
    await c.ok("CREATE Work.Reports.")
    assert os.path.isdir(imap.store().folder_dir("Work") / "cur")
    assert os.path.isfile(imap.store().folder_dir("Work.Reports") / "maildirfolder")
    assert tagged(await c.command("CREATE Work")) == b"NO [ALREADYEXISTS] mailbox already exists"
    assert tagged(await c.command("CREATE inbox")).startswith(b"NO [ALREADYEXISTS]")
    assert tagged(await c.command('CREATE "a*b"')).startswith(b"NO [CANNOT]")
    assert tagged(await c.command('CREATE "a..b"')).startswith(b"NO [CANNOT]")
    assert tagged(await c.command('CREATE "&Jjo"')).startswith(b"NO [CANNOT] unterminated modified-UTF-7")
    imap.deliver(simple_message(), "Work.Reports")
    await c.ok("RENAME Work Job")
    names = [r.rsplit(b" ", 1)[1] for r in untagged(await c.ok('LIST "" "*"'))]
    assert [n for n in names if n.startswith((b'"INBOX', b'"Job', b'"Work'))] == [
        b'"INBOX"',
        b'"Job"',
        b'"Job.Reports"',
    ]
    assert untagged(await c.ok("STATUS Job.Reports (MESSAGES)")) == [b'* STATUS "Job.Reports" (MESSAGES 1)']
    assert tagged(await c.command("RENAME Work Other")).startswith(b"NO [NONEXISTENT]")
    assert tagged(await c.command("RENAME Job Job.Reports")).startswith(b"NO [ALREADYEXISTS]")
    await c.ok("DELETE Job.Reports")
    assert tagged(await c.command("DELETE Job.Reports")).startswith(b"NO [NONEXISTENT]")
    assert tagged(await c.command("DELETE INBOX")).startswith(b"NO [CANNOT]")
    await c.close()


async def test_rename_inbox_moves_its_messages(imap: Running) -> None:
    imap.deliver(simple_message("one"))
    c = await imap.raw()
    await c.ok("RENAME INBOX Old")
    assert untagged(await c.ok("STATUS INBOX (MESSAGES)")) == [b'* STATUS "INBOX" (MESSAGES 0)']
    assert untagged(await c.ok("STATUS Old (MESSAGES)")) == [b'* STATUS "Old" (MESSAGES 1)']
    await c.close()


async def test_select_examine_status(imap: Running) -> None:
    imap.deliver(simple_message("one"))
    imap.deliver(simple_message("two"))
    c = await imap.raw()
    r = await c.ok("STATUS INBOX (MESSAGES RECENT UIDNEXT UNSEEN)")
    assert untagged(r) == [b'* STATUS "INBOX" (MESSAGES 2 RECENT 2 UIDNEXT 3 UNSEEN 2)']
    r = await c.ok("EXAMINE INBOX")
    assert tagged(r) == b"OK [READ-ONLY] EXAMINE completed"
    assert b"* OK [PERMANENTFLAGS ()] flags the client can change permanently" in untagged(r)
    # EXAMINE leaves the messages in new/ and their \Recent to the first SELECT.
    assert len(os.listdir(imap.store().root / "new")) == 2
    r = untagged(await c.ok("SELECT INBOX"))
    assert r[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
    assert r[2:5] == [b"* 2 EXISTS", b"* 2 RECENT", b"* OK [UNSEEN 1] first unseen message"]
    assert r[5].startswith(b"* OK [UIDVALIDITY ") and r[6] == b"* OK [UIDNEXT 3] predicted next UID"
    assert os.listdir(imap.store().root / "new") == []
    assert (imap.store().root / INDEX).exists()
    assert tagged(await c.command("SELECT Nowhere")) == b"NO [NONEXISTENT] no mailbox named Nowhere"
    # A failed SELECT leaves no mailbox selected (RFC 3501 §6.3.1).
    assert tagged(await c.command("FETCH 1 FLAGS")).startswith(b"BAD FETCH is not valid in the authenticated")
    assert tagged(await c.command("STATUS INBOX (BOGUS)")).startswith(b"BAD STATUS: unknown STATUS item")
    assert tagged(await c.command("STATUS Nowhere (MESSAGES)")).startswith(b"NO [NONEXISTENT]")
    r = await c.ok("STATUS INBOX (RECENT UIDVALIDITY)")
    assert untagged(r)[0].startswith(b'* STATUS "INBOX" (RECENT 0 UIDVALIDITY ')
    await c.close()


async def test_append_round_trip_is_byte_exact(imap: Running) -> None:
    when = imaplib.Time2Internaldate(time.mktime((2023, 3, 4, 5, 6, 7, 0, 0, -1)))

    def run(c: imaplib.IMAP4_SSL) -> tuple[list[bytes], bytes, list[bytes]]:
        result = ok_data(c.append("INBOX", "(\\Seen \\Flagged $Label1)", when, NESTED))
        c.select("INBOX")
        data = ok_data(c.fetch("1", "(BODY.PEEK[] FLAGS INTERNALDATE)"))
        return result, data[0][1], [data[0][0], data[1]]

    result, body, meta = await imap.client(run)
    assert result[0].startswith(b"[APPENDUID ") and result[0].endswith(b" 1] APPEND completed")
    assert body == NESTED
    assert b"FLAGS (\\Flagged \\Seen \\Recent $Label1)" in meta[0] + meta[1]
    assert when.encode() in meta[0] + meta[1]
    # The stored file carries the flags in its name and the date as its mtime; APPEND is no read.
    (path,) = (imap.store().root / "cur").iterdir()
    assert path.name.endswith(":2,FS") and path.read_bytes() == NESTED
    assert imap.backend.seen == []


async def test_append_literal_forms_and_errors(imap: Running) -> None:
    c = await imap.raw()
    msg = simple_message("plus")
    await c.send(b"a1 APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert tagged(await c.until_tagged("a1")).startswith(b"OK [APPENDUID ")
    await c.send(b"a2 APPEND INBOX (\\Draft) {%d}\r\n" % len(msg))
    assert (await c.response()).startswith(b"+ ")
    await c.send(msg + b"\r\n")
    assert tagged(await c.until_tagged("a2")).endswith(b" 2] APPEND completed")
    r = await c.command(b"APPEND Nowhere {1+}\r\nx")
    assert tagged(r) == b"NO [TRYCREATE] no mailbox named Nowhere"
    assert tagged(await c.command("APPEND INBOX message")).startswith(b"BAD APPEND: the message must")
    assert tagged(await c.command('APPEND INBOX "not a date"')).startswith(b"BAD APPEND: invalid date-time")
    r = await c.command(b'APPEND INBOX "32-Jan-2024 00:00:00 +0000" {1+}\r\nx')
    assert tagged(r).startswith(b"BAD APPEND: invalid date-time")
    r = await c.command(b"APPEND INBOX (\\Recent) {1+}\r\nx")
    assert tagged(r) == b"BAD APPEND: \\Recent cannot be set by a client"
    r = await c.command(b"APPEND INBOX (\\Bogus) {1+}\r\nx")
    assert tagged(r) == b"BAD APPEND: unknown system flag \\Bogus"
    assert untagged(await c.ok("STATUS INBOX (MESSAGES)")) == [b'* STATUS "INBOX" (MESSAGES 2)']
    # APPEND to the selected mailbox is announced.
    await c.ok("SELECT INBOX")
    r = await c.ok(b"APPEND INBOX {%d+}\r\n" % len(msg) + msg)
    assert b"* 3 EXISTS" in untagged(r)
    await c.close()


async def test_close_expunges_silently_unselect_does_not(imap: Running) -> None:
    for i in range(3):
        imap.deliver(simple_message(f"m{i}"))
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    await c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await c.ok("UNSELECT")
    await c.ok("SELECT INBOX")
    r = await c.ok("CLOSE")
    assert untagged(r) == []
    assert untagged(await c.ok("STATUS INBOX (MESSAGES)")) == [b'* STATUS "INBOX" (MESSAGES 2)']
    await c.ok("EXAMINE INBOX")
    await c.ok("CLOSE")
    assert tagged(await c.command("CLOSE")).startswith(b"BAD CLOSE is not valid")
    await c.close()


async def test_evidence_folder_is_read_only(imap: Running) -> None:
    imap.store().create("INBOX")
    imap.deliver(simple_message("evidence"), EVIDENCE)
    imap.deliver(simple_message("mail"))
    c = await imap.raw()
    name = EVIDENCE_WIRE
    msg = simple_message("x")
    r = await c.command(f'APPEND "{name}" {{{len(msg)}+}}\r\n'.encode() + msg)
    assert tagged(r).startswith(b"NO [CANNOT] APPEND is not permitted")
    assert tagged(await c.command(f'DELETE "{name}"')).startswith(b"NO [CANNOT]")
    assert tagged(await c.command(f'RENAME "{name}" Other')).startswith(b"NO [CANNOT]")
    await c.ok("CREATE Other")
    assert tagged(await c.command(f'RENAME Other "{name}"')).startswith(b"NO [CANNOT]")
    await c.ok("SELECT INBOX")
    assert tagged(await c.command(f'COPY 1 "{name}"')).startswith(b"NO [CANNOT]")
    assert tagged(await c.command(f'MOVE 1 "{name}"')).startswith(b"NO [CANNOT]")
    r = untagged(await c.ok(f'SELECT "{name}"'))
    assert b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Seen \\Draft)]" in r[1]
    assert tagged(await c.command("STORE 1 +FLAGS (\\Deleted)")).startswith(b"NO [CANNOT]")
    assert tagged(await c.command("STORE 1 FLAGS (\\Deleted \\Seen)")).startswith(b"NO [CANNOT]")
    assert tagged(await c.command("EXPUNGE")).startswith(b"NO [CANNOT]")
    assert tagged(await c.command("UID EXPUNGE 1")).startswith(b"NO [CANNOT]")
    assert tagged(await c.command("MOVE 1 INBOX")).startswith(b"NO [CANNOT]")
    # Reading and flagging are fine, and so is copying out.
    r = await c.ok("STORE 1 +FLAGS (\\Flagged)")
    assert untagged(r) == [b"* 1 FETCH (FLAGS (\\Flagged \\Recent))"]
    assert tagged(await c.ok("COPY 1 INBOX")).startswith(b"OK [COPYUID ")
    await c.ok("CLOSE")
    assert untagged(await c.ok(f'STATUS "{name}" (MESSAGES)'))[0].endswith(b"(MESSAGES 1)")
    await c.close()


async def test_concurrent_appends_get_distinct_uids(imap: Running) -> None:
    imap.store().create("Sent")
    clients = [await imap.raw() for _ in range(4)]
    big = simple_message("big", "y" * 2_000_000)

    async def append(c: RawClient, n: int) -> bytes:
        msg = big if n % 2 else simple_message(f"s{n}")
        return tagged(await c.ok(b"APPEND Sent {%d+}\r\n" % len(msg) + msg))

    results = await asyncio.gather(*(append(c, n) for n, c in enumerate(clients)))
    uids = sorted(int(r.split(b"]")[0].rsplit(b" ", 1)[1]) for r in results)
    assert uids == [1, 2, 3, 4]
    r = untagged(await clients[0].ok("STATUS Sent (MESSAGES UIDNEXT)"))
    assert r == [b'* STATUS "Sent" (MESSAGES 4 UIDNEXT 5)']
    for c in clients:
        await c.close()
