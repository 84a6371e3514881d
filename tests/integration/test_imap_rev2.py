"""ESEARCH (RFC 4731), SEARCHRES (RFC 5182), LIST-STATUS (RFC 5819) and IMAP4rev2 (RFC 9051) where it
answers differently after ENABLE IMAP4rev2, over TLS against `kepmta serve --dev`, with the RFCs'
own examples where they give one."""

from __future__ import annotations

from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer

from kepmta.maildir import Maildir


async def login(srv: DevServer, account: int) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(account)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


def maildir(srv: DevServer, account: int) -> Maildir:
    local, domain = srv.account(account)["address"].split("@")
    return Maildir(srv.data / "mail" / domain / local)


async def found(c: RawClient, command: str) -> list[bytes]:
    """The untagged responses of `command`, each ESEARCH's TAG (checked to be the command's) as "T"."""
    responses = await c.ok(command)
    tag = responses[-1].split(b" ", 1)[0]
    lines = untagged(responses)
    for line in lines:
        if line.startswith(b"* ESEARCH "):
            assert line.startswith(b'* ESEARCH (TAG "' + tag + b'")'), (tag, line)
    return [line.replace(b'(TAG "' + tag + b'")', b'(TAG "T")') for line in lines]


async def append(c: RawClient, folder: str, sender: str, *, flags: str = "", size: int = 0) -> None:
    m = f"From: {sender}\r\nSubject: s\r\n\r\n{'x' * size}\r\n".encode()
    await c.ok(
        b'APPEND %s (%s) "02-Feb-1994 21:52:25 -0800" {%d+}\r\n%s'
        % (folder.encode(), flags.encode(), len(m), m)
    )


async def rfc_mailbox(c: RawClient, folder: str) -> None:
    """Eleven messages: 2, 10 and 11 \\Flagged and not from Smith, 5 \\Flagged from Smith."""
    await c.ok(f"CREATE {folder}")
    for n in range(1, 12):
        sender = "Smith <smith@example.com>" if n == 5 else f"p{n}@example.com"
        await append(c, folder, sender, flags="\\Flagged" if n in (2, 5, 10, 11) else "", size=n * 1000)


async def test_esearch_return_options(srv: DevServer) -> None:
    c = await login(srv, 0)
    await rfc_mailbox(c, "Esearch")
    await c.ok("SELECT Esearch")
    # RFC 4731 §3.1's examples.
    assert await found(c, 'SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"') == [
        b'* ESEARCH (TAG "T") MIN 2 COUNT 3'
    ]
    assert await found(c, 'SEARCH RETURN () FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"') == [
        b'* ESEARCH (TAG "T") ALL 2,10:11'
    ]
    assert await found(c, 'UID SEARCH RETURN (MIN MAX) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"') == [
        b'* ESEARCH (TAG "T") UID MIN 2 MAX 11'
    ]
    # Nothing found: no MIN, MAX or ALL, but COUNT 0 (RFC 4731 §3.2).
    assert await found(c, "SEARCH RETURN (MIN MAX ALL COUNT) SEEN") == [b'* ESEARCH (TAG "T") COUNT 0']
    assert tagged(await c.command("SEARCH RETURN (FIRST) ALL")).startswith(b"BAD")
    # Without RETURN an IMAP4rev1 session still gets SEARCH.
    assert untagged(await c.ok("SEARCH FLAGGED")) == [b"* SEARCH 2 5 10 11"]
    await c.close()


async def test_searchres_saves_the_result_for_dollar(srv: DevServer) -> None:
    c = await login(srv, 0)
    await rfc_mailbox(c, "Saved")
    await c.ok("SELECT Saved")
    # RFC 5182 §2.1's example: SAVE alone answers with no ESEARCH.
    r = await c.ok('SEARCH RETURN (SAVE) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
    assert untagged(r) == []
    assert untagged(await c.ok("FETCH $ (UID)")) == [
        b"* 2 FETCH (UID 2)",
        b"* 10 FETCH (UID 10)",
        b"* 11 FETCH (UID 11)",
    ]
    # "$" in the criteria, alone and after UID, and in UID commands (RFC 5182 §2.2).
    assert untagged(await c.ok("UID SEARCH UID $ SMALLER 10100")) == [b"* SEARCH 2 10"]
    assert untagged(await c.ok("SEARCH NOT $ FLAGGED")) == [b"* SEARCH 5"]
    await c.ok("STORE $ +FLAGS.SILENT (\\Seen)")
    assert untagged(await c.ok("SEARCH SEEN")) == [b"* SEARCH 2 10 11"]
    # With MIN and MAX alone only those are saved (RFC 5182 §2.4), and the ESEARCH comes too.
    assert await found(c, "SEARCH RETURN (SAVE MIN MAX) FLAGGED") == [b'* ESEARCH (TAG "T") MIN 2 MAX 11']
    assert untagged(await c.ok("UID FETCH $ (FLAGS)")) == [
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Seen \\Recent))",
        b"* 11 FETCH (UID 11 FLAGS (\\Flagged \\Seen \\Recent))",
    ]
    await c.ok("COPY $ INBOX")
    # An expunged message drops out of "$".
    await c.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    await c.ok("EXPUNGE")
    assert untagged(await c.ok("FETCH $ (UID)")) == [b"* 10 FETCH (UID 11)"]
    # A SEARCH that was to save and failed leaves "$" empty (RFC 5182 §2.1); "$" empty is no error.
    assert tagged(await c.command("SEARCH RETURN (SAVE) NOSUCHKEY")).startswith(b"BAD")
    assert untagged(await c.ok("FETCH $ (UID)")) == []
    # A new selection starts with an empty "$".
    await c.ok("SEARCH RETURN (SAVE) ALL")
    await c.ok("SELECT Saved")
    assert untagged(await c.ok("FETCH $ (UID)")) == []
    await c.close()


async def test_list_status(srv: DevServer) -> None:
    c = await login(srv, 1)
    await c.ok("CREATE Durum.foo")
    await append(c, "Durum.foo", "a@example.com", flags="\\Seen")
    await append(c, "Durum.foo", "b@example.com")
    maildir(srv, 1).create("Durum.bar.baz")
    # RFC 5819 §2's example: a STATUS follows each selectable mailbox, none the \Noselect one.
    r = await c.ok('LIST "Durum." % RETURN (STATUS (MESSAGES UNSEEN))')
    assert untagged(r) == [
        b'* LIST (\\Noselect \\HasChildren) "." "Durum.bar"',
        b'* LIST (\\HasNoChildren) "." "Durum.foo"',
        b'* STATUS "Durum.foo" (MESSAGES 2 UNSEEN 1)',
    ]
    r = await c.ok('LIST (SUBSCRIBED) "" "INBOX" RETURN (STATUS (UIDNEXT) CHILDREN)')
    assert untagged(r)[0] == b'* LIST (\\Subscribed \\HasNoChildren) "." "INBOX"'
    assert untagged(r)[1].startswith(b'* STATUS "INBOX" (UIDNEXT ')
    assert tagged(await c.command('LIST "" % RETURN (STATUS (NOSUCHITEM))')).startswith(b"BAD")
    await c.close()


async def test_imap4rev2_after_enable(srv: DevServer) -> None:
    c = await login(srv, 2)
    assert b" IMAP4rev2 " in untagged(await c.ok("CAPABILITY"))[0]
    await rfc_mailbox(c, "Rev2")
    assert untagged(await c.ok("ENABLE IMAP4rev2")) == [b"* ENABLED IMAP4rev2"]
    selected = untagged(await c.ok("SELECT Rev2"))
    # RFC 9051 §6.3.2: no RECENT, no UNSEEN.
    assert not any(b"RECENT" in line or b"UNSEEN" in line for line in selected), selected
    assert b"* 11 EXISTS" in selected
    # RFC 9051 §6.4.4: SEARCH answers with ESEARCH.
    assert await found(c, "SEARCH FLAGGED") == [b'* ESEARCH (TAG "T") ALL 2,5,10:11']
    assert await found(c, "UID SEARCH NOT FLAGGED") == [b'* ESEARCH (TAG "T") UID ALL 1,3:4,6:9']
    assert await found(c, "SEARCH SEEN") == [b'* ESEARCH (TAG "T")']
    # No \Recent, though this session is the first to see the messages.
    assert untagged(await c.ok("FETCH 1 (FLAGS)")) == [b"* 1 FETCH (FLAGS ())"]
    m = b"From: new@example.com\r\n\r\nnew\r\n"
    # The new message is reported with APPEND's completion: EXISTS, and no RECENT.
    assert untagged(await c.ok(b"APPEND Rev2 {%d+}\r\n%s" % (len(m), m))) == [b"* 12 EXISTS"]
    # RFC 9051 §6.3.2: a new SELECT first closes the old mailbox with OK [CLOSED].
    assert untagged(await c.ok("EXAMINE Rev2"))[0] == b"* OK [CLOSED] previous mailbox closed"
    await c.close()
