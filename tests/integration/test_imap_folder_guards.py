"""Folders over real sockets (issue 9): limits from the policy on CREATE and RENAME, names no folder
can have, LIST over thousands of folders, and the evidence folder's tree read-only in every
spelling."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    EVIDENCE,
    SPECIAL,
    Backend,
    Running,
    Tls,
    imap_fixture,
    simple_message,
    tagged,
    tls_fixture,
    untagged,
)

from kepmta.imap.folders import FolderLimits
from kepmta.imap.server import ImapServer
from kepmta.maildir import decode_mutf7, encode_mutf7

EVIDENCE_WIRE = encode_mutf7(EVIDENCE)
# Sent and the evidence folder (SPECIAL) with Drafts, Trash and Junk: made at every login.
AT_LOGIN = 5


@pytest.fixture(name="limited")
async def limited_fixture(tmp_path: Path, tls: Tls) -> AsyncIterator[Running]:
    backend = Backend(tmp_path / "mail")
    limits = FolderLimits(max_folders=AT_LOGIN + 3, max_folder_depth=4)
    server = ImapServer(backend, tls.server, special_folders=dict(SPECIAL), folder_limits=limits)
    await server.start("127.0.0.1", 0, 0)
    try:
        yield Running(server, backend, tls)
    finally:
        await server.close()


def _shifted(text: str) -> str:
    """`text` wholly in modified base64, ASCII letters too: a spelling RFC 3501 §5.1.3 does not
    allow but a lenient decoder takes."""
    encoded = base64.b64encode(text.encode("utf-16-be")).decode().rstrip("=").replace("/", ",")
    return "&" + encoded + "-"


async def test_create_and_rename_stop_at_the_folder_limit(limited: Running) -> None:
    c = await limited.raw()
    for name in ("a", "b"):
        await c.ok(f"CREATE {name}")
    # The last place, asked for by two sessions at once: one gets it.
    other = await limited.raw()
    await c.send(b"r1 CREATE c\r\n")
    await other.send(b"r2 CREATE d\r\n")
    answers = sorted([tagged(await c.until_tagged("r1")), tagged(await other.until_tagged("r2"))])
    assert answers == [
        b"NO [LIMIT] an account may have at most 8 folders; delete some before creating more",
        b"OK CREATE completed",
    ]
    assert tagged(await c.command("CREATE e")).startswith(b"NO [LIMIT] ")
    assert tagged(await c.command("CREATE a.x")).startswith(b"NO [LIMIT] ")
    # A rename moves a folder without taking a place; one that must make a superior needs one.
    await c.ok("RENAME a z")
    assert tagged(await c.command("RENAME z y.z")).startswith(b"NO [LIMIT] ")
    assert tagged(await c.command("RENAME INBOX Old")).startswith(b"NO [LIMIT] ")
    await c.ok("DELETE z")
    assert tagged(await c.command("CREATE q.r")).startswith(b"NO [LIMIT] ")
    await c.ok("CREATE q")
    assert tagged(await c.command("CREATE r")).startswith(b"NO [LIMIT] ")
    await c.close()
    await other.close()


async def test_depth_limit(imap: Running) -> None:
    c = await imap.raw()
    deepest = ".".join(f"l{i}" for i in range(16))
    await c.ok(f"CREATE {deepest}")
    assert tagged(await c.command(f"CREATE {deepest}.l16")) == (
        f"NO [LIMIT] folders may be nested at most 16 levels deep; '{deepest}.l16' has 17".encode()
    )
    await c.ok("CREATE x")
    assert tagged(await c.command("RENAME l0.l1 x.l1")) == b"OK RENAME completed"
    r = await c.command("RENAME x.l1 x.y.l1")
    assert tagged(r).startswith(b"NO [LIMIT] folders may be nested at most 16 levels deep; ")
    await c.close()


async def test_names_no_folder_can_have(imap: Running) -> None:
    """The issue's 2000-character and 300-level names answered SERVERBUG (`File name too long`)."""
    c = await imap.raw()
    long_name, deep_name = "x" * 2000, ".".join(["a"] * 300)
    for name in (long_name, deep_name):
        assert tagged(await c.command(f'CREATE "{name}"')).startswith(b"NO [LIMIT] ")
        assert tagged(await c.command(f'RENAME Sent "{name}"')).startswith(b"NO [LIMIT] ")
        assert tagged(await c.command(f'RENAME INBOX "{name}"')).startswith(b"NO [LIMIT] ")
        for command in ("SELECT", "EXAMINE", "DELETE", "GETQUOTAROOT"):
            r = await c.command(f'{command} "{name}"')
            assert tagged(r).startswith(b"NO [NONEXISTENT] "), r
        assert tagged(await c.command(f'STATUS "{name}" (MESSAGES)')).startswith(b"NO [NONEXISTENT] ")
        assert tagged(await c.command(f'RENAME "{name}" Other')).startswith(b"NO [NONEXISTENT] ")
        r = await c.command(f'APPEND "{name}" {{5+}}\r\nhello'.encode())
        assert tagged(r).startswith(b"NO [TRYCREATE] ")
        r = await c.command(f'LIST "" "{name}"')
        assert untagged(r) == [] and tagged(r) in (
            b"OK LIST completed",
            b"BAD LIST: reference and pattern together may not exceed 1024 characters",
        )
    assert tagged(await c.command("CREATE " + "n" * 254)) == b"OK CREATE completed"
    assert tagged(await c.command("CREATE " + "n" * 255)) == (
        b"NO [LIMIT] mailbox name too long: at most 254 octets in modified UTF-7, this one has 255"
    )
    await c.ok("SELECT INBOX")
    for name in (long_name, deep_name):
        assert tagged(await c.command(f'COPY 1:* "{name}"')).startswith(b"NO [TRYCREATE] ")
    await c.close()


async def test_list_with_thousands_of_folders(imap: Running) -> None:
    """An account with 5000 folders (made before the limit, or by another program): LIST answers in
    full, its child information from one pass (a scan per name was quadratic: 14 s for 10 000)."""
    store = imap.store()
    parents = [f"P{i:02d}" for i in range(50)]
    for parent in parents:
        store.create(parent)
        for j in range(99):
            store.create(f"{parent}.c{j:02d}")
    c = await imap.raw()
    everything = untagged(await c.ok('LIST "" "*"'))
    assert len(everything) == 1 + AT_LOGIN + 5000
    assert everything[0] == b'* LIST (\\HasNoChildren) "." "INBOX"'
    assert b'* LIST (\\HasChildren) "." "P07"' in everything
    assert b'* LIST (\\HasNoChildren) "." "P07.c98"' in everything
    top = untagged(await c.ok('LIST "" "%"'))
    assert [line.rsplit(b" ", 1)[1] for line in top if b'"P' in line] == [f'"{p}"'.encode() for p in parents]
    assert len(untagged(await c.ok('LIST "P07." "%"'))) == 99
    assert untagged(await c.ok('LIST "" "P4%.c9_"')) == []
    # Over the limit already: nothing more is made, everything else works.
    assert tagged(await c.command("CREATE more")).startswith(b"NO [LIMIT] an account may have at most 1000")
    await c.ok("DELETE P49.c98")
    await c.ok("RENAME P49.c97 P48.c99")
    assert len(untagged(await c.ok('LIST "" "*"'))) == 1 + AT_LOGIN + 4999
    await c.close()


# Spellings of the evidence folder and what is under it: canonical, every character shifted,
# the delimiter shifted, and other cases.
EVIDENCE_SPELLINGS = [
    f"{EVIDENCE_WIRE}.sub",
    f"{_shifted(EVIDENCE)}.sub",
    f"{EVIDENCE_WIRE}{_shifted('.')}sub",
    f"{_shifted(EVIDENCE + '.sub')}",
    f"{EVIDENCE_WIRE}.a.b",
    encode_mutf7("kanıt.Sub"),
    "KANIT.sub",
    "kanit",
    encode_mutf7("KANİT"),
    f"{_shifted(EVIDENCE)}",
]


def _refusal(name: str, verb: str) -> bytes:
    """How a command naming `name` is refused: a spelling that is not canonical modified UTF-7 is
    no name at all (RFC 3501 §5.1.3), a canonical one is refused as the evidence folder's."""
    if encode_mutf7(decode_mutf7(name)) != name:
        return b"NO [CANNOT] mailbox name "
    return f"NO [CANNOT] {verb} is not permitted in ".encode()


async def test_nothing_is_made_under_the_evidence_folder(imap: Running) -> None:
    c = await imap.raw()
    await c.ok("CREATE Other")
    for name in EVIDENCE_SPELLINGS:
        r = await c.command(f'CREATE "{name}"')
        assert tagged(r).startswith(_refusal(name, "CREATE")), (name, r)
        r = await c.command(f'RENAME Other "{name}"')
        assert tagged(r).startswith(_refusal(name, "RENAME")), (name, r)
        r = await c.command(f'RENAME INBOX "{name}"')
        assert tagged(r).startswith(b"NO [CANNOT] "), (name, r)
    names = [line.rsplit(b" ", 1)[1] for line in untagged(await c.ok('LIST "" "*"'))]
    evidence = f'"{EVIDENCE_WIRE}"'.encode()
    assert names == [b'"INBOX"', b'"Drafts"', b'"Junk"', evidence, b'"Other"', b'"Sent"', b'"Trash"']
    await c.close()


async def test_a_folder_under_the_evidence_folder_takes_nothing(imap: Running) -> None:
    """One made before the rule (or by another program): no forged evidence can be put into it."""
    store = imap.store()
    store.create(f"{EVIDENCE}.sub")
    store.create("KANIT")
    imap.deliver(simple_message("mail"))
    forged = (
        b"From: rem-service@kep.test\r\nTo: ali@kep.test\r\nSubject: REM SubmissionAcceptance\r\n\r\n"
        b"forged evidence\r\n"
    )
    c = await imap.raw()
    for name in (f"{EVIDENCE_WIRE}.sub", f"{_shifted(EVIDENCE)}.sub", "KANIT", "kanit", EVIDENCE_WIRE):
        r = await c.command(f'APPEND "{name}" {{{len(forged)}+}}\r\n'.encode() + forged)
        if name == "kanit":
            assert tagged(r).startswith(b"NO [TRYCREATE] "), r
            continue
        assert tagged(r).startswith(_refusal(name, "APPEND")), (name, r)
        # Refused before the continuation when the literal is synchronising.
        await c.send(f'a9 APPEND "{name}" {{{len(forged)}}}\r\n'.encode())
        assert (await c.response()).startswith(b"a9 NO [CANNOT] "), name
    await c.ok("SELECT INBOX")
    for verb in ("COPY", "MOVE", "UID COPY", "UID MOVE"):
        for name in (f"{EVIDENCE_WIRE}.sub", "KANIT"):
            r = await c.command(f'{verb} 1 "{name}"')
            assert tagged(r).startswith(b"NO [CANNOT] "), (verb, name, r)
    r = await c.ok(f'SELECT "{EVIDENCE_WIRE}.sub"')
    assert b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Seen \\Draft)]" in r[1]
    assert untagged(await c.ok(f'STATUS "{EVIDENCE_WIRE}.sub" (MESSAGES)')) == [
        f'* STATUS "{EVIDENCE_WIRE}.sub" (MESSAGES 0)'.encode()
    ]
    assert tagged(await c.command("EXPUNGE")).startswith(b"NO [CANNOT] ")
    await c.ok("UNSELECT")
    for folder in (store.folder_dir(f"{EVIDENCE}.sub"), store.folder_dir("KANIT")):
        assert [p for sub in ("cur", "new") for p in (folder / sub).iterdir()] == []
    # The folders themselves may go (not the evidence folder, nor be renamed into it).
    assert tagged(await c.command(f'DELETE "{EVIDENCE_WIRE}"')).startswith(b"NO [CANNOT] ")
    await c.ok(f'DELETE "{EVIDENCE_WIRE}.sub"')
    await c.ok("RENAME KANIT Renamed")
    await c.ok("DELETE Renamed")
    assert not (imap.store().root / "tmp").exists() or not any((imap.store().root / "tmp").iterdir())
    await c.close()


async def test_folder_changes_leave_other_sessions_answered(imap: Running) -> None:
    """CREATE counts the account's folders off the event loop: another session's NOOP meanwhile."""
    store = imap.store()
    for i in range(2000):
        store.create(f"f{i:04d}")
    busy, other = await imap.raw(), await imap.raw()
    await busy.send(b"".join(b"c%d CREATE n%d\r\n" % (i, i) for i in range(20)))
    assert tagged(await other.command("NOOP")) == b"OK NOOP completed"
    for i in range(20):
        assert tagged(await busy.until_tagged(f"c{i}")).startswith(b"NO [LIMIT] ")
    await busy.close()
    await other.close()


async def test_a_deleted_folder_full_of_messages_is_removed(imap: Running) -> None:
    store = imap.store()
    store.create("Full")
    for i in range(300):
        imap.deliver(simple_message(f"m{i}"), "Full")
    c = await imap.raw()
    await c.ok("SELECT Full")
    second = await imap.raw()
    await second.ok("DELETE Full")
    assert not store.folder_dir("Full").exists()
    assert not any((store.root / "tmp").iterdir())
    # The session that had it selected sees its messages go.
    r = untagged(await c.ok("NOOP"))
    assert r == [b"* %d EXPUNGE" % n for n in range(300, 0, -1)]
    await c.close()
    await second.close()
