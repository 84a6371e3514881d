"""THREAD=REFERENCES and THREAD=ORDEREDSUBJECT (RFC 5256), over TLS against `kepmta serve --dev`.

The mailbox gives the shapes of RFC 5256 §4's example responses: a thread whose chain of only
children branches ("(3 6 (4 23)(44 7 96))"), a dummy parent at the root ("((3)(5))"), and
threads joined by their base subject."""

from __future__ import annotations

from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer

# (Message-ID, References, Subject): seq n is the n-th, sent on day n.
MESSAGES = [
    ("a1", "", "Alone"),
    ("b2", "", "Plan"),
    ("c3", "<b2@x>", "Re: Plan"),
    ("d4", "<b2@x> <c3@x>", "Re: Plan"),
    ("e5", "<b2@x> <c3@x> <d4@x>", "Re: Plan"),
    ("f6", "<b2@x> <c3@x>", "Re: Plan"),
    ("g7", "<b2@x> <c3@x> <f6@x>", "Re: Plan"),
    ("h8", "<b2@x> <c3@x> <f6@x> <g7@x>", "Re: Plan"),
    # Two replies to a message not in the mailbox: a dummy parent at the root.
    ("i9", "<gone@x>", "Re: Lost"),
    ("j10", "<gone@x>", "Re: Lost too"),
    # No references, but a reply to "Alone" by subject.
    ("k11", "", "Re: Alone"),
    # References that would make a loop, and one to itself: 12 is under its reference 13, and 13
    # not under 12, its descendant.
    ("l12", "<m13@x>", "Loop"),
    ("m13", "<l12@x> <m13@x>", "Loop"),
]


async def login(srv: DevServer, account: int) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(account)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


def message(n: int, mid: str, refs: str, subject: str) -> bytes:
    header = f"From: p{n}@example.com\r\nSubject: {subject}\r\nMessage-ID: <{mid}@x>\r\n"
    if refs:
        header += f"References: {refs}\r\n"
    return f"{header}Date: {n:02d} Mar 2024 10:00:00 +0000\r\n\r\nbody {n}\r\n".encode()


async def test_thread_references_and_orderedsubject(srv: DevServer) -> None:
    c = await login(srv, 0)
    caps = untagged(await c.ok("CAPABILITY"))[0]
    assert b" THREAD=REFERENCES" in caps and b" THREAD=ORDEREDSUBJECT" in caps
    await c.ok("CREATE Konular")
    for n, (mid, refs, subject) in enumerate(MESSAGES, 1):
        m = message(n, mid, refs, subject)
        await c.ok(b"APPEND Konular {%d+}\r\n%s" % (len(m), m))
    await c.ok("SELECT Konular")
    assert untagged(await c.ok("THREAD REFERENCES UTF-8 ALL")) == [
        b"* THREAD (1 11)(2 3 (4 5)(6 7 8))((9)(10))(13 12)"
    ]
    # UID THREAD names UIDs (here the same numbers), and the criteria narrow what is threaded:
    # without 2 and 3, their replies hang under a dummy parent.
    assert untagged(await c.ok("UID THREAD REFERENCES US-ASCII 4:8")) == [b"* THREAD ((4 5)(6 7 8))"]
    # ORDEREDSUBJECT: by base subject, each subject's first message the parent of the rest.
    assert untagged(await c.ok("THREAD ORDEREDSUBJECT UTF-8 ALL")) == [
        b"* THREAD (1 11)(2 (3)(4)(5)(6)(7)(8))(9)(10)(12 13)"
    ]
    assert untagged(await c.ok("THREAD ORDEREDSUBJECT UTF-8 SUBJECT nothing-like-this")) == [b"* THREAD"]
    assert tagged(await c.command("THREAD JWZ UTF-8 ALL")).startswith(b"BAD")
    assert tagged(await c.command("THREAD REFERENCES KOI8-R ALL")).startswith(b"NO [BADCHARSET")
    await c.close()
