"""The inotify watcher: events for renames into and out of a watched directory, read on demand
and pushed through the event loop; the event buffer format."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest

from kepmta.imap.notify import (
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    DirEvent,
    Inotify,
    parse_events,
)

Batches = list[tuple[dict[int, list[DirEvent]], bool]]


def _watcher(batches: Batches) -> Inotify:
    watcher = Inotify.create(lambda events, overflow: batches.append((events, overflow)))
    if watcher is None:
        pytest.skip("no inotify on this platform")
    return watcher


def test_parse_events_buffer() -> None:
    name = b"msg1\0\0\0\0"
    data = struct.pack("iIII", 3, IN_MOVED_TO, 7, len(name)) + name + struct.pack("iIII", 4, IN_IGNORED, 0, 0)
    assert parse_events(data) == [(3, DirEvent(IN_MOVED_TO, "msg1")), (4, DirEvent(IN_IGNORED, ""))]
    assert DirEvent(IN_IGNORED, "").lost_directory and not DirEvent(IN_MOVED_TO, "x").lost_directory


def test_drain_reports_renames_creations_and_removals(tmp_path: Path) -> None:
    batches: Batches = []
    watcher = _watcher(batches)
    try:
        watched, other = tmp_path / "new", tmp_path / "tmp"
        watched.mkdir()
        other.mkdir()
        wd = watcher.watch(watched)
        assert wd is not None
        watcher.drain()
        assert batches == []
        (other / "a").write_bytes(b"x")
        os.rename(other / "a", watched / "a")
        os.link(watched / "a", watched / "b")
        os.rename(watched / "a", other / "c")
        (watched / "b").unlink()
        (other / "d").write_bytes(b"not watched")
        watcher.drain()
        assert batches == [
            (
                {
                    wd: [
                        DirEvent(IN_MOVED_TO, "a"),
                        DirEvent(IN_CREATE, "b"),
                        DirEvent(IN_MOVED_FROM, "a"),
                        DirEvent(IN_DELETE, "b"),
                    ]
                },
                False,
            )
        ]
        watcher.unwatch(wd)
        watcher.drain()
        assert batches[-1] == ({wd: [DirEvent(IN_IGNORED, "")]}, False)
        assert watcher.watch(tmp_path / "missing") is None
    finally:
        watcher.close()
    watcher.close()
    assert watcher.watch(tmp_path) is None


async def test_events_are_pushed_by_the_event_loop(tmp_path: Path) -> None:
    arrived = asyncio.Event()
    batches: Batches = []

    def sink(events: dict[int, list[DirEvent]], overflow: bool) -> None:
        batches.append((events, overflow))
        arrived.set()

    watcher = Inotify.create(sink)
    if watcher is None:
        pytest.skip("no inotify on this platform")
    watcher.attach(asyncio.get_running_loop())
    try:
        wd = watcher.watch(tmp_path)
        (tmp_path / ".tmp").write_bytes(b"")
        os.rename(tmp_path / ".tmp", tmp_path / "m")
        # Nobody calls drain(): only the loop's reader callback can set the event.
        await asyncio.wait_for(arrived.wait(), 20)
        assert any(DirEvent(IN_MOVED_TO, "m") in events.get(wd or -1, []) for events, _ in batches)
    finally:
        watcher.close()
