"""Work done on a 10,000-message folder is counted, not timed: NOOP, flag FETCH, IDLE wake-ups and
SELECT after a restart must neither list the folder nor stat its messages (the index answers)."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from imap_fixtures import (  # noqa: F401  (the fixtures are used by name)
    PASSWORD,
    USER,
    RawClient,
    Running,
    imap_fixture,
    simple_message,
    tagged,
    tls_fixture,
    untagged,
)

from kepmta.maildir import Maildir

N = 10_000


def _fill(md: Maildir, n: int) -> None:
    """n small messages written straight into cur/, with directory times safely in the past."""
    folder = md.create("INBOX")
    body = b"Subject: s\r\n\r\nx\r\n"
    for i in range(n):
        fd = os.open(folder / "cur" / f"K{i:05d}.bench:2,", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, body)
        os.close(fd)
    past = time.time() - 3600
    for sub in ("cur", "new", "tmp"):
        os.utime(folder / sub, (past, past))


@contextmanager
def _counting(monkeypatch: pytest.MonkeyPatch, root: Path) -> Iterator[Counter[str]]:
    """Counts directory listings and stat calls on paths inside `root`."""
    counts: Counter[str] = Counter()
    prefix = str(root)

    def wrap(name: str) -> None:
        original: Callable[..., Any] = getattr(os, name)

        def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, str | os.PathLike) and os.fspath(path).startswith(prefix):
                counts[name] += 1
            return original(path, *args, **kwargs)

        monkeypatch.setattr(os, name, counted)

    for name in ("listdir", "scandir", "stat", "lstat"):
        wrap(name)
    try:
        yield counts
    finally:
        monkeypatch.undo()


async def test_large_folder_costs_only_its_changes(imap: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    md = imap.store()
    _fill(md, N)
    root = md.folder_dir("INBOX")
    c = await imap.raw()
    r = untagged(await c.ok("SELECT INBOX"))
    assert b"* %d EXISTS" % N in r
    with _counting(monkeypatch, root) as counts:
        assert untagged(await c.ok("NOOP")) == []
        r = await c.ok("FETCH 5000 (FLAGS UID RFC822.SIZE INTERNALDATE)")
        assert r[0].startswith(b"* 5000 FETCH (FLAGS (\\Recent) UID 5000 RFC822.SIZE 17 INTERNALDATE ")
        r = await c.ok("FETCH 1:* (FLAGS)")
        assert len(r) == N + 1
        await c.ok("STORE 10 +FLAGS.SILENT (\\Flagged)")
        await c.ok("UID SEARCH FLAGGED")
        await c.ok("CHECK")
    assert counts["listdir"] == counts["scandir"] == 0, counts
    assert counts["stat"] + counts["lstat"] <= 10, counts
    await c.close()


async def test_select_after_restart_reads_the_index(imap: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    md = imap.store()
    _fill(md, N)
    root = md.folder_dir("INBOX")
    c = await imap.raw()
    await c.ok("EXAMINE INBOX")
    await c.close()
    await imap.server.close()
    await imap.server.start("127.0.0.1", 0, 0)
    c = await RawClient.connect(imap.imaps, imap.tls.strict_client)
    await c.ok(f'LOGIN "{USER}" "{PASSWORD}"')
    with _counting(monkeypatch, root) as counts:
        r = untagged(await c.ok("SELECT INBOX"))
        assert b"* %d EXISTS" % N in r
        assert untagged(await c.ok("FETCH 9999:* (UID FLAGS)")) == [
            b"* 9999 FETCH (UID 9999 FLAGS (\\Recent))",
            b"* 10000 FETCH (UID 10000 FLAGS (\\Recent))",
        ]
    assert counts["listdir"] == counts["scandir"] == 0, counts
    assert counts["stat"] + counts["lstat"] <= 10, counts
    # A delivery by another program is still picked up, at the cost of that one message.
    with _counting(monkeypatch, root) as counts:
        imap.deliver(simple_message("late"))
        deliver_stats = counts["stat"] + counts["lstat"]
        assert untagged(await c.ok("NOOP")) == [b"* 10001 EXISTS", b"* 10001 RECENT"]
    assert counts["listdir"] == counts["scandir"] == 0, counts
    assert counts["stat"] + counts["lstat"] - deliver_stats <= 10, counts
    await c.close()
