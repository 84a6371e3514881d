"""SORT=DISPLAY (RFC 5957): DISPLAYFROM and DISPLAYTO sort by the first address's display name, or its
addr-spec when it has none, over TLS against `kepmta serve --dev`."""

from __future__ import annotations

from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer

SENDERS = [
    ('From: "Zeynep" <a@x.test>', "To: Mehmet <m@x.test>"),
    ("From: b@y.test", "To: ali@x.test"),
    ("From: =?UTF-8?Q?=C3=87i=C3=A7ek?= <c@z.test>", "To: =?UTF-8?Q?=C3=96zg=C3=BCr?= <o@x.test>"),
    ('From: "Ali Veli" <zz@x.test>', "To: Zehra <z@x.test>, Can <c@x.test>"),
    ("X-No-From: yes", "X-No-To: yes"),
]


async def test_sort_by_display_name(srv: DevServer) -> None:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(2)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    assert b" SORT=DISPLAY" in untagged(await c.ok("CAPABILITY"))[0]
    await c.ok("CREATE Gorunen")
    for sender, to in SENDERS:
        m = f"{sender}\r\n{to}\r\nSubject: s\r\n\r\nbody\r\n".encode()
        await c.ok(b"APPEND Gorunen {%d+}\r\n%s" % (len(m), m))
    await c.ok("SELECT Gorunen")
    # Empty first, then "ali veli", "b@y.test", "zeynep", "çiçek" (after z in code point order).
    assert untagged(await c.ok("SORT (DISPLAYFROM) UTF-8 ALL")) == [b"* SORT 5 4 2 1 3"]
    assert untagged(await c.ok("SORT (REVERSE DISPLAYFROM) UTF-8 ALL")) == [b"* SORT 3 1 2 4 5"]
    # FROM sorts by the mailbox (local part) instead: "", a, b, c, zz.
    assert untagged(await c.ok("SORT (FROM) UTF-8 ALL")) == [b"* SORT 5 1 2 3 4"]
    # DISPLAYTO: "", "ali@x.test", "mehmet", "zehra" (the first address), "özgür".
    assert untagged(await c.ok("UID SORT (DISPLAYTO) UTF-8 ALL")) == [b"* SORT 5 2 1 4 3"]
    assert tagged(await c.command("SORT (DISPLAYCC) UTF-8 ALL")).startswith(b"BAD")
    await c.close()
