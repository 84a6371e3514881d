"""Message summaries: what they hold, their record file beside the index (reloaded, torn, compacted,
upgraded with the MIME structure), and searches that read files finding renamed ones. Work is
counted (messages parsed, records loaded), never timed."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest

from kepmta.imap import fetch, search
from kepmta.imap.cache import CACHE, FolderCache, SummaryCache, Wanted, summarize
from kepmta.imap.mailbox import MailboxView, StoreRegistry
from kepmta.imap.protocol import Args, Atom, String
from kepmta.imap.summary import Summary, decode, encode, record_base
from kepmta.maildir import Maildir
from kepmta.message import entity

MESSAGE = (
    b"From: =?UTF-8?B?w4dpw6dlaw==?= <cicek@kep.test>\r\n"
    b"To: Ali <ali@kep.test>, undisclosed-recipients:;\r\n"
    b"Cc: Do\xe7 \xff <doc@kep.test>\r\n"
    b"Subject: Re: [kep] =?UTF-8?Q?Toplant=C4=B1_notlar=C4=B1?=\r\n"
    b"Date: Tue, 14 May 2024 23:20:30 -0500\r\n"
    b"X-Empty:\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n"
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"g\xc3\xb6vde\r\n"
    b"--b--\r\n"
)


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def test_summary_holds_what_search_sort_and_fetch_need() -> None:
    s = summarize(MESSAGE, len(MESSAGE), whole=True)
    tree = entity.parse(MESSAGE)
    assert s.envelope == fetch.envelope(tree)
    assert s.body == fetch.body_structure(MESSAGE, tree, extended=False)
    assert s.bodystructure == fetch.body_structure(MESSAGE, tree, extended=True)
    assert s.header_end == MESSAGE.index(b"\r\n\r\n") + 4 and s.size == len(MESSAGE)
    assert ("FROM", "çiçek <cicek@kep.test>") in s.fields
    assert ("X-EMPTY", "") in s.fields
    # Octets that are not UTF-8 stay as they were (surrogate escapes), for ENVELOPE to give back.
    assert dict(s.fields)["SUBJECT"] == "re: [kep] toplantı notları"
    assert dict(s.fields)["CC"] == "do\udce7 \udcff <doc@kep.test>"
    assert b"Do\xe7 \xff" in s.envelope
    # RFC 3501 §6.4.4: the sent date's own day, not UTC's; RFC 5256 §3: the instant for SORT.
    assert s.sent_day is not None and s.sent is not None
    assert s.sent_day == dt.date(2024, 5, 14).toordinal()
    assert s.sent == dt.datetime(2024, 5, 15, 4, 20, 30, tzinfo=dt.UTC).timestamp()
    assert (s.sort_subject, s.sort_from, s.sort_to, s.sort_cc) == ("TOPLANTı NOTLARı", "CICEK", "ALI", "DOC")
    header_only = summarize(MESSAGE[: s.header_end], len(MESSAGE), whole=False)
    assert header_only == Summary(**{**s.__dict__, "body": None, "bodystructure": None})
    assert not header_only.has_structure and s.has_structure


def test_record_line_round_trip() -> None:
    s = summarize(MESSAGE, len(MESSAGE), whole=True)
    line = encode("K1.host\tx", s)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert record_base(line) == "K1.host\tx"
    assert decode(line) == s
    for bad in (b"", b'"x"\t[1]\n', b'"x"\t{"a":1}\n', b"nonsense\n"):
        try:
            decode(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_record_file_survives_a_restart(tmp_path: Path) -> None:
    paths = [_write(tmp_path, f"m{i}", MESSAGE.replace(b"ok", b"ok %d" % i)) for i in range(5)]
    wanted = [Wanted(p.name, p, p.stat().st_size) for p in paths]
    first = FolderCache(tmp_path)
    made = first.fill(wanted, structure=False, live=None)
    assert (first.parsed, first.loaded) == (5, 0)
    again = first.fill(wanted, structure=False, live=None)
    assert again == made and (first.parsed, first.loaded) == (5, 5)
    # A new process: the summaries come from the record file, no message is parsed.
    restarted = FolderCache(tmp_path)
    assert restarted.fill(wanted, structure=True, live=None) == made
    assert (restarted.parsed, restarted.loaded) == (0, 5)


def test_torn_record_is_dropped_and_the_file_stays_usable(tmp_path: Path) -> None:
    a, b = _write(tmp_path, "a", MESSAGE), _write(tmp_path, "b", MESSAGE + b"x")
    FolderCache(tmp_path).fill([Wanted("a", a, a.stat().st_size)], structure=False, live=None)
    record = (tmp_path / CACHE).read_bytes()
    (tmp_path / CACHE).write_bytes(record + record[len(b"kepmta-cache 1\n") :][:40])
    cache = FolderCache(tmp_path)
    wanted = [Wanted("a", a, a.stat().st_size), Wanted("b", b, b.stat().st_size)]
    cache.fill(wanted, structure=False, live=None)
    assert (cache.parsed, cache.loaded) == (1, 1)
    reloaded = FolderCache(tmp_path)
    reloaded.fill(wanted, structure=False, live=None)
    assert (reloaded.parsed, reloaded.loaded) == (0, 2)


@pytest.mark.parametrize("content", [b"something else\n", b"kepmta-cache 1\n", b"kepmta-cache 3\n"])
def test_file_of_another_kind_is_replaced(tmp_path: Path, content: bytes) -> None:
    """Records of an older version (made by another reader of messages) are made again."""
    a = _write(tmp_path, "a", MESSAGE)
    (tmp_path / CACHE).write_bytes(content + encode("a", summarize(MESSAGE, len(MESSAGE), whole=False)))
    cache = FolderCache(tmp_path)
    cache.fill([Wanted("a", a, a.stat().st_size)], structure=False, live=None)
    assert cache.parsed == 1 and (tmp_path / CACHE).read_bytes().startswith(b"kepmta-cache 4\n")


def test_records_of_expunged_messages_are_compacted_away(tmp_path: Path) -> None:
    paths = [_write(tmp_path, f"m{i}", MESSAGE) for i in range(300)]
    cache = FolderCache(tmp_path)
    cache.fill([Wanted(p.name, p, p.stat().st_size) for p in paths], structure=False, live=None)
    assert cache.records == 300 and not cache.due(300)
    assert cache.due(10)
    live = frozenset(f"m{i}" for i in range(10))
    got = cache.fill([Wanted("m1", paths[1], paths[1].stat().st_size)], structure=False, live=live)
    assert "m1" in got and cache.records == 10 and cache.parsed == 300
    assert len((tmp_path / CACHE).read_bytes().splitlines()) == 11
    reloaded = FolderCache(tmp_path)
    reloaded.fill(
        [Wanted(f"m{i}", paths[i], paths[i].stat().st_size) for i in range(12)], structure=False, live=None
    )
    assert (reloaded.parsed, reloaded.loaded) == (2, 10)


def test_large_message_gets_its_structure_when_asked(tmp_path: Path) -> None:
    big = MESSAGE.replace(b"g\xc3\xb6vde\r\n", b"line\r\n" * 60_000)
    path = _write(tmp_path, "big", big)
    wanted = [Wanted("big", path, len(big))]
    cache = FolderCache(tmp_path)
    header_only = cache.fill(wanted, structure=False, live=None)["big"]
    assert not header_only.has_structure and header_only.header_end == MESSAGE.index(b"\r\n\r\n") + 4
    full = cache.fill(wanted, structure=True, live=None)["big"]
    assert full.bodystructure == fetch.body_structure(big, entity.parse(big), extended=True)
    assert cache.parsed == 2
    # The later, complete record wins after a restart.
    restarted = FolderCache(tmp_path)
    assert restarted.fill(wanted, structure=True, live=None)["big"] == full and restarted.parsed == 0


def test_memory_set_is_bounded_and_checks_the_size(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("INBOX")
    for i in range(4):
        _write(tmp_path / "cur", f"m{i}:2,", MESSAGE)
    store = StoreRegistry().open("INBOX", tmp_path)
    cache = SummaryCache(capacity=2)
    messages = list(store.messages.values())
    got = asyncio.run(cache.get(store, messages))
    assert sorted(got) == [1, 2, 3, 4]
    folder = cache.folder(tmp_path)
    assert folder.parsed == 4
    # Only the two most recent stay in memory; the others come back from the record file.
    asyncio.run(cache.get(store, messages))
    assert (folder.parsed, folder.loaded) == (4, 2)


def _program(*tokens: str) -> search.Key:
    return search.parse_program(
        Args(tuple(String(t[1:].encode()) if t[0] == "=" else Atom(t) for t in tokens))
    )


def test_body_search_finds_a_file_renamed_meanwhile(tmp_path: Path) -> None:
    md = Maildir(tmp_path)
    md.create("INBOX")
    _write(tmp_path / "cur", "one:2,", MESSAGE)
    _write(tmp_path / "cur", "two:2,", MESSAGE.replace(b"g\xc3\xb6vde", b"other"))
    store = StoreRegistry().open("INBOX", tmp_path)
    view = MailboxView(store, read_only=True)
    cache = SummaryCache()
    asyncio.run(cache.get(store, list(store.messages.values())))
    # Another program renames a file after the folder last looked (no inotify here).
    os.rename(tmp_path / "cur" / "one:2,", tmp_path / "cur" / "one:2,S")
    caught_up: list[bool] = []

    async def summaries(uids: list[int]) -> dict[int, Summary]:
        return await cache.get(store, [store.messages[u] for u in uids])

    def locate(uid: int) -> Path:
        return store.messages[uid].path

    def catch_up() -> None:
        caught_up.append(True)
        store.refresh(force=True)

    async def run(key: search.Key) -> list[int]:
        messages = [(i + 1, store.messages[u]) for i, u in enumerate(view.uids)]
        hits = await search.run(
            key, messages, view.recent, summaries, locate, catch_up, max_seq=len(messages), max_uid=2
        )
        return [h.message.uid for h in hits]

    assert asyncio.run(run(_program("BODY", "=GÖVDE"))) == [1]
    assert caught_up == [True] and store.messages[1].flags == {"\\Seen"}
    assert asyncio.run(run(_program("TEXT", "=TOPLANTI NOTLARI"))) == []
    assert asyncio.run(run(_program("TEXT", "=toplantı notları"))) == [1, 2]
    assert asyncio.run(run(_program("OR", "BODY", "=other", "SEEN"))) == [1, 2]
    assert asyncio.run(run(_program("NOT", "BODY", "=other"))) == [1]
    assert asyncio.run(run(_program("SENTON", "14-May-2024", "HEADER", "X-Empty", "="))) == [1, 2]
    assert asyncio.run(run(_program("SUBJECT", "=NOTLARı", "UID", "2:*"))) == [2]
    assert asyncio.run(run(_program("CC", "=DOC@KEP"))) == [1, 2]
