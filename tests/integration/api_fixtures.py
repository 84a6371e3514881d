"""What the tests of the integration API share: tokens made with `kepmta tokens create`, an httpx
client over HTTPS trusting only the development provider CA, and a development server with its own
[api] numbers in a copy of the policy file."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import httpx
from kepclient import DevServer, free_port_base, kepmta

from kepmta import devinit
from kepmta.config import DEFAULT_POLICY, Ports


def new_token(srv: DevServer, address: str, *options: str) -> tuple[str, str]:
    """A new token's id and the token: `create` prints `token ID …` and the token as its last word."""
    r = kepmta("tokens", "create", address, *options, "--data", str(srv.data))
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    return words[1], words[-1]


def api_token(srv: DevServer, address: str, *options: str) -> str:
    return new_token(srv, address, *options)[1]


def api_client(srv: DevServer, token: str | None = None) -> httpx.Client:
    assert srv.info
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # The development TLS certificate names localhost.
    return httpx.Client(
        base_url=f"https://localhost:{srv.ports['api']}",
        verify=ssl.create_default_context(cafile=srv.info["provider_ca"]),
        headers=headers,
        timeout=120,
    )


def with_api_policy(text: str, **values: int) -> str:
    """The policy text with keys of its [api] table set."""
    start = text.index("\n[api]\n")
    end = text.find("\n[", start + 1)
    end = len(text) if end < 0 else end
    table = text[start:end]
    for key, value in values.items():
        table, found = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", table)
        assert found == 1, key
    return text[:start] + table + text[end:]


def server_with_api_policy(folder: Path, **values: int) -> DevServer:
    """A development server whose policy is the default one with these [api] numbers."""
    base = free_port_base()
    devinit.create_identity(folder, Ports(base, base + 1, base + 2, base + 3, base + 4, base + 5))
    (folder / "policy.toml").write_text(with_api_policy(DEFAULT_POLICY.read_text(), **values))
    with (folder / devinit.CONFIG_NAME).open("a") as config:
        config.write('\n[policy]\nfile = "policy.toml"\n')
    return DevServer(folder).start()
