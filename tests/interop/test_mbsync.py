"""mbsync (isync) against kepmta's own IMAP server: the server INBOX synced into a local Maildir and
local changes (a flag, \\Seen, a new message) synced back, checked through imaplib."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop_fixtures import TIMEOUT, flags_of, need, peek, send, subject, uid_of
from kepclient import DevServer, imap, openssl_verify, p7m, plain_message, receipts, signed_by, wait_for


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    need("mbsync")
    server = DevServer(tmp_path_factory.mktemp("kep") / "data").start()
    yield server
    server.stop()


def mbsync_config(srv: DevServer, acct: dict[str, str], local: Path) -> Path:
    assert srv.info
    config = local.parent / "mbsyncrc"
    config.write_text(
        f"""IMAPAccount kep
Host localhost
Port {srv.ports["imaps"]}
User "{acct["address"]}"
Pass "{acct["password"]}"
SSLType IMAPS
CertificateFile {srv.info["provider_ca"]}

IMAPStore kep-far
Account kep

MaildirStore kep-near
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel kep
Far :kep-far:
Near :kep-near:
Patterns INBOX
Create Near
Sync All
Expunge None
SyncState *
"""
    )
    return config


def mbsync(config: Path) -> None:
    r = subprocess.run(
        ["mbsync", "-c", str(config), "kep"], capture_output=True, text=True, timeout=TIMEOUT * 2
    )
    assert r.returncode == 0, r.stdout + r.stderr


def lf(raw: bytes) -> bytes:
    """A local Maildir stores lines with LF; mbsync converts to and from IMAP's CRLF."""
    return raw.replace(b"\r\n", b"\n")


def local_files(local: Path) -> list[Path]:
    return sorted(p for sub in ("new", "cur") for p in (local / "INBOX" / sub).iterdir())


def without_tuid(raw: bytes) -> bytes:
    """mbsync adds an X-TUID header to each copy it makes, to recognise it after an interruption."""
    return re.sub(rb"(?m)^X-TUID: \S+\r?\n", b"", raw)


def local_content(f: Path) -> bytes:
    return without_tuid(f.read_bytes())


def test_sync_both_ways(srv: DevServer, tmp_path: Path) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    subjects = [subject("mbsync") for _ in range(2)]
    for subj in subjects:
        send(srv, 0, [ayse["address"]], signed_by(srv, 0, [ayse["address"]], subj, "Tebligat."))
    server = imap(srv, ayse)
    a = imap(srv, ali)
    for subj in subjects:
        assert wait_for(lambda s=subj: receipts(a, s, "ContentConsignment"), TIMEOUT)  # type: ignore[misc]
    server.select("INBOX")
    on_server = {subj: peek(server, uid_of(server, subj)) for subj in subjects}

    local = tmp_path / "mail"
    local.mkdir()  # mbsync creates folders in a store, not the store itself
    config = mbsync_config(srv, ayse, local)
    mbsync(config)
    # Pulled byte for byte (but for line ends), and mbsync's BODY.PEEK left them unread.
    pulled = {local_content(f) for f in local_files(local)}
    assert {lf(raw) for raw in on_server.values()} <= pulled
    assert all("\\Seen" not in flags_of(server, uid_of(server, subj)) for subj in subjects)

    # Local changes: flag the first, read the second (Maildir info `:2,<flags>`), add a new one.
    by_subject = {
        subj: next(f for f in local_files(local) if local_content(f) == lf(on_server[subj]))
        for subj in subjects
    }
    flagged, read = by_subject[subjects[0]], by_subject[subjects[1]]
    flagged.rename(local / "INBOX" / "cur" / (flagged.name.split(":")[0] + ":2,F"))
    read.rename(local / "INBOX" / "cur" / (read.name.split(":")[0] + ":2,S"))
    draft_subject = subject("mbsync-new")
    draft = plain_message(ayse["address"], [ayse["address"]], draft_subject, "Yerel not.")
    (local / "INBOX" / "new" / f"{draft_subject}.local").write_bytes(lf(draft))
    mbsync(config)

    server.select("INBOX")
    assert "\\Flagged" in flags_of(server, uid_of(server, subjects[0]))
    assert "\\Seen" not in flags_of(server, uid_of(server, subjects[0]))
    assert "\\Seen" in flags_of(server, uid_of(server, subjects[1]))
    assert without_tuid(peek(server, uid_of(server, draft_subject))) == draft
    # Reading offline and syncing \Seen is a read: ContentHandover for that message only.
    found = wait_for(lambda: receipts(a, subjects[1], "ContentHandover"), TIMEOUT)
    assert len(found) == 1
    ok, content, _ = openssl_verify(p7m(found[0], "ContentHandover"), srv.info["provider_ca"], tmp_path)  # type: ignore[index]
    assert ok, content
    assert receipts(a, subjects[0], "ContentHandover") == []

    # A server-side change comes back down on the next run.
    server.uid("STORE", uid_of(server, draft_subject), "+FLAGS", "(\\Answered)")
    mbsync(config)
    (mine,) = [f for f in local_files(local) if local_content(f) == lf(draft)]
    assert mine.name.split(":2,")[1] == "R"
    server.logout()
    a.logout()
