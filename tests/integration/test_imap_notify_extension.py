"""NOTIFY (RFC 5465) over TLS: two sessions of one account, changes made by one (APPEND, STORE,
EXPUNGE, CREATE, RENAME, DELETE, SUBSCRIBE) and mail delivered into the Maildir or over SMTP reach
the other as the RFC's examples show, between commands and during IDLE; refusals change nothing.

The RFC's own example (§3.1) writes its events without the parentheses its grammar (§8) requires;
the commands here are the example's, written as the grammar has them. No test waits on time: a
response that must come is read with the fixtures' generous timeout, and "nothing was sent" is
a NOOP round trip."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest
from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    RawClient,
    Running,
    imap_fixture,
    simple_message,
    tagged,
    tls_fixture,
    untagged,
)
from kepclient import DevServer, signed_by, submit

from kepmta.maildir import encode_mutf7

EVIDENCE = encode_mutf7("Kanıt").encode()
SUPPORTED = b"[BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]"
EVERYTHING = "(MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)"


def status_of(line: bytes) -> tuple[bytes, dict[str, int]] | None:
    """A STATUS response's mailbox and items."""
    m = re.fullmatch(rb"\* STATUS (\S+) \(([^)]*)\)\r?\n?", line)
    if m is None:
        return None
    words = m.group(2).decode().split()
    return m.group(1).strip(b'"'), {k: int(v) for k, v in zip(words[::2], words[1::2], strict=True)}


async def until(c: RawClient, wanted: Callable[[bytes], bool]) -> list[bytes]:
    """Unsolicited responses read without sending a command, up to the first `wanted` one."""
    seen = []
    while True:
        line = await c.response()
        seen.append(line.rstrip(b"\r\n"))
        if wanted(seen[-1]):
            return seen


def is_status(mailbox: bytes, **items: int) -> Callable[[bytes], bool]:
    def check(line: bytes) -> bool:
        found = status_of(line)
        return (
            found is not None and found[0] == mailbox and all(found[1].get(k) == v for k, v in items.items())
        )

    return check


async def append(c: RawClient, mailbox: str, data: bytes) -> None:
    await c.send(f'a1 APPEND "{mailbox}" {{{len(data)}+}}\r\n'.encode() + data + b"\r\n")
    r = await c.until_tagged("a1")
    assert tagged(r).startswith(b"OK"), r


async def two(imap: Running) -> tuple[RawClient, RawClient]:
    return await imap.raw(), await imap.raw()


async def both_on_an_inbox_of_two(imap: Running) -> tuple[RawClient, RawClient]:
    """Two sessions with INBOX selected, holding messages "a" and "b"."""
    imap.deliver(simple_message("a"))
    imap.deliver(simple_message("b"))
    watcher, other = await two(imap)
    await watcher.ok("SELECT INBOX")
    await other.ok("SELECT INBOX")
    return watcher, other


async def test_notify_is_advertised(imap: Running) -> None:
    c = await imap.raw()
    caps = untagged(await c.ok("CAPABILITY"))[0].split()
    assert b"NOTIFY" in caps
    await c.close()


async def test_the_rfc_example_status_at_once_then_new_mail_pushed_between_commands(imap: Running) -> None:
    imap.deliver(simple_message("first"))
    watcher, other = await two(imap)
    await other.ok('CREATE "Lists.Lemonade"')
    await append(other, "Lists.Lemonade", simple_message("list mail"))
    await watcher.ok("SELECT INBOX")
    # RFC 5465 §3.1: with STATUS, each watched mailbox's STATUS comes before the tagged OK.
    r = await watcher.ok(
        "NOTIFY SET STATUS (SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT)])"
        " MessageExpunge)) (SUBTREE Lists (MessageNew MessageExpunge))"
    )
    statuses = dict(s for line in untagged(r) if (s := status_of(line)) is not None)
    assert set(statuses) == {b"Lists", b"Lists.Lemonade"}
    assert statuses[b"Lists.Lemonade"]["MESSAGES"] == 1 and statuses[b"Lists.Lemonade"]["UIDNEXT"] == 2
    assert statuses[b"Lists"]["MESSAGES"] == 0 and "UIDVALIDITY" in statuses[b"Lists"]
    assert tagged(r) == b"OK NOTIFY completed"
    # New mail in the selected mailbox: EXISTS, then the FETCH the client asked for (§5.2), with
    # no command in progress.
    imap.deliver(simple_message("good morning", sender="alice@example.org"))
    pushed = await until(watcher, lambda line: b"FETCH" in line)
    assert pushed[:2] == [b"* 2 EXISTS", b"* 2 RECENT"]
    assert pushed[2].startswith(b"* 2 FETCH (UID 2 BODY[HEADER.FIELDS (FROM TO SUBJECT)] {")
    assert b"From: alice@example.org\r\nTo: ali@kep.test\r\nSubject: good morning\r\n\r\n)" in pushed[2]
    # A new message in another watched mailbox: its STATUS (§5.2).
    await append(other, "Lists.Lemonade", simple_message("more list mail"))
    await until(watcher, is_status(b"Lists.Lemonade", MESSAGES=2, UIDNEXT=3))
    # The FETCH attributes are PEEK ones: the message stays unseen.
    assert untagged(await other.ok("STATUS INBOX (UNSEEN)")) == [b'* STATUS "INBOX" (UNSEEN 2)']
    assert untagged(await watcher.ok("NOOP")) == []
    await watcher.close()
    await other.close()


async def test_another_sessions_append_store_expunge_give_status_of_unselected_mailboxes(
    imap: Running,
) -> None:
    watcher, other = await two(imap)
    await other.ok('CREATE "Archive"')
    await watcher.ok("ENABLE CONDSTORE")
    await watcher.ok(f"NOTIFY SET (PERSONAL {EVERYTHING})")
    await append(other, "Archive", simple_message("kept"))
    first = await until(watcher, is_status(b"Archive", MESSAGES=1, UIDNEXT=2, UNSEEN=1))
    # CONDSTORE is on: HIGHESTMODSEQ is part of it (§5.2).
    found = status_of(first[-1])
    assert found is not None and found[1]["HIGHESTMODSEQ"] > 0
    await other.ok("SELECT Archive")
    await other.ok("STORE 1 +FLAGS.SILENT (\\Seen \\Deleted)")
    await until(watcher, is_status(b"Archive", MESSAGES=1, UNSEEN=0))
    await other.ok("EXPUNGE")
    await until(watcher, is_status(b"Archive", MESSAGES=0, UIDNEXT=2))
    # The same state is not told twice.
    assert untagged(await watcher.ok("NOOP")) == []
    await watcher.close()
    await other.close()


async def test_status_comes_after_commands_and_during_idle(imap: Running) -> None:
    watcher, other = await two(imap)
    await other.ok('CREATE "Work"')
    await watcher.ok("NOTIFY SET (MAILBOXES Work (MessageNew MessageExpunge))")
    await append(other, "Work", simple_message("one"))
    # Told between commands; a NOOP sent meanwhile carries it at the latest.
    r = await watcher.ok("NOOP")
    lines = untagged(r)
    if not any(is_status(b"Work", MESSAGES=1)(line) for line in lines):
        await until(watcher, is_status(b"Work", MESSAGES=1))
    await watcher.send(b"i1 IDLE\r\n")
    assert await watcher.response() == b"+ idling\r\n"
    imap.deliver(simple_message("two"), folder="Work")
    await until(watcher, is_status(b"Work", MESSAGES=2, UIDNEXT=3))
    await watcher.send(b"DONE\r\n")
    assert tagged(await watcher.until_tagged("i1")) == b"OK IDLE terminated"
    await watcher.close()
    await other.close()


async def test_mailbox_names_and_subscriptions_as_list_responses(imap: Running) -> None:
    watcher, other = await two(imap)
    await watcher.ok(f"NOTIFY SET (PERSONAL {EVERYTHING})")
    await other.ok('CREATE "Foo"')
    assert await until(watcher, lambda line: b"LIST" in line) == [b'* LIST (\\HasNoChildren) "." "Foo"']
    # RFC 5465 §5.4: a renamed mailbox's LIST names the old one.
    await other.ok('RENAME "Foo" "Bar"')
    assert await until(watcher, lambda line: b"LIST" in line) == [
        b'* LIST (\\HasNoChildren) "." "Bar" ("OLDNAME" ("Foo"))'
    ]
    # §5.5: \Subscribed if and only if subscribed after the change.
    await other.ok('SUBSCRIBE "Bar"')
    assert await until(watcher, lambda line: b"LIST" in line) == [
        b'* LIST (\\Subscribed \\HasNoChildren) "." "Bar"'
    ]
    await other.ok('UNSUBSCRIBE "Bar"')
    assert await until(watcher, lambda line: b"LIST" in line) == [b'* LIST (\\HasNoChildren) "." "Bar"']
    # §5.4: a name that no longer names a mailbox is \NonExistent.
    await other.ok('DELETE "Bar"')
    assert await until(watcher, lambda line: b"LIST" in line) == [b'* LIST (\\NonExistent) "." "Bar"']
    # A CREATE that makes the superior too tells of both.
    await other.ok('CREATE "Top.Sub"')
    r = untagged(await watcher.ok("NOOP"))
    if len(r) < 2:
        r += await until(watcher, lambda line: b'"Top.Sub"' in line)
    assert r == [b'* LIST (\\HasChildren) "." "Top"', b'* LIST (\\HasNoChildren) "." "Top.Sub"']
    await watcher.close()
    await other.close()


async def test_a_session_is_not_told_of_its_own_changes(imap: Running) -> None:
    c = await imap.raw()
    await c.ok(f"NOTIFY SET (PERSONAL {EVERYTHING})")
    # RFC 5465 §5: the server SHOULD NOT tell a client of what it did itself.
    assert untagged(await c.ok('CREATE "Mine"')) == []
    assert untagged(await c.ok('SUBSCRIBE "Mine"')) == []
    assert untagged(await c.ok('RENAME "Mine" "Ours"')) == []
    # ...but watches what it made: another session's mail there is told.
    other = await imap.raw()
    await append(other, "Ours", simple_message("x"))
    await until(c, is_status(b"Ours", MESSAGES=1))
    await c.close()
    await other.close()


async def test_rename_moves_the_watch_and_inferiors_carry_their_old_names(imap: Running) -> None:
    watcher, other = await two(imap)
    await other.ok('CREATE "Old.Child"')
    await watcher.ok("NOTIFY SET (SUBTREE Old (MessageNew MessageExpunge MailboxName))")
    await other.ok('RENAME "Old" "New"')
    lines = await until(watcher, lambda line: b'"New.Child"' in line)
    assert lines == [
        b'* LIST (\\HasChildren) "." "New" ("OLDNAME" ("Old"))',
        b'* LIST (\\HasNoChildren) "." "New.Child" ("OLDNAME" ("Old.Child"))',
    ]
    # The subtree is the name "Old": the renamed mailboxes are no longer in it.
    await append(other, "New.Child", simple_message("x"))
    await other.ok('CREATE "Old.Again"')
    await until(watcher, lambda line: b'"Old.Again"' in line)
    await append(other, "Old.Again", simple_message("y"))
    await until(watcher, is_status(b"Old.Again", MESSAGES=1))
    assert untagged(await watcher.ok("NOOP")) == []
    await watcher.close()
    await other.close()


async def test_selected_mailbox_flag_changes_and_expunges_pushed(imap: Running) -> None:
    watcher, other = await both_on_an_inbox_of_two(imap)
    await watcher.ok(
        "NOTIFY SET (SELECTED (MessageNew MessageExpunge FlagChange)) (PERSONAL (MessageNew MessageExpunge))"
    )
    await other.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
    # §5.1: FETCH with UID and FLAGS.
    assert await until(watcher, lambda line: b"FETCH" in line) == [
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))"
    ]
    await other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    await until(watcher, lambda line: b"FETCH" in line)
    await other.ok("EXPUNGE")
    # §5.3: EXPUNGE at once with SELECTED; never a STATUS of the selected mailbox.
    assert await until(watcher, lambda line: b"EXPUNGE" in line) == [b"* 2 EXPUNGE"]
    assert untagged(await watcher.ok("NOOP")) == []
    await watcher.close()
    await other.close()


async def test_selected_delayed_holds_expunges_for_a_command_that_may_have_them(imap: Running) -> None:
    watcher, other = await both_on_an_inbox_of_two(imap)
    await watcher.ok("NOTIFY SET (SELECTED-DELAYED (MessageNew MessageExpunge))")
    await other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await other.ok("EXPUNGE")
    await append(other, "INBOX", simple_message("c"))
    # §6.1: the new message is told at once, the expunge is not...
    assert await until(watcher, lambda line: b"EXISTS" in line) == [b"* 3 EXISTS"]
    await until(watcher, lambda line: b"RECENT" in line)
    # ...not during a FETCH either (RFC 3501 §7.4.1), but at the NOOP.
    r = await watcher.ok("FETCH 1 (UID)")
    assert not any(b"EXPUNGE" in line for line in untagged(r))
    assert b"* 1 EXPUNGE" in untagged(await watcher.ok("NOOP"))
    await watcher.close()
    await other.close()


async def test_without_flagchange_flag_changes_wait_for_a_command(imap: Running) -> None:
    imap.deliver(simple_message("a"))
    watcher, other = await two(imap)
    await watcher.ok("SELECT INBOX")
    await other.ok("SELECT INBOX")
    await watcher.ok("NOTIFY SET (SELECTED (MessageNew MessageExpunge))")
    await other.ok("STORE 1 +FLAGS.SILENT (\\Answered)")
    await append(other, "INBOX", simple_message("b"))
    # The new message is pushed; the flag change is not among the pushed responses.
    pushed = await until(watcher, lambda line: b"RECENT" in line)
    # \Recent went to whichever session was told first (RFC 3501 §2.3.2): the appending one.
    assert pushed == [b"* 2 EXISTS", b"* 1 RECENT"]
    # A command's end still brings it (RFC 3501 §7: the client learns every change at a NOOP).
    assert untagged(await watcher.ok("NOOP")) == [b"* 1 FETCH (UID 1 FLAGS (\\Answered \\Recent))"]
    await watcher.close()
    await other.close()


async def test_inboxes_are_inbox_and_the_evidence_folder(imap: Running) -> None:
    watcher, other = await two(imap)
    await other.ok('CREATE "Elsewhere"')
    await watcher.ok("NOTIFY SET (INBOXES (MessageNew MessageExpunge))")
    # Delivered by other programs into the Maildir, in this order: once the evidence folder's
    # STATUS is read, the event of the first delivery has been dealt with too (one inotify queue).
    imap.deliver(simple_message("not watched"), folder="Elsewhere")
    imap.deliver(simple_message("receipt"), folder="Kanıt")
    await until(watcher, is_status(EVIDENCE, MESSAGES=1))
    imap.deliver(simple_message("mail"))
    await until(watcher, is_status(b"INBOX", MESSAGES=1))
    assert untagged(await watcher.ok("NOOP")) == []
    await watcher.close()
    await other.close()


async def test_subscribed_filter_follows_subscriptions(imap: Running) -> None:
    watcher, other = await two(imap)
    await other.ok('CREATE "Later"')
    await watcher.ok("NOTIFY SET (SUBSCRIBED (MessageNew MessageExpunge SubscriptionChange))")
    # §6.4: the subscriptions are looked at again when they change.
    await other.ok('SUBSCRIBE "Later"')
    assert await until(watcher, lambda line: b"LIST" in line) == [
        b'* LIST (\\Subscribed \\HasNoChildren) "." "Later"'
    ]
    await append(other, "Later", simple_message("x"))
    await until(watcher, is_status(b"Later", MESSAGES=1))
    await other.ok('UNSUBSCRIBE "Later"')
    await until(watcher, lambda line: b"LIST" in line)
    await append(other, "Later", simple_message("y"))
    assert untagged(await watcher.ok("NOOP")) == []
    await watcher.close()
    await other.close()


async def test_notify_none_and_a_new_set_replace_what_was_asked(imap: Running) -> None:
    watcher, other = await two(imap)
    await other.ok('CREATE "A"')
    await other.ok('CREATE "B"')
    await watcher.ok("NOTIFY SET (MAILBOXES (A Missing) (MessageNew MessageExpunge))")
    await watcher.ok("NOTIFY SET (MAILBOXES B (MessageNew MessageExpunge))")
    await append(other, "A", simple_message("x"))
    await append(other, "B", simple_message("y"))
    await until(watcher, is_status(b"B", MESSAGES=1))
    assert untagged(await watcher.ok("NOOP")) == []
    await watcher.ok("NOTIFY NONE")
    await append(other, "B", simple_message("z"))
    assert untagged(await watcher.ok("NOOP")) == []
    await watcher.close()
    await other.close()


@pytest.mark.parametrize(
    ("command", "status", "text"),
    [
        # RFC 5465 §5: MessageNew and MessageExpunge go together; FlagChange needs both.
        ("NOTIFY SET (SELECTED (MessageNew))", b"BAD", b"MessageNew and MessageExpunge"),
        ("NOTIFY SET (PERSONAL (MessageExpunge))", b"BAD", b"MessageNew and MessageExpunge"),
        ("NOTIFY SET (PERSONAL (FlagChange))", b"BAD", b"FlagChange and AnnotationChange need"),
        # §6.1: one selected group, with message events only.
        (
            "NOTIFY SET (SELECTED (MessageNew MessageExpunge))"
            " (SELECTED-DELAYED (MessageNew MessageExpunge))",
            b"BAD",
            b"only one SELECTED",
        ),
        ("NOTIFY SET (SELECTED (MailboxName))", b"BAD", b"message events only"),
        ("NOTIFY SET (BOGUS (MessageNew MessageExpunge))", b"BAD", b"unknown NOTIFY mailbox filter"),
        ("NOTIFY SET (SUBTREE () (MailboxName))", b"BAD", b"needs at least one mailbox"),
        ("NOTIFY SET (PERSONAL ())", b"BAD", b"events must be NONE"),
        ("NOTIFY SET", b"BAD", b"at least one event group"),
        ("NOTIFY MAYBE", b"BAD", b"SET or NONE"),
        ("NOTIFY NONE extra", b"BAD", b"unexpected extra"),
        ("NOTIFY SET (PERSONAL (MessageNew (UID) MessageExpunge))", b"BAD", b"only for SELECTED"),
        ("NOTIFY SET (SELECTED (MessageNew (BODY[]) MessageExpunge))", b"BAD", b"must not set \\Seen"),
        ("NOTIFY SET (SELECTED (MessageNew (NOSUCH) MessageExpunge))", b"BAD", b"unknown FETCH attribute"),
        # §3.1: an event this server does not report is NO [BADEVENT] listing those it does.
        ("NOTIFY SET (PERSONAL (MessageNew MessageExpunge Bogus))", b"NO", SUPPORTED),
        ("NOTIFY SET (PERSONAL (MailboxMetadataChange))", b"NO", SUPPORTED),
        ("NOTIFY SET (INBOXES (ServerMetadataChange))", b"NO", SUPPORTED),
        ("NOTIFY SET (PERSONAL (MessageNew MessageExpunge AnnotationChange))", b"NO", SUPPORTED),
        (
            "NOTIFY SET " + " ".join("(PERSONAL (MailboxName))" for _ in range(33)),
            b"NO",
            b"[NOTIFICATIONOVERFLOW]",
        ),
    ],
)
async def test_refusals_leave_the_notify_in_force(
    imap: Running, command: str, status: bytes, text: bytes
) -> None:
    watcher, other = await two(imap)
    await other.ok('CREATE "Kept"')
    await watcher.ok("NOTIFY SET (MAILBOXES Kept (MessageNew MessageExpunge))")
    r = await watcher.command(command)
    word, _, rest = tagged(r).partition(b" ")
    assert word == status and text in rest, r
    assert untagged(r) == []
    await append(other, "Kept", simple_message("still watched"))
    await until(watcher, is_status(b"Kept", MESSAGES=1))
    await watcher.close()
    await other.close()


async def test_notify_needs_a_login(imap: Running) -> None:
    c = await imap.raw(login=False)
    r = await c.command("NOTIFY NONE")
    assert tagged(r).startswith(b"BAD NOTIFY is not valid in the not authenticated state")
    await c.close()


async def test_a_delivery_over_smtp_reaches_a_notify_session(srv: DevServer) -> None:
    recipient = srv.account(0)
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    await c.ok(f'LOGIN "{recipient["address"]}" "{recipient["password"]}"')
    r = await c.ok("NOTIFY SET STATUS (INBOXES (MessageNew MessageExpunge))")
    before = next(s for line in untagged(r) if (s := status_of(line)) is not None and s[0] == b"INBOX")
    message = signed_by(srv, 1, [recipient["address"]], "notify over smtp")
    await asyncio.to_thread(submit, srv, 1, [recipient["address"]], message)
    # The delivery runs in the server's workers; each response is awaited with a generous timeout.
    await until(c, is_status(b"INBOX", MESSAGES=before[1]["MESSAGES"] + 1))
    await c.close()


async def test_own_append_gets_exists_without_the_fetch(imap: Running) -> None:
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    await c.ok("NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge))")
    data = simple_message("mine")
    await c.send(f"a1 APPEND INBOX {{{len(data)}+}}\r\n".encode() + data + b"\r\n")
    r = await c.until_tagged("a1")
    # RFC 5465 §5.2: the client knows what it appended itself; EXISTS as ever, no FETCH.
    assert untagged(r)[0] == b"* 1 EXISTS" and not any(b"FETCH" in line for line in r)
    assert tagged(r).startswith(b"OK [APPENDUID")
    await c.close()
