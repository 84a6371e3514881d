"""Another program renames message files behind the server's back (Dovecot setting \\Seen, mbsync,
a script): a message is its Maildir base name, so its UID stays and its flags follow the new name,
whether a session is selected and idling, no session is open, or the server was stopped meanwhile."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    PASSWORD,
    USER,
    Backend,
    RawClient,
    Running,
    Tls,
    imap_fixture,
    simple_message,
    tls_fixture,
    untagged,
)

from kepmta.imap.notify import Inotify
from kepmta.imap.server import ImapServer
from kepmta.maildir import Maildir


def _only(directory: Path) -> Path:
    names = os.listdir(directory)
    assert len(names) == 1, names
    return directory / names[0]


def _cur_file(md: Maildir, subject: str) -> Path:
    """The file in cur/ holding the message with `subject`."""
    cur = md.folder_dir("INBOX") / "cur"
    hits = [cur / n for n in os.listdir(cur) if f"Subject: {subject}\r\n".encode() in (cur / n).read_bytes()]
    assert len(hits) == 1, hits
    return hits[0]


def _rename_info(path: Path, info: str) -> Path:
    """What Dovecot does on STORE: the same base name with another `:2,` info part."""
    target = path.parent / (path.name.partition(":")[0] + ":2," + info)
    os.rename(path, target)
    return target


def _modseq(line: bytes) -> int:
    found = re.search(rb"MODSEQ \((\d+)\)", line)
    assert found, line
    return int(found.group(1))


def _highestmodseq(responses: list[bytes]) -> int:
    for r in responses:
        found = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", r)
        if found:
            return int(found.group(1))
    raise AssertionError(responses)


async def _fetch_all(c: RawClient) -> list[bytes]:
    return untagged(await c.ok("UID FETCH 1:* (FLAGS)"))


async def test_rename_while_idle_is_a_flag_change(imap: Running) -> None:
    md = imap.store()
    imap.deliver(simple_message("one"))
    imap.deliver(simple_message("two"))
    c = await imap.raw()
    await c.ok("ENABLE CONDSTORE")
    await c.ok("SELECT INBOX")
    before = _modseq(untagged(await c.ok("UID FETCH 1 (MODSEQ)"))[0])
    await c.send(b"i1 IDLE\r\n")
    assert await c.response() == b"+ idling\r\n"

    # Dovecot's STORE +FLAGS \Seen: cur/BASE:2, becomes cur/BASE:2,S in one rename.
    _rename_info(_cur_file(md, "one"), "S")
    pushed = (await c.response()).rstrip(b"\r\n")
    assert pushed.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) MODSEQ (")
    assert _modseq(pushed) > before
    # A second program's change with several letters, to the other message.
    _rename_info(_cur_file(md, "two"), "FS")
    pushed = (await c.response()).rstrip(b"\r\n")
    assert pushed.startswith(b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Seen \\Recent) MODSEQ (")
    await c.send(b"DONE\r\n")
    assert await c.response() == b"i1 OK IDLE terminated\r\n"

    r = await c.ok("STATUS INBOX (MESSAGES UIDNEXT UNSEEN)")
    assert untagged(r) == [b'* STATUS "INBOX" (MESSAGES 2 UIDNEXT 3 UNSEEN 0)']
    assert [re.sub(rb" MODSEQ \(\d+\)", b"", line) for line in await _fetch_all(c)] == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))",
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Seen \\Recent))",
    ]
    await c.close()


async def test_move_from_new_to_cur_by_another_program_keeps_the_uid(imap: Running) -> None:
    md = imap.store()
    delivered = imap.deliver(simple_message("fresh"))
    c = await imap.raw()
    # EXAMINE leaves the file in new/, as when only Dovecot has the folder open read-write.
    await c.ok("EXAMINE INBOX")
    assert delivered.exists()
    await c.send(b"i1 IDLE\r\n")
    assert await c.response() == b"+ idling\r\n"
    # Dovecot takes the message into cur/ and sets \Seen in the same rename.
    os.rename(delivered, md.folder_dir("INBOX") / "cur" / (delivered.name + ":2,S"))
    assert await c.response() == b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))\r\n"
    await c.send(b"DONE\r\n")
    assert await c.response() == b"i1 OK IDLE terminated\r\n"
    assert untagged(await c.ok("NOOP")) == []
    body = untagged(await c.ok("UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert b"Subject: fresh" in body[0]
    await c.close()


async def test_renames_while_no_session_is_open(imap: Running) -> None:
    md = imap.store()
    for subject in ("a", "b", "c"):
        imap.deliver(simple_message(subject))
    c = await imap.raw()
    await c.ok("ENABLE CONDSTORE")
    highest = _highestmodseq(await c.ok("SELECT INBOX"))
    await c.ok("LOGOUT")
    await c.close()

    _rename_info(_cur_file(md, "a"), "S")
    _rename_info(_cur_file(md, "c"), "RS")

    c = await imap.raw()
    await c.ok("ENABLE CONDSTORE")
    r = await c.ok("SELECT INBOX")
    assert b"* 3 EXISTS\r\n" in r and b"* OK [UIDNEXT 4] predicted next UID\r\n" in r
    assert _highestmodseq(r) > highest
    changed = untagged(await c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})"))
    assert [re.sub(rb" MODSEQ \(\d+\)", b"", line) for line in changed] == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen))",
        b"* 3 FETCH (UID 3 FLAGS (\\Answered \\Seen))",
    ]
    await c.close()


async def test_renames_while_the_server_is_stopped(imap: Running) -> None:
    md = imap.store()
    for subject in ("a", "b", "c"):
        imap.deliver(simple_message(subject))
    c = await imap.raw()
    await c.ok("ENABLE CONDSTORE")
    first = await c.ok("SELECT INBOX")
    await c.ok("UID STORE 2 +FLAGS.SILENT (\\Flagged kept)")
    validity = re.search(rb"\[UIDVALIDITY (\d+)\]", b"".join(first))
    await c.ok("LOGOUT")
    await c.close()
    # Directory times well in the past, so the index is trusted only as long as they do not move.
    inbox = md.folder_dir("INBOX")
    past = time.time() - 3600
    for sub in ("new", "cur"):
        os.utime(inbox / sub, (past, past))
    c = await imap.raw()
    highest = _highestmodseq(await c.ok("EXAMINE INBOX"))
    await c.close()
    await imap.server.close()

    _rename_info(_cur_file(md, "a"), "S")
    # A script re-creates a message's name (keywords are kept in the index, not the name).
    _rename_info(_cur_file(md, "b"), "DF")
    imap.deliver(simple_message("d"))
    os.rename(_only(inbox / "new"), inbox / "cur" / (_only(inbox / "new").name + ":2,T"))

    await imap.server.start("127.0.0.1", 0, 0)
    c = await RawClient.connect(imap.imaps, imap.tls.strict_client)
    await c.ok(f'LOGIN "{USER}" "{PASSWORD}"')
    await c.ok("ENABLE CONDSTORE")
    r = await c.ok("SELECT INBOX")
    assert validity is not None and b"* OK [UIDVALIDITY %s] UIDs valid\r\n" % validity.group(1) in r
    assert b"* 4 EXISTS\r\n" in r and b"* OK [UIDNEXT 5] predicted next UID\r\n" in r
    assert _highestmodseq(r) > highest
    flags = [re.sub(rb" MODSEQ \(\d+\)", b"", line) for line in await _fetch_all(c)]
    assert flags == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen))",
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Draft kept))",
        b"* 3 FETCH (UID 3 FLAGS ())",
        b"* 4 FETCH (UID 4 FLAGS (\\Deleted \\Recent))",
    ]
    changed = untagged(await c.ok(f"UID FETCH 1:3 (FLAGS) (CHANGEDSINCE {highest})"))
    assert [line.split(b" FLAGS")[0] for line in changed] == [b"* 1 FETCH (UID 1", b"* 2 FETCH (UID 2"]
    await c.close()


async def test_renames_seen_by_polling_without_inotify(
    tmp_path: Path, tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Inotify, "create", classmethod(lambda cls, sink: None))
    backend = Backend(tmp_path / "mail")
    server = ImapServer(backend, tls.server)
    await server.start("127.0.0.1", None, 0)
    running = Running(server, backend, tls)
    try:
        md = running.store()
        running.deliver(simple_message("one"))
        running.deliver(simple_message("two"))
        c = await running.raw()
        await c.ok("SELECT INBOX")
        _rename_info(_cur_file(md, "two"), "S")
        assert untagged(await c.ok("NOOP")) == [b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))"]
        assert await _fetch_all(c) == [
            b"* 1 FETCH (UID 1 FLAGS (\\Recent))",
            b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))",
        ]
        await c.close()
    finally:
        await server.close()
