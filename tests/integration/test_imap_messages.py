"""Message commands: FETCH sections and partials (exact octets), SEARCH, STORE, COPY, MOVE, EXPUNGE."""

from __future__ import annotations

import imaplib
import os
import re
from typing import Any

from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    NESTED,
    Running,
    imap_fixture,
    iter_fetch_literals,
    ok_data,
    simple_message,
    span,
    tagged,
    tls_fixture,
    untagged,
)

HEADER_END = NESTED.index(b"\r\n\r\n") + 4
INNER_MESSAGE = span(NESTED, b"From: Inner Sender", b"\r\n--outer-b--")


async def _fetch_one(imap: Running, items: str, uid: bool = False) -> bytes:
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    r = await c.ok(("UID FETCH 1 " if uid else "FETCH 1 ") + items)
    await c.close()
    assert len(r) == 2, r
    return r[0]


async def test_body_sections_are_exact_octets(imap: Running) -> None:
    imap.deliver(NESTED)
    cases = {
        "BODY.PEEK[]": NESTED,
        "BODY.PEEK[HEADER]": NESTED[:HEADER_END],
        "BODY.PEEK[TEXT]": NESTED[HEADER_END:],
        "BODY.PEEK[1]": b"Merhaba d\xc3\xbcnya\r\nikinci sat\xc4\xb1r",
        "BODY.PEEK[1.MIME]": span(NESTED, b"Content-Type: text/plain; charset=utf-8", b"Merhaba"),
        "BODY.PEEK[2]": span(NESTED, b"--alt-b\r\nContent-Type: text/plain", b"\r\n--outer-b"),
        "BODY.PEEK[2.1]": b"plain alternative",
        "BODY.PEEK[2.2]": b"<p>html =3D alternative</p>",
        "BODY.PEEK[3]": INNER_MESSAGE,
        "BODY.PEEK[3.MIME]": b"Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n",
        "BODY.PEEK[3.HEADER]": INNER_MESSAGE[: INNER_MESSAGE.index(b"\r\n\r\n") + 4],
        "BODY.PEEK[3.TEXT]": INNER_MESSAGE[INNER_MESSAGE.index(b"\r\n\r\n") + 4 :],
        "BODY.PEEK[3.1]": b"inner text body",
        "BODY.PEEK[3.2]": b"JVBERi0xLjQKc2VhcmNoYWJsZT8K",
        "BODY.PEEK[3.2.MIME]": span(NESTED, b"Content-Type: application/pdf", b"JVBER"),
        "BODY.PEEK[HEADER.FIELDS (SUBJECT to)]": span(NESTED, b"To: ", b"Cc:")
        + span(NESTED, b"Subject:", b"Date:")
        + b"\r\n",
        "BODY.PEEK[3.HEADER.FIELDS.NOT (From Message-ID Content-Type)]": b"Subject: inner subject\r\n\r\n",
        "BODY.PEEK[]<0.10>": NESTED[:10],
        "BODY.PEEK[TEXT]<5.20>": NESTED[HEADER_END + 5 : HEADER_END + 25],
        "BODY.PEEK[3.1]<6.1000>": b"text body",
        "BODY.PEEK[]<99999.10>": b"",
        "BODY.PEEK[HEADER]<0.6>": b"Return",
        "RFC822.HEADER": NESTED[:HEADER_END],
    }
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    for item, expected in cases.items():
        r = await c.ok("FETCH 1 (" + item + ")")
        (value,) = list(iter_fetch_literals(r[:-1]))
        assert value == expected, item
    r = await c.ok("FETCH 1 (BODY.PEEK[4] BODY.PEEK[1.HEADER])")
    assert r[0] == b'* 1 FETCH (BODY[4] "" BODY[1.HEADER] "")\r\n'
    r = await c.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)]<0.4> BODY.PEEK[3.1]<2.3>)")
    assert r[0] == b"* 1 FETCH (BODY[HEADER.FIELDS (Subject)]<0> {4}\r\nSubj BODY[3.1]<2> {3}\r\nner)\r\n"
    await c.close()


async def test_imaplib_fetch_whole_message_and_partial(imap: Running) -> None:
    imap.deliver(NESTED)

    def run(c: imaplib.IMAP4_SSL) -> Any:
        c.select("INBOX", readonly=True)
        return ok_data(c.fetch("1", "(UID RFC822.SIZE BODY.PEEK[] BODY.PEEK[3.1]<0.5>)"))

    data = await imap.client(run)
    assert data[0][1] == NESTED
    assert data[0][0].startswith(b"1 (UID 1 RFC822.SIZE %d BODY[] {%d}" % (len(NESTED), len(NESTED)))
    assert data[1][1] == b"inner"


async def test_fetch_attributes(imap: Running) -> None:
    path = imap.deliver(NESTED)
    os.utime(path, (1715671230, 1715671230))
    line = await _fetch_one(imap, "(FLAGS UID RFC822.SIZE INTERNALDATE ENVELOPE)")
    assert line.startswith(b'* 1 FETCH (FLAGS (\\Recent) UID 1 RFC822.SIZE %d INTERNALDATE "' % len(NESTED))
    assert re.search(rb'INTERNALDATE "\d\d-May-2024 \d\d:\d\d:30 [+-]\d{4}"', line)
    assert (
        b'ENVELOPE ("Tue, 14 May 2024 10:20:30 +0300" "=?UTF-8?Q?Toplant=C4=B1_notlar=C4=B1?=" '
        b'(("=?UTF-8?B?w4dpw6dlaw==?=" NIL "cicek" "kep.test")) '
        b'(("=?UTF-8?B?w4dpw6dlaw==?=" NIL "cicek" "kep.test")) '
        b'(("=?UTF-8?B?w4dpw6dlaw==?=" NIL "cicek" "kep.test")) '
        b'(("Ali Veli" NIL "ali" "kep.test")(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
        b'(("Doe, John" NIL "john" "example.com")) NIL NIL "<outer@kep.test>")' in line
    )


async def test_bodystructure_and_body(imap: Running) -> None:
    imap.deliver(NESTED)
    line = await _fetch_one(imap, "BODYSTRUCTURE", uid=True)
    assert line == (
        b"* 1 FETCH (UID 1 BODYSTRUCTURE ("
        b'("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "8BIT" 29 2 NIL NIL NIL NIL)'
        b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 17 1 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("charset" "us-ascii") NIL NIL "QUOTED-PRINTABLE" 27 1 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("boundary" "alt-b") NIL NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL "forwarded" "7BIT" %d'
        % len(INNER_MESSAGE)
        + b' (NIL "inner subject" (("Inner Sender" NIL "inner" "example.org"))'
        b' (("Inner Sender" NIL "inner" "example.org")) (("Inner Sender" NIL "inner" "example.org"))'
        b' NIL NIL NIL NIL "<inner@example.org>")'
        b' (("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7BIT" 15 1 NIL NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("name" "belge.pdf") NIL NIL "BASE64" 28 NIL'
        b' ("ATTACHMENT" ("filename" "belge.pdf")) NIL NIL) "MIXED" ("boundary" "inner-b") NIL NIL NIL)'
        b' 16 NIL NIL NIL NIL) "MIXED" ("boundary" "outer-b") NIL NIL NIL))\r\n'
    )
    line = await _fetch_one(imap, "BODY")
    assert line.startswith(b'* 1 FETCH (BODY (("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "8BIT" 29 2)(')
    assert line.endswith(b' "MIXED"))\r\n')


async def test_fetch_macros_and_sequence_sets(imap: Running) -> None:
    for i in range(5):
        imap.deliver(simple_message(f"s{i}"))
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    r = await c.ok("FETCH 2:3,5 FAST")
    assert [x.split(b" (")[0] for x in untagged(r)] == [b"* 2 FETCH", b"* 3 FETCH", b"* 5 FETCH"]
    assert b"FLAGS (\\Recent) INTERNALDATE " in r[0] and b"RFC822.SIZE " in r[0]
    r = await c.ok("FETCH * ALL")
    assert untagged(r)[0].startswith(b"* 5 FETCH (FLAGS (\\Recent) INTERNALDATE ") and b"ENVELOPE (" in r[0]
    r = await c.ok("UID FETCH 4:* FLAGS")
    assert untagged(r) == [b"* 4 FETCH (UID 4 FLAGS (\\Recent))", b"* 5 FETCH (UID 5 FLAGS (\\Recent))"]
    r = await c.ok("UID FETCH 90:* UID")
    assert untagged(r) == [b"* 5 FETCH (UID 5)"]
    assert untagged(await c.ok("UID FETCH 90 UID")) == []
    assert tagged(await c.command("FETCH 6 UID")).startswith(
        b"BAD FETCH: message sequence number out of range"
    )
    await c.close()


async def test_large_message_streams_exactly(imap: Running) -> None:
    big = simple_message("big", "x" * 100 + "\r\n") + (b"0123456789abcdef" * 4 + b"\r\n") * 60000
    imap.deliver(big)

    def run(c: imaplib.IMAP4_SSL) -> Any:
        c.select("INBOX")
        return ok_data(c.fetch("1", "(RFC822.SIZE BODY.PEEK[] BODY.PEEK[TEXT]<1000000.20>)"))

    data = await imap.client(run)
    assert data[0][1] == big
    assert data[1][1] == big[big.index(b"\r\n\r\n") + 4 + 1000000 :][:20]


async def test_search(imap: Running) -> None:
    first = imap.deliver(NESTED)
    imap.deliver(simple_message("plain", "just ascii text", sender="Bob <bob@example.org>"))
    imap.deliver(simple_message("third", "Merhaba", sender="carol@example.net"))
    # Older internal date for the first message (UIDs follow arrival order, so it stays UID 1).
    os.utime(first, (1700000000, 1700000000))

    c = await imap.raw()
    await c.ok("SELECT INBOX")
    await c.ok("STORE 2 +FLAGS (\\Flagged \\Answered $Work)")
    await c.ok("STORE 3 +FLAGS (\\Seen \\Deleted \\Draft)")

    async def search(criteria: str | bytes, uid: bool = False) -> bytes:
        prefix = b"UID SEARCH " if uid else b"SEARCH "
        r = await c.ok(prefix + (criteria.encode() if isinstance(criteria, str) else criteria))
        (line,) = untagged(r)
        return line.removeprefix(b"* SEARCH").strip()

    assert await search("ALL") == b"1 2 3"
    assert await search("FLAGGED") == b"2"
    assert await search("UNFLAGGED") == b"1 3"
    assert await search("ANSWERED") == b"2" and await search("UNANSWERED") == b"1 3"
    assert await search("DELETED") == b"3" and await search("UNDELETED") == b"1 2"
    assert await search("SEEN") == b"3" and await search("UNSEEN") == b"1 2"
    assert await search("DRAFT") == b"3" and await search("UNDRAFT") == b"1 2"
    assert await search("KEYWORD $Work") == b"2" and await search("UNKEYWORD $Work") == b"1 3"
    assert await search("RECENT") == b"1 2 3" and await search("OLD") == b""
    assert await search("NEW") == b"1 2"
    assert await search("FROM bob") == b"2"
    # RFC 2047 encoded words are decoded before matching, case-insensitively.
    assert await search('FROM "ÇİÇEK"'.replace("İ", "i")) == b"1"
    assert await search(b"SUBJECT {9+}\r\n" + "toplantı".encode()) == b"1"
    assert await search('CHARSET UTF-8 SUBJECT "NOTLARI"') == b""
    assert await search("TO ali@kep.test") == b"1 2 3"
    assert await search('CC "doe, john"') == b"1"
    assert await search("BCC anyone") == b""
    assert await search('HEADER Message-ID "<plain@x>"') == b"2"
    assert await search('HEADER Content-Description ""') == b""
    assert await search('HEADER MIME-Version ""') == b"1"
    assert await search('BODY "d\xc3\xbcnya"'.encode("latin-1").decode("utf-8").encode()) == b"1"
    assert await search("BODY alternative") == b"1"
    assert await search("BODY merhaba") == b"1 3"
    assert await search("TEXT plain") == b"1 2"
    assert await search('BODY "inner text"') == b"1"
    assert await search("SENTON 14-May-2024") == b"1"
    assert await search("SENTBEFORE 14-May-2024") == b"2 3"
    assert await search('SENTSINCE "14-May-2024"') == b"1"
    assert await search("BEFORE 1-Jan-2024") == b"1"
    assert await search("SINCE 1-Jan-2024") == b"2 3"
    assert await search("ON 1-Jan-1990") == b""
    assert await search(f"LARGER {len(NESTED) - 1}") == b"1"
    assert await search("SMALLER 500") == b"2 3"
    assert await search("2:*") == b"2 3"
    assert await search("UID 1,3") == b"1 3"
    assert await search("NOT 1") == b"2 3"
    assert await search("OR FLAGGED SEEN") == b"2 3"
    assert await search("(OR FROM bob FROM carol) UNSEEN") == b"2"
    assert await search("NOT (OR FLAGGED SEEN)") == b"1"
    assert await search("NOT (FLAGGED OR SEEN DRAFT)") == b"1 2 3"
    assert await search("UNSEEN", uid=True) == b"1 2"
    assert tagged(await c.command("SEARCH")).startswith(b"BAD SEARCH: missing search criteria")
    assert tagged(await c.command("SEARCH BEFORE yesterday")).startswith(b"BAD SEARCH: invalid date")
    assert tagged(await c.command("SEARCH OR FLAGGED")).startswith(b"BAD SEARCH: missing search key")
    assert tagged(await c.command("SEARCH LARGER x")).startswith(b"BAD SEARCH: expected size")
    await c.close()


async def test_store_variants(imap: Running) -> None:
    imap.deliver(simple_message("a"))
    imap.deliver(simple_message("b"))
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    r = await c.ok("STORE 1:2 +FLAGS (\\Flagged custom)")
    # The new keyword is announced first (RFC 3501 §7.2.6).
    assert untagged(r) == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft custom)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft custom \\*)] flags the client "
        b"can change permanently",
        b"* 1 FETCH (FLAGS (\\Flagged \\Recent custom))",
        b"* 2 FETCH (FLAGS (\\Flagged \\Recent custom))",
    ]
    r = await c.ok("UID STORE 2 -FLAGS \\Flagged")
    assert untagged(r) == [b"* 2 FETCH (UID 2 FLAGS (\\Recent custom))"]
    r = await c.ok("STORE 1 FLAGS.SILENT (\\Answered \\Draft)")
    assert untagged(r) == []
    names = sorted(p.name.split(":")[1] for p in (imap.store().root / "cur").iterdir())
    assert names == ["2,", "2,DR"]
    r = await c.ok("FETCH 1 FLAGS")
    assert untagged(r) == [b"* 1 FETCH (FLAGS (\\Answered \\Draft \\Recent))"]
    assert tagged(await c.command("STORE 1 +FLAGS (\\Recent)")).startswith(b"BAD STORE: \\Recent cannot")
    assert tagged(await c.command("STORE 1 +FLAGS (\\Nope)")).startswith(b"BAD STORE: unknown system flag")
    assert tagged(await c.command("STORE 1 +FLAGS (a%b)")).startswith(b"BAD STORE: invalid keyword")
    await c.ok("EXAMINE INBOX")
    assert tagged(await c.command("STORE 1 +FLAGS (\\Seen)")) == (
        b"NO [READ-ONLY] mailbox was opened with EXAMINE"
    )
    await c.close()


async def test_copy_move_expunge(imap: Running) -> None:
    for i in range(4):
        imap.deliver(simple_message(f"m{i}"))
    imap.store().create("Archive")
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    await c.ok("STORE 1 +FLAGS (\\Seen \\Flagged)")
    r = await c.ok("COPY 1:2 Archive")
    assert re.fullmatch(rb"OK \[COPYUID \d+ 1:2 1:2\] COPY completed", tagged(r))
    assert tagged(await c.command("COPY 1 Nowhere")) == b"NO [TRYCREATE] no mailbox named Nowhere"
    r = await c.ok("UID MOVE 3 Archive")
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ 3 3\] moved", untagged(r)[0])
    assert untagged(r)[1:] == [b"* 3 EXPUNGE"]
    r = await c.ok("MOVE 1 Archive")
    assert untagged(r)[1:] == [b"* 1 EXPUNGE"]
    r = untagged(await c.ok("STATUS Archive (MESSAGES UNSEEN)"))
    assert r == [b'* STATUS "Archive" (MESSAGES 4 UNSEEN 2)']
    await c.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    r = await c.ok("UID EXPUNGE 4")
    assert untagged(r) == [b"* 2 EXPUNGE"]
    r = await c.ok("EXPUNGE")
    assert untagged(r) == [b"* 1 EXPUNGE"]
    assert untagged(await c.ok("STATUS INBOX (MESSAGES)")) == [b'* STATUS "INBOX" (MESSAGES 0)']
    await c.ok("SELECT Archive")
    r = await c.ok("FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [re.search(rb"Subject: (\w+)", x).group(1) for x in untagged(r)]  # type: ignore[union-attr]
    assert subjects == [b"m0", b"m1", b"m2", b"m0"]
    assert b"FLAGS (\\Flagged \\Seen \\Recent)" in r[0]
    await c.ok("EXAMINE Archive")
    assert tagged(await c.command("EXPUNGE")) == b"NO [READ-ONLY] mailbox was opened with EXAMINE"
    assert tagged(await c.command("MOVE 1 INBOX")) == b"NO [READ-ONLY] mailbox was opened with EXAMINE"
    await c.close()
