"""Mailbox names on the wire (RFC 3501 §5.1.3 modified UTF-7), over TLS against `kepmta serve --dev`:
a name that is not modified UTF-7, or not its one canonical spelling, is a NO from every command
that takes a mailbox name, never a BAD, and never a second spelling of another folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer

# Not modified UTF-7 at all: a shift never closed, base64 of an odd number of octets, a lone
# surrogate, raw 8-bit octets.
MALFORMED = [b'"&Jjo"', b'"&AA-"', b'"&2D0-"', b'"Ar\xc5\x9fiv"']
# Modified UTF-7 that decodes, but is not how its name is written: "a" encoded, two shifts side by
# side ("éé" is "&AOkA6Q-"), padding bits set ("é" is "&AOk-"), "&" not as "&-".
NON_CANONICAL = [b'"&AGE-"', b'"&AOk-&AOk-"', b'"&AOl-"', b'"&AGEAYgBj-"']

COMMANDS = [
    b"SELECT %s",
    b"EXAMINE %s",
    b"STATUS %s (MESSAGES)",
    b"CREATE %s",
    b"DELETE %s",
    b"RENAME %s Yeni",
    b"RENAME INBOX %s",
    b"SUBSCRIBE %s",
    b"UNSUBSCRIBE %s",
    b'LIST "" %s',
    b"LIST %s *",
    b'LSUB "" %s',
    b"GETQUOTAROOT %s",
    b"APPEND %s {5+}\r\nHi!\r\n",
]


async def login(srv: DevServer, account: int) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(account)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


def maildir(srv: DevServer, account: int) -> Path:
    local, domain = srv.account(account)["address"].split("@")
    return srv.data / "mail" / domain / local


@pytest.mark.parametrize("name", MALFORMED + NON_CANONICAL)
async def test_a_name_that_is_not_canonical_modified_utf7_is_refused_with_no(
    srv: DevServer, name: bytes
) -> None:
    c = await login(srv, 0)
    before = sorted(p.name for p in maildir(srv, 0).iterdir())
    for command in COMMANDS:
        answer = tagged(await c.command(command.replace(b"%s", name, 1)))
        assert answer.startswith(b"NO [CANNOT]"), (command, answer)
    # Nothing was made under any spelling.
    assert sorted(p.name for p in maildir(srv, 0).iterdir()) == before
    # The session is still fine.
    await c.ok("NOOP")
    await c.close()


async def test_canonical_names_keep_working(srv: DevServer) -> None:
    c = await login(srv, 1)
    await c.ok('CREATE "a&-b"')
    await c.ok('CREATE "&AOkA6Q-"')
    assert (maildir(srv, 1) / ".a&-b" / "cur").is_dir()
    assert untagged(await c.ok('LIST "" "&AOkA6Q-"')) == [b'* LIST (\\HasNoChildren) "." "&AOkA6Q-"']
    await c.ok('SELECT "a&-b"')
    # "a" spelled as the name of a folder that exists is refused all the same.
    assert tagged(await c.command('SELECT "&AGE-&-b"')).startswith(b"NO [CANNOT]")
    await c.close()
