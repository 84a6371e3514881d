"""SUBSCRIBE, UNSUBSCRIBE, LSUB (RFC 3501 §6.3.6–6.3.9) and LIST's SUBSCRIBED selection and return
options (RFC 5258 §3, RFC 9051 §6.3.9), over TLS against a real `kepmta serve --dev`.

Subscriptions are the account's, kept in its Maildir in the file Dovecot keeps them in
(tests/interop/test_dovecot.py checks that Dovecot reads what kepmta wrote, and the other way)."""

from __future__ import annotations

import asyncio
import imaplib
from pathlib import Path

from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer, imap

from kepmta.maildir import encode_mutf7

EVIDENCE = encode_mutf7("Kanıt").encode()


async def login(srv: DevServer, account: int) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(account)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


def maildir(srv: DevServer, account: int) -> Path:
    local, domain = srv.account(account)["address"].split("@")
    return srv.data / "mail" / domain / local


async def test_a_new_account_has_its_default_folders_subscribed(srv: DevServer) -> None:
    c = await login(srv, 2)
    assert untagged(await c.ok('LSUB "" "*"')) == [
        b'* LSUB () "." "INBOX"',
        b'* LSUB () "." "Drafts"',
        b'* LSUB () "." "Junk"',
        b'* LSUB () "." "' + EVIDENCE + b'"',
        b'* LSUB () "." "Sent"',
        b'* LSUB () "." "Trash"',
    ]
    # Dovecot's format: a version header, an empty line, one name a line.
    stored = (maildir(srv, 2) / "subscriptions").read_bytes()
    assert stored.startswith(b"V\t2\n\nINBOX\n") and b"\n" + EVIDENCE + b"\n" in stored
    await c.close()


async def test_subscribe_unsubscribe_lsub_and_list_subscribed(srv: DevServer) -> None:
    c = await login(srv, 0)
    await c.ok('CREATE "Proje.Alt"')
    await c.ok('SUBSCRIBE "Proje.Alt"')
    # RFC 3501 §6.3.6: a name without a folder may be subscribed.
    await c.ok('SUBSCRIBE "Gone.Deeper"')
    await c.ok('SUBSCRIBE "Proje.Alt"')
    lsub = untagged(await c.ok('LSUB "" "*"'))
    assert b'* LSUB () "." "Proje.Alt"' in lsub
    assert b'* LSUB (\\Noselect) "." "Gone.Deeper"' in lsub
    assert not any(b'"Proje"' in r or b'"Gone"' in r for r in lsub)
    # RFC 3501 §6.3.9: "%" gives the superior of a deeper subscribed name, \Noselect as it is
    # not subscribed itself.
    assert untagged(await c.ok('LSUB "" "Pro%"')) == [b'* LSUB (\\Noselect) "." "Proje"']
    assert untagged(await c.ok('LSUB "Proje." "%"')) == [b'* LSUB () "." "Proje.Alt"']
    assert untagged(await c.ok('LSUB "" "G%"')) == [b'* LSUB (\\Noselect) "." "Gone"']

    # RFC 5258 §3: SUBSCRIBED selects subscribed names, marks them \Subscribed, and a name
    # without a folder \NonExistent.
    assert untagged(await c.ok('LIST (SUBSCRIBED) "" "*o*"')) == [
        b'* LIST (\\Subscribed \\HasNoChildren) "." "INBOX"',
        b'* LIST (\\NonExistent \\Subscribed) "." "Gone.Deeper"',
        b'* LIST (\\Subscribed \\HasNoChildren) "." "Proje.Alt"',
    ]
    # RECURSIVEMATCH: the superiors of subscribed names "%" does not reach, with CHILDINFO.
    assert untagged(await c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%o%"')) == [
        b'* LIST (\\Subscribed \\HasNoChildren) "." "INBOX"',
        b'* LIST (\\NonExistent) "." "Gone" ("CHILDINFO" ("SUBSCRIBED"))',
        b'* LIST (\\HasChildren) "." "Proje" ("CHILDINFO" ("SUBSCRIBED"))',
    ]
    # The return option marks subscribed names among the existing ones, several patterns at once.
    assert untagged(await c.ok('LIST "" ("Proje*" "Sent") RETURN (SUBSCRIBED CHILDREN)')) == [
        b'* LIST (\\HasChildren) "." "Proje"',
        b'* LIST (\\Subscribed \\HasNoChildren) "." "Proje.Alt"',
        b'* LIST (\\Subscribed \\HasNoChildren \\Sent) "." "Sent"',
    ]
    assert tagged(await c.command('LIST (RECURSIVEMATCH) "" "*"')).startswith(b"BAD")
    assert tagged(await c.command('LIST (NOSUCHOPTION) "" "*"')).startswith(b"BAD")
    assert tagged(await c.command('LIST "" "*" RETURN (NOSUCHOPTION)')).startswith(b"BAD")

    # RFC 3501 §6.3.6: deleting a folder leaves its name subscribed.
    await c.ok('DELETE "Proje.Alt"')
    assert b'* LSUB (\\Noselect) "." "Proje.Alt"' in untagged(await c.ok('LSUB "" "Proje*"'))
    await c.ok('UNSUBSCRIBE "Gone.Deeper"')
    # RFC 3501 §6.3.7: NO for a name that is not subscribed.
    assert tagged(await c.command('UNSUBSCRIBE "Gone.Deeper"')).startswith(b"NO")
    assert tagged(await c.command('SUBSCRIBE "a*b"')).startswith(b"NO")
    assert untagged(await c.ok('LSUB "" "Gone*"')) == []
    await c.close()


async def test_subscriptions_are_the_accounts_across_sessions_and_restarts(srv: DevServer) -> None:
    first, second, other = await login(srv, 1), await login(srv, 1), await login(srv, 0)
    await first.ok('SUBSCRIBE "Ar&AV8-iv"')
    assert untagged(await second.ok('LSUB "" "Ar*"')) == [b'* LSUB (\\Noselect) "." "Ar&AV8-iv"']
    assert untagged(await other.ok('LSUB "" "Ar*"')) == []
    await second.ok('UNSUBSCRIBE "Sent"')
    for c in (first, second, other):
        await c.close()

    await asyncio.to_thread(srv.stop)
    await asyncio.to_thread(srv.start)
    # Python's imaplib, as a client uses it.
    m = await asyncio.to_thread(imap, srv, srv.account(1))
    try:
        typ, data = await asyncio.to_thread(m.lsub, '""', "*")
        assert typ == "OK"
        names = {line.rsplit(b" ", 1)[1] for line in data if isinstance(line, bytes)}
        assert b'"Ar&AV8-iv"' in names and b'"Sent"' not in names and b'"INBOX"' in names
        assert (await asyncio.to_thread(m.subscribe, '"Sent"'))[0] == "OK"
        assert (await asyncio.to_thread(m.unsubscribe, '"Ar&AV8-iv"'))[0] == "OK"
        with_sent = await asyncio.to_thread(m.list, '""', "*")
        assert all(b"\\Subscribed" not in line for line in with_sent[1] if isinstance(line, bytes))
        typ, data = await asyncio.to_thread(m.lsub, '""', "Ar*")
        assert typ == "OK" and data == [None]
    finally:
        try:
            await asyncio.to_thread(m.logout)
        except (imaplib.IMAP4.error, OSError):
            m.shutdown()


async def test_a_lock_left_by_a_crash_fails_no_login(srv: DevServer) -> None:
    """A server killed between writing `subscriptions.lock` and renaming it leaves the lock behind
    (it is taken for stale only after two minutes). Logging in again must work at once, and with
    no file yet, every folder is listed as subscribed."""
    root = maildir(srv, 2)
    (root / "subscriptions").unlink(missing_ok=True)
    (root / "subscriptions.lock").write_bytes(b"V\t2\n\nINB")
    c = await login(srv, 2)
    lsub = untagged(await c.ok('LSUB "" "*"'))
    assert b'* LSUB () "." "INBOX"' in lsub and b'* LSUB () "." "Sent"' in lsub
    # A change waits for the lock, and says why it could not be made.
    assert b"NO [INUSE]" in tagged(await c.command('SUBSCRIBE "Yeni"'))
    (root / "subscriptions.lock").unlink()
    await c.ok('UNSUBSCRIBE "Sent"')
    lsub = untagged(await c.ok('LSUB "" "*"'))
    assert b'* LSUB () "." "INBOX"' in lsub and b'"Sent"' not in b"".join(lsub)
    await c.close()


async def test_a_renamed_folder_keeps_its_subscriptions_and_its_inferiors(srv: DevServer) -> None:
    c = await login(srv, 0)
    for name in ("Eski", "Eski.Alt", "Eskimo"):
        await c.ok(f'CREATE "{name}"')
        await c.ok(f'SUBSCRIBE "{name}"')
    await c.ok('RENAME "Eski" "Yeni"')
    assert untagged(await c.ok('LSUB "" "Esk*"')) == [b'* LSUB () "." "Eskimo"']
    assert untagged(await c.ok('LSUB "" "Yeni*"')) == [
        b'* LSUB () "." "Yeni"',
        b'* LSUB () "." "Yeni.Alt"',
    ]
    # RFC 3501 §6.3.5: renaming INBOX moves its messages and leaves INBOX, still subscribed.
    await c.ok('RENAME "INBOX" "Eski Gelen"')
    lsub = untagged(await c.ok('LSUB "" "*"'))
    assert b'* LSUB () "." "INBOX"' in lsub and not any(b"Eski Gelen" in r for r in lsub)
    await c.close()
