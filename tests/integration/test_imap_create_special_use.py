"""CREATE-SPECIAL-USE (RFC 6154 §3), over TLS against `kepmta serve --dev`: a folder created with
USE has those attributes in LIST, in every session and after a rename; one with
an attribute this store cannot give is not created."""

from __future__ import annotations

from imap_fixtures import RawClient, tagged, untagged
from kepclient import DevServer


async def login(srv: DevServer, account: int) -> RawClient:
    c = await RawClient.connect(srv.ports["imaps"], srv.tls())
    a = srv.account(account)
    await c.ok(f'LOGIN "{a["address"]}" "{a["password"]}"')
    return c


async def test_create_special_use(srv: DevServer) -> None:
    c = await login(srv, 1)
    assert b" CREATE-SPECIAL-USE" in untagged(await c.ok("CAPABILITY"))[0]
    # RFC 6154 §5.3's example.
    await c.ok("CREATE MySpecial (USE (\\Drafts \\Sent))")
    assert untagged(await c.ok('LIST "" MySpecial')) == [
        b'* LIST (\\HasNoChildren \\Drafts \\Sent) "." "MySpecial"'
    ]
    r = await c.command("CREATE Foo (USE (\\All))")
    assert tagged(r).startswith(b"NO [USEATTR]"), r
    assert tagged(await c.command("CREATE Foo (USE (\\Nonsense))")).startswith(b"NO [USEATTR]")
    assert untagged(await c.ok('LIST "" Foo')) == []
    assert tagged(await c.command("CREATE Foo (COLOR (red))")).startswith(b"BAD")
    # The selection option (RFC 6154 §3) finds it among the provider's special-use folders.
    special = untagged(await c.ok('LIST (SPECIAL-USE) "" "*"'))
    assert b'* LIST (\\HasNoChildren \\Drafts \\Sent) "." "MySpecial"' in special
    assert all(b"\\HasNoChildren \\" in line for line in special), special
    # Another session sees it; a rename takes the attributes along, a delete drops them.
    other = await login(srv, 1)
    await other.ok("CREATE Arsiv2024 (USE (\\archive))")
    await other.ok("RENAME Arsiv2024 Eski.Arsiv2024")
    assert untagged(await c.ok('LIST "" "Eski.*"')) == [
        b'* LIST (\\HasNoChildren \\Archive) "." "Eski.Arsiv2024"'
    ]
    await c.ok("DELETE Eski.Arsiv2024")
    await c.ok("CREATE Eski.Arsiv2024")
    assert untagged(await c.ok('LIST "" "Eski.*"')) == [b'* LIST (\\HasNoChildren) "." "Eski.Arsiv2024"']
    for session in (c, other):
        await session.close()
