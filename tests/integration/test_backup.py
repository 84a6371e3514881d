"""`kepmta backup` while messages are being submitted, `kepmta restore` into a new folder, and a
server started on it: the ledger audits clean, and every message answered 250 before the backup
started is in its recipient's mailbox, once."""

from __future__ import annotations

import collections
import io
import json
import re
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kepclient import DevServer, free_port_base, imap, kepmta, signed_by, smtp, wait_for
from pgserver import PgServer

from kepmta.cli.backup import FORMAT, MANIFEST, Marks

_PORTS = ("submission", "submissions", "imap", "imaps", "relay", "api", "metrics")


class Load:
    """One client submitting signed messages one after another until told to stop."""

    def __init__(self, srv: DevServer) -> None:
        self.srv = srv
        self.answered: list[str] = []  # subjects answered 250, in order
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            ali, ayse = self.srv.account(0), self.srv.account(1)
            with smtp(self.srv, ali) as s:
                n = 0
                while not self.stop.is_set():
                    subject = f"yedek-{n:04d}"
                    msg = signed_by(self.srv, 0, [ayse["address"]], subject)
                    assert s.sendmail(ali["address"], [ayse["address"]], msg) == {}
                    with self.lock:
                        self.answered.append(subject)
                    n += 1
        except BaseException as e:
            self.error = e

    def so_far(self) -> list[str]:
        with self.lock:
            return list(self.answered)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path / "a").start()
    yield server
    server.stop()


def inbox_subjects(srv: DevServer) -> collections.Counter[str]:
    box = imap(srv, srv.account(1))
    box.select("INBOX", readonly=True)
    _, data = box.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    box.logout()
    found = re.findall(rb"yedek-\d+", b"".join(p[1] for p in data if isinstance(p, tuple)))
    return collections.Counter(s.decode() for s in found)


def new_ports(config: Path) -> None:
    """The restored configuration on ports of its own: the original server still runs."""
    base = free_port_base()
    text = config.read_text()
    for i, name in enumerate(_PORTS):
        text = re.sub(rf"(?m)^{name} = \d+$", f"{name} = {base + i}", text)
    config.write_text(text)


def backup_under_load(srv: DevServer, archive: Path) -> list[str]:
    """Back up while a client submits; returns the subjects answered 250 before the backup began."""
    load = Load(srv)
    load.thread.start()
    assert wait_for(lambda: len(load.so_far()) >= 5, timeout=120), load.error
    before = load.so_far()
    made = kepmta("backup", "-o", str(archive), "--data", str(srv.data))
    after = len(load.so_far())
    # A few more after it, so the load surely overlapped the copy.
    wait_for(lambda: len(load.so_far()) >= after + 3, timeout=60)
    load.stop.set()
    load.thread.join(120)
    assert load.error is None, load.error
    assert made.returncode == 0, made.stderr
    assert archive.stat().st_mode & 0o077 == 0  # keys are inside
    return before


def check_restored(restored: DevServer, before: list[str]) -> None:
    audit = kepmta("evidence", "audit", "--data", str(restored.data))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    # Deliveries pending in the snapshot are done by the restored server.

    def all_there() -> collections.Counter[str] | None:
        found = inbox_subjects(restored)
        return found if set(before) <= set(found) else None

    subjects = wait_for(all_there, timeout=120)
    assert subjects, f"missing: {sorted(set(before) - set(inbox_subjects(restored)))}"
    assert max(subjects.values()) == 1, [s for s, n in subjects.items() if n > 1]


def test_backup_under_load_and_restore(running: DevServer, tmp_path: Path) -> None:
    archive = tmp_path / "kepmta.backup"
    before = backup_under_load(running, archive)

    target = tmp_path / "b"
    restored = kepmta("restore", str(archive), "--data", str(target))
    assert restored.returncode == 0, restored.stderr
    new_ports(target / "kepmta.toml")
    server = DevServer(target).start()
    try:
        check_restored(server, before)
    finally:
        server.stop()


def test_restore_refuses_a_folder_in_use(running: DevServer, tmp_path: Path) -> None:
    archive = tmp_path / "kepmta.backup"
    assert kepmta("backup", "-o", str(archive), "--data", str(running.data)).returncode == 0
    refused = kepmta("restore", str(archive), "--data", str(running.data))
    assert refused.returncode == 1 and "not empty" in refused.stderr
    not_a_backup = tmp_path / "other"
    not_a_backup.write_bytes(b"plain bytes")
    refused = kepmta("restore", str(not_a_backup), "--data", str(tmp_path / "c"))
    assert refused.returncode == 1 and "not a kepmta backup" in refused.stderr


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("data/../escaped", "outside the folder"),
        ("/etc/escaped", "outside the folder"),
        ("link", "regular file"),
    ],
)
def test_restore_refuses_a_member_that_would_leave_the_folder(tmp_path: Path, member: str, why: str) -> None:
    archive = tmp_path / "crafted.backup"
    with tarfile.open(archive, "w:gz") as tar:
        manifest = json.dumps({"format": FORMAT, "database": "sqlite"}).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        info = tarfile.TarInfo(member if member != "link" else "data/link")
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info, io.BytesIO(b""))
    target = tmp_path / "restored" / "data"
    refused = kepmta("restore", str(archive), "--data", str(target))
    assert refused.returncode == 1 and why in refused.stderr, refused.stderr
    assert not (tmp_path / "restored").exists()


def test_backup_and_restore_on_postgresql(postgres: PgServer, tmp_path: Path) -> None:
    srv = DevServer(tmp_path / "a", database=postgres.new_database()).start()
    try:
        archive = tmp_path / "kepmta.backup"
        before = backup_under_load(srv, archive)
    finally:
        srv.stop()
    target = tmp_path / "b"
    empty = postgres.new_database()
    missing = kepmta("restore", str(archive), "--data", str(target))
    assert missing.returncode == 1 and "--database" in missing.stderr
    restored = kepmta("restore", str(archive), "--data", str(target), "--database", empty)
    assert restored.returncode == 0, restored.stderr
    config = target / "kepmta.toml"
    config.write_text(re.sub(r'(?m)^url = ".*"$', f'url = "{empty}"', config.read_text()))
    new_ports(config)
    server = DevServer(target).start()
    try:
        check_restored(server, before)
    finally:
        server.stop()


def test_files_made_after_the_snapshot_are_told_apart() -> None:
    marks = Marks(job=40, seq=100)
    token = "K20261202T174926Z-f2243a486aebe423"
    assert marks.covers(f"{token}-d40.host") and not marks.covers(f"{token}-d41.host:2,S")
    assert marks.covers(f"{token}-r7.host") and not marks.covers(f"{token}-r99.host")
    assert marks.covers(f"{token}-e100.host") and not marks.covers(f"{token}-e101.host")
    # Not a job's file: a client's APPEND, a quota warning, a relay warning, any other file.
    for name in ("K1764700000_123_1.host:2,S", "Kquota-90-d12345678901.host", "Krelay-warning-e123456.host"):
        assert marks.covers(name)
    assert marks.covers("kepmta.toml")
