"""QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA, OVERQUOTA on APPEND and COPY, STATUS sizes."""

from __future__ import annotations

from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    USER,
    Running,
    imap_fixture,
    simple_message,
    tagged,
    tls_fixture,
    untagged,
)


async def test_getquota_and_getquotaroot_report_the_backend_figures(imap: Running) -> None:
    imap.backend.usage[USER] = 5 * 1024 + 1
    imap.backend.limit = 100 * 1024 * 1024
    c = await imap.raw()
    # RFC 9208 §5.1: KiB, a partly used KiB counting as used.
    assert untagged(await c.ok('GETQUOTA ""')) == [b'* QUOTA "" (STORAGE 6 102400)']
    assert untagged(await c.ok("GETQUOTAROOT INBOX")) == [
        b'* QUOTAROOT "INBOX" ""',
        b'* QUOTA "" (STORAGE 6 102400)',
    ]
    assert untagged(await c.ok('GETQUOTAROOT "Kan&ATE-t"')) == [
        b'* QUOTAROOT "Kan&ATE-t" ""',
        b'* QUOTA "" (STORAGE 6 102400)',
    ]
    assert tagged(await c.command('GETQUOTA "user.other"')) == (
        b"NO [NONEXISTENT] no quota root 'user.other'; the only one is \"\""
    )
    assert tagged(await c.command("GETQUOTAROOT Nowhere")) == b"NO [NONEXISTENT] no mailbox named Nowhere"
    assert tagged(await c.command('SETQUOTA "" (STORAGE 1)')) == (
        b"NO [NOPERM] quota limits are set by the provider"
    )
    assert tagged(await c.command("GETQUOTA")) == b"BAD GETQUOTA: missing quota root"
    await c.close()
    pre = await imap.raw(login=False)
    assert (
        tagged(await pre.command('GETQUOTA ""'))
        == b"BAD GETQUOTA is not valid in the not authenticated state"
    )
    await pre.close()


async def test_append_over_quota_is_refused(imap: Running) -> None:
    msg = simple_message("draft")
    imap.backend.limit = 10_000
    imap.backend.usage[USER] = 10_000 - len(msg)
    c = await imap.raw()
    # Exactly filling the quota is allowed.
    r = await c.ok(b"APPEND Drafts {%d+}\r\n" % len(msg) + msg)
    assert tagged(r).startswith(b"OK [APPENDUID ")
    imap.backend.usage[USER] = 10_000 - len(msg) + 1
    r = await c.command(b"APPEND Sent (\\Seen) {%d+}\r\n" % len(msg) + msg)
    # RFC 9208 §4.3
    assert tagged(r) == b"NO [OVERQUOTA] mailbox quota exceeded: 10 of 9 KiB in use, 1 KiB more do not fit"
    assert untagged(await c.ok("STATUS Sent (MESSAGES)")) == [b'* STATUS "Sent" (MESSAGES 0)']
    # A copy takes room too; a move does not.
    await c.ok("SELECT Drafts")
    r = await c.command("COPY 1 Trash")
    assert tagged(r).startswith(b"NO [OVERQUOTA]")
    r = await c.ok("MOVE 1 Trash")
    assert tagged(r) == b"OK MOVE completed"
    await c.close()


async def test_status_size_and_deleted(imap: Running) -> None:
    small, big = simple_message("s"), simple_message("b", "x" * 3000)
    imap.deliver(small)
    imap.deliver(big)
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    await c.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    r = await c.ok("STATUS INBOX (SIZE DELETED DELETED-STORAGE MESSAGES)")
    expected = b'* STATUS "INBOX" (SIZE %d DELETED 1 DELETED-STORAGE 4 MESSAGES 2)' % (len(small) + len(big))
    assert untagged(r) == [expected]
    await c.close()
