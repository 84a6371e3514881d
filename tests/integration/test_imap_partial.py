"""PARTIAL (RFC 9394): one page of a SEARCH's result, counted from the first match or from the last,
over TLS against `kepmta serve --dev`, with the RFC's examples adapted to a mailbox small enough to
page through; and the ranges and combinations the RFC forbids, refused with BAD and no effect."""

from __future__ import annotations

from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer


async def login(srv: DevServer, account: int) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(account)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


async def found(c: RawClient, command: str) -> list[bytes]:
    """The untagged responses of `command`, each ESEARCH's TAG (checked to be the command's) as "T"."""
    responses = await c.ok(command)
    tag = responses[-1].split(b" ", 1)[0]
    lines = untagged(responses)
    for line in lines:
        if line.startswith(b"* ESEARCH "):
            assert line.startswith(b'* ESEARCH (TAG "' + tag + b'")'), (tag, line)
    return [line.replace(b'(TAG "' + tag + b'")', b'(TAG "T")') for line in lines]


async def paging_mailbox(c: RawClient, folder: str) -> None:
    """Thirty messages appended, UIDs 1 to 30, every third \\Flagged; UIDs 4:6 expunged, so that from
    the fourth message on the sequence number is the UID less 3; UIDs 20:21 \\Deleted and UIDs 2 and
    30 $Junk. UNDELETED finds 25: 1:3,7:19,22:30; UNDELETED UNKEYWORD $Junk 23: 1,3,7:19,22:29;
    FLAGGED 9: UIDs 3,9,12,...,30, sequence numbers 3,6,9,...,27."""
    await c.ok(f"CREATE {folder}")
    for n in range(1, 31):
        m = f"From: p{n}@example.com\r\nSubject: page {n}\r\n\r\nbody {n}\r\n".encode()
        flags = "\\Flagged" if n % 3 == 0 else ""
        await c.ok(b"APPEND %s (%s) {%d+}\r\n%s" % (folder.encode(), flags.encode(), len(m), m))
    await c.ok(f"SELECT {folder}")
    await c.ok("UID STORE 4:6 +FLAGS.SILENT (\\Deleted)")
    await c.ok("EXPUNGE")
    await c.ok("UID STORE 20:21 +FLAGS.SILENT (\\Deleted)")
    await c.ok("UID STORE 2,30 +FLAGS.SILENT ($Junk)")


async def test_partial_pages_from_the_first_match(srv: DevServer) -> None:
    c = await login(srv, 0)
    assert b" PARTIAL" in untagged(await c.ok("CAPABILITY"))[0]
    await paging_mailbox(c, "Pages")
    # RFC 9394 §3.1's first example, and the pages after it.
    assert await found(c, "UID SEARCH RETURN (PARTIAL 1:10) UNDELETED") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (1:10 1:3,7:13)'
    ]
    assert await found(c, "UID SEARCH RETURN (PARTIAL 11:20) UNDELETED") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (11:20 14:19,22:25)'
    ]
    # A range running past the last match gives what there is, with the range as asked.
    assert await found(c, "UID SEARCH RETURN (PARTIAL 21:30) UNDELETED") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (21:30 26:30)'
    ]
    # RFC 9394 §3.1's A04: a range wholly beyond the matches is NIL.
    assert await found(c, "UID SEARCH RETURN (PARTIAL 26:30) UNDELETED") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (26:30 NIL)'
    ]
    # RFC 9394 §4: 3:2 is 2:3, and is echoed as asked.
    assert await found(c, "UID SEARCH RETURN (PARTIAL 3:2) FLAGGED") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (3:2 9,12)'
    ]
    # Without UID, the positions are the same and the numbers are sequence numbers.
    assert await found(c, "SEARCH RETURN (PARTIAL 2:3) FLAGGED") == [b'* ESEARCH (TAG "T") PARTIAL (2:3 6,9)']
    # The largest nz-number is a valid end; nothing the size of the range is made.
    assert await found(c, "UID SEARCH RETURN (PARTIAL 8:4294967295) FLAGGED") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (8:4294967295 27,30)'
    ]
    # Nothing matched: PARTIAL is still answered, with NIL.
    assert await found(c, "UID SEARCH RETURN (PARTIAL 1:10) SEEN") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (1:10 NIL)'
    ]
    await c.close()


async def test_partial_pages_from_the_last_match(srv: DevServer) -> None:
    c = await login(srv, 1)
    await paging_mailbox(c, "Newest")
    # RFC 9394 §3.1: -1 is the last match, -2 the one before; the RFC's own newest-first example.
    assert await found(c, "UID SEARCH RETURN (PARTIAL -1:-5) UNDELETED UNKEYWORD $Junk") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (-1:-5 25:29)'
    ]
    assert await found(c, "UID SEARCH RETURN (PARTIAL -5:-1) UNDELETED UNKEYWORD $Junk") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (-5:-1 25:29)'
    ]
    assert await found(c, "UID SEARCH RETURN (PARTIAL -6:-10) UNDELETED UNKEYWORD $Junk") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (-6:-10 18:19,22:24)'
    ]
    # RFC 9394 §3.1's A05: COUNT with a page from the end larger than the result.
    assert await found(c, "UID SEARCH RETURN (COUNT PARTIAL -1:-100) UNDELETED UNKEYWORD $Junk") == [
        b'* ESEARCH (TAG "T") UID COUNT 23 PARTIAL (-1:-100 1,3,7:19,22:29)'
    ]
    assert await found(c, "UID SEARCH RETURN (PARTIAL -24:-30) UNDELETED UNKEYWORD $Junk") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (-24:-30 NIL)'
    ]
    assert await found(c, "SEARCH RETURN (PARTIAL -1:-2) FLAGGED") == [
        b'* ESEARCH (TAG "T") PARTIAL (-1:-2 24,27)'
    ]
    # MIN and MAX are the whole result's, not the page's (RFC 9394 §3.2).
    assert await found(c, "UID SEARCH RETURN (MIN MAX PARTIAL -2:-3) FLAGGED") == [
        b'* ESEARCH (TAG "T") UID MIN 3 MAX 30 PARTIAL (-2:-3 24,27)'
    ]
    # After ENABLE IMAP4rev2 (only outside a selection) as before.
    await c.ok("UNSELECT")
    await c.ok("ENABLE IMAP4rev2")
    await c.ok("SELECT Newest")
    assert await found(c, "UID SEARCH RETURN (PARTIAL -1:-1) FLAGGED") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (-1:-1 30)'
    ]
    await c.close()


async def saved(c: RawClient) -> list[bytes]:
    return await found(c, "UID SEARCH RETURN (ALL) UID $")


async def test_partial_with_save(srv: DevServer) -> None:
    c = await login(srv, 2)
    await paging_mailbox(c, "PageSave")
    # RFC 9394 §3.2: with SAVE and PARTIAL alone, "$" is the page.
    assert await found(c, "UID SEARCH RETURN (SAVE PARTIAL 2:3) FLAGGED") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (2:3 9,12)'
    ]
    assert await saved(c) == [b'* ESEARCH (TAG "T") UID ALL 9,12']
    # With MIN (or MAX), the page and that message.
    assert await found(c, "UID SEARCH RETURN (SAVE MIN PARTIAL 4:5) FLAGGED") == [
        b'* ESEARCH (TAG "T") UID MIN 3 PARTIAL (4:5 15,18)'
    ]
    assert await saved(c) == [b'* ESEARCH (TAG "T") UID ALL 3,15,18']
    assert await found(c, "UID SEARCH RETURN (SAVE MIN MAX PARTIAL -3:-4) FLAGGED") == [
        b'* ESEARCH (TAG "T") UID MIN 3 MAX 30 PARTIAL (-3:-4 21,24)'
    ]
    assert await saved(c) == [b'* ESEARCH (TAG "T") UID ALL 3,21,24,30']
    # With COUNT, everything found.
    assert await found(c, "UID SEARCH RETURN (SAVE COUNT PARTIAL 1:1) FLAGGED") == [
        b'* ESEARCH (TAG "T") UID COUNT 9 PARTIAL (1:1 3)'
    ]
    assert await saved(c) == [b'* ESEARCH (TAG "T") UID ALL 3,9,12,15,18,21,24,27,30']
    # A page beyond the result saves nothing.
    assert await found(c, "SEARCH RETURN (SAVE PARTIAL 10:12) FLAGGED") == [
        b'* ESEARCH (TAG "T") PARTIAL (10:12 NIL)'
    ]
    assert await saved(c) == [b'* ESEARCH (TAG "T") UID']
    await c.close()


async def test_partial_refused(srv: DevServer) -> None:
    c = await login(srv, 0)
    await paging_mailbox(c, "PageBad")
    await c.ok("UID SEARCH RETURN (SAVE) FLAGGED")
    refused = {
        # RFC 9394 §4: positions are nz-numbers, so 0 is none.
        "PARTIAL 0:10": b"PARTIAL takes a range",
        "PARTIAL 5": b"PARTIAL takes a range",
        "PARTIAL": b"PARTIAL takes a range",
        "PARTIAL 1:*": b"PARTIAL takes a range",
        "PARTIAL -1:5": b"PARTIAL takes a range",
        'PARTIAL "1:5"': b"PARTIAL takes a range",
        "PARTIAL 1:99999999999": b"at most 4294967295",
        "PARTIAL 4294967296:1": b"at most 4294967295",
        # RFC 9394 §3.1: one PARTIAL or one ALL.
        "ALL PARTIAL 1:5": b"cannot take both PARTIAL and ALL",
        "PARTIAL 1:5 ALL": b"cannot take both PARTIAL and ALL",
        "PARTIAL 1:5 PARTIAL 6:9": b"PARTIAL at most once",
        "ALL ALL": b"ALL at most once",
        "FIRST 1:5": b"MIN, MAX, ALL, COUNT, SAVE and PARTIAL",
    }
    for options, text in refused.items():
        for uid in ("", "UID "):
            r = await c.command(f"{uid}SEARCH RETURN (SAVE {options}) UNDELETED")
            assert tagged(r).startswith(b"BAD") and text in tagged(r), (options, r)
            # Refused before anything was searched: no ESEARCH.
            assert untagged(r) == [], (options, r)
    # "$" is still the last good SAVE's.
    assert await saved(c) == [b'* ESEARCH (TAG "T") UID ALL 3,9,12,15,18,21,24,27,30']
    # And the session goes on.
    assert await found(c, "UID SEARCH RETURN (PARTIAL 1:1) FLAGGED") == [
        b'* ESEARCH (TAG "T") UID PARTIAL (1:1 3)'
    ]
    await c.close()


async def test_partial_fetch_modifier_pages_the_messages_a_fetch_covers(srv: DevServer) -> None:
    """RFC 9394 §3.3: (PARTIAL range) after FETCH's items returns one page of the messages the
    sequence set names, counted in UID order; negative positions from the highest UID."""
    c = await login(srv, 1)
    await paging_mailbox(c, "FetchPages")

    def uids(responses: list[bytes]) -> list[int]:
        return [int(line.split(b"UID ")[1].split(b")")[0].split()[0]) for line in untagged(responses)]

    # RFC 9394 §3.3's example: the last 30 by UID, here the last 3 of 27 messages.
    assert uids(await c.ok("UID FETCH 1:* (FLAGS) (PARTIAL -1:-3)")) == [28, 29, 30]
    assert uids(await c.ok("UID FETCH 1:* (UID) (PARTIAL 1:4)")) == [1, 2, 3, 7]
    # Without UID: the same positions, among the messages the sequence numbers name.
    assert uids(await c.ok("FETCH 5:* (UID) (PARTIAL 2:3)")) == [9, 10]
    # Beyond the messages covered: nothing, and OK.
    assert untagged(await c.ok("UID FETCH 1:3 (FLAGS) (PARTIAL 5:9)")) == []
    for bad in ("(PARTIAL 0:3)", "(PARTIAL 1:*)", "(PARTIAL -1:3)", "(PARTIAL)", "(PARTIAL 1:2 PARTIAL 3:4)"):
        reply = tagged(await c.command(f"UID FETCH 1:* (FLAGS) {bad}"))
        assert reply.startswith(b"BAD "), (bad, reply)
    await c.close()
