"""SEARCH on header keys, SORT and FETCH ENVELOPE/BODYSTRUCTURE answer from message summaries: each
message is parsed once, later commands open no message file, and after a restart the summaries
come back from the folder's record file instead of being parsed again. Work is counted, not timed."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    NESTED,
    PASSWORD,
    USER,
    RawClient,
    Running,
    imap_fixture,
    simple_message,
    tls_fixture,
    untagged,
)

N = 20


@contextmanager
def _opens(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Iterator[Counter[str]]:
    """Counts files opened in the folder's cur/ and new/ (message files, from any thread)."""
    counts: Counter[str] = Counter()
    original: Callable[..., Any] = os.open
    watched = (str(folder / "cur") + os.sep, str(folder / "new") + os.sep)

    def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(path, str | os.PathLike) and os.fspath(path).startswith(watched):
            counts["open"] += 1
        return original(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counted)
    try:
        yield counts
    finally:
        monkeypatch.undo()


COMMANDS = (
    'UID SEARCH SUBJECT "konu 7"',
    "UID SEARCH FROM gonderen3 NOT SEEN",
    'UID SEARCH HEADER Message-ID "konu 1@"',
    "UID SEARCH OR SENTON 13-May-2024 SENTBEFORE 1-Jan-2000",
    "UID SORT (REVERSE SUBJECT FROM DATE) UTF-8 ALL",
    "UID FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY)",
)


async def _answers(c: RawClient) -> list[list[bytes]]:
    return [untagged(await c.ok(command)) for command in COMMANDS]


async def test_summaries_spare_the_files_and_survive_a_restart(
    imap: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(N):
        imap.deliver(simple_message(f"konu {i}", sender=f"gonderen{i}@example.com"))
    imap.deliver(NESTED)
    folder = imap.store().folder_dir("INBOX")
    c = await imap.raw()
    await c.ok("SELECT INBOX")
    first = await _answers(c)
    assert first[0] == [b"* SEARCH 8"]
    assert first[1] == [b"* SEARCH 4"]
    assert first[2] == [b"* SEARCH 2"]
    assert first[3] == [b"* SEARCH " + b" ".join(b"%d" % u for u in range(1, N + 1))]
    assert first[4][0].startswith(b"* SORT 21 10 9 8 ")
    assert (
        b'ENVELOPE ("Tue, 14 May 2024 10:20:30 +0300" "=?UTF-8?Q?Toplant=C4=B1_notlar=C4=B1?="'
        in first[5][-1]
    )
    cache = imap.server.summaries.folder(folder)
    assert (cache.parsed, cache.loaded) == (N + 1, 0)

    with _opens(monkeypatch, folder) as counts:
        assert await _answers(c) == first
    assert counts["open"] == 0 and cache.parsed == N + 1
    await c.close()

    await imap.server.close()
    await imap.server.start("127.0.0.1", 0, 0)
    c = await RawClient.connect(imap.imaps, imap.tls.strict_client)
    await c.ok(f'LOGIN "{USER}" "{PASSWORD}"')
    await c.ok("SELECT INBOX")
    with _opens(monkeypatch, folder) as counts:
        assert await _answers(c) == first
    restarted = imap.server.summaries.folder(folder)
    assert counts["open"] == 0
    assert (restarted.parsed, restarted.loaded) == (0, N + 1)
    await c.close()


async def test_header_sections_and_text_search_still_read_the_file(imap: Running) -> None:
    imap.deliver(NESTED)
    imap.deliver(simple_message("sonraki", body="aranan kelime burada"))
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    assert untagged(await c.ok("UID SEARCH BODY kelime")) == [b"* SEARCH 2"]
    assert untagged(await c.ok('UID SEARCH TEXT "inner text body"')) == [b"* SEARCH 1"]
    assert untagged(await c.ok("UID SEARCH TEXT sonraki")) == [b"* SEARCH 2"]
    assert untagged(await c.ok("UID SEARCH TEXT ikinci")) == [b"* SEARCH 1"]
    r = await c.ok("UID FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[TEXT]<0.22> BODY.PEEK[HEADER.FIELDS (CC)])")
    header = NESTED[: NESTED.index(b"\r\n\r\n") + 4]
    assert b"BODY[HEADER] {%d}\r\n" % len(header) + header in r[0]
    assert b"BODY[TEXT]<0> {22}\r\nThis is the preamble.\r" in r[0]
    assert b'BODY[HEADER.FIELDS (CC)] {38}\r\nCc: "Doe, John" <john@example.com>\r\n\r\n' in r[0]
    await c.close()


async def test_a_header_fetch_of_new_mail_makes_no_summary(imap: Running) -> None:
    """Header sections find where the header ends in the file itself. A summary in memory saves
    them the looking, but none is made for them: for new mail that would cost every FETCH of its
    header a turn on a thread."""
    imap.deliver(NESTED)
    folder = imap.store().folder_dir("INBOX")
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    header = NESTED[: NESTED.index(b"\r\n\r\n") + 4]
    section = b"BODY[HEADER] {%d}\r\n" % len(header) + header
    assert section in (await c.ok("UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER])"))[0]
    cache = imap.server.summaries.folder(folder)
    assert cache.parsed == 0
    await c.ok("UID FETCH 1 ENVELOPE")
    assert cache.parsed == 1
    # Now from the summary's end of the header: the same octets.
    assert section in (await c.ok("UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER])"))[0]
    assert cache.parsed == 1
    await c.close()
