"""kepmta's half of the Dovecot read events, without Dovecot: spool files as the Lua script writes
them and a Maildir with a version 3 dovecot-uidlist, fed to a recording hook."""

from __future__ import annotations

from pathlib import Path

from kepmta.hooks.dovecot import DovecotReadSpool
from kepmta.maildir import Maildir

USER = "ayse.kaya@kep.test"


class Hook:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def opened(self, user: str, path: Path) -> None:
        self.calls.append((user, path.read_bytes()))


def make_store(root: Path) -> Maildir:
    store = Maildir(root / "kep.test" / "ayse.kaya")
    inbox = store.create("INBOX")
    (inbox / "cur" / "K1.host:2,S").write_bytes(b"first")
    (inbox / "new" / "K2.host").write_bytes(b"second")
    (inbox / "dovecot-uidlist").write_text(
        "3 V1700000000 N3 G0123456789abcdef\n1 :K1.host:2,\n2 W6 :K2.host\n"
    )
    folder = store.create("Arşiv")
    (folder / "cur" / "K9.host:2,FS").write_bytes(b"archived")
    (folder / "dovecot-uidlist").write_text("3 V42 N8\n7 :K9.host\n")
    return store


async def test_lines_resolve_through_the_uidlist_and_are_handled_once(tmp_path: Path) -> None:
    store = make_store(tmp_path / "mail")
    spool = tmp_path / "spool"
    spool.mkdir()
    hook = Hook()
    consumer = DovecotReadSpool(spool, lambda user: store, hook)
    events = spool / "20260101.events"
    events.write_bytes(
        f"{USER}\tINBOX\t1700000000\t1\n"
        f"{USER}\tINBOX\t1700000000\t2\n"
        "not a line\n"
        f"{USER}\tINBOX\t999\t1\n"  # another UIDVALIDITY: those UIDs no longer mean these files
        f"{USER}\tArşiv\t42\t7\n"
        f"{USER}\tINBOX\t1700000000\t2".encode()  # still being written
    )
    assert await consumer.drain() == 5
    assert hook.calls == [(USER, b"first"), (USER, b"second"), (USER, b"archived")]
    # The hook is given a pinned link, removed afterwards: nothing is left in tmp/.
    assert not any((store.root / "tmp").iterdir())

    assert await consumer.drain() == 0
    with events.open("ab") as f:
        f.write(b"\n")
    assert await consumer.drain() == 1
    assert hook.calls[-1] == (USER, b"second")

    # A restarted kepmta starts where the saved offset says, not from the beginning.
    again = Hook()
    assert await DovecotReadSpool(spool, lambda user: store, again).drain() == 0
    assert again.calls == []
