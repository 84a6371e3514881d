"""Typed settings read from `kepmta.toml` and the policy file it names.

Every mistake is reported as one ConfigError line naming the file and key. Relative paths are
resolved against the folder of the file that contains them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "policies" / "kep-tr.toml"


class ConfigError(Exception):
    """A configuration mistake, said in one line."""


@dataclass(frozen=True)
class Ports:
    submission: int  # RFC 6409 submission with STARTTLS (587 in production)
    submissions: int  # RFC 8314 implicit TLS (465)
    imap: int  # STARTTLS (143)
    imaps: int  # implicit TLS (993)

    def as_dict(self) -> dict[str, int]:
        return {
            "submission": self.submission,
            "submissions": self.submissions,
            "imap": self.imap,
            "imaps": self.imaps,
        }


@dataclass(frozen=True)
class Policy:
    id: str
    name: str
    local_max_size: int
    evidence_folder: str
    message_type: str


@dataclass(frozen=True)
class Settings:
    source: Path
    domain: str
    provider_name: str
    hostname: str
    listen: str
    ports: Ports
    data_dir: Path
    database_url: str
    tls_cert: Path
    tls_key: Path
    evidence_cert: Path  # the transaction certificate, followed by its chain
    evidence_key: Path
    provider_ca: Path
    tsa_cert: Path
    tsa_key: Path
    qualified_ca: Path  # PEM bundle of the qualified CAs whose certificates may sign submissions
    policy: Policy

    @property
    def mail_root(self) -> Path:
        return self.data_dir / "mail"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def service_address(self) -> str:
        return f"rem-service@{self.domain}"


class _Table:
    """A TOML table that knows where it came from, for one-line errors."""

    def __init__(self, data: dict[str, Any], file: Path, prefix: str) -> None:
        self.data, self.file, self.prefix = data, file, prefix

    def _where(self, key: str) -> str:
        return f"{self.file}: {self.prefix}{key}"

    def table(self, key: str) -> _Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self._where(key)} must be a table")
        return _Table(value, self.file, f"{self.prefix}{key}.")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self._where(key)} must be a non-empty string")
        return value

    def number(self, key: str, *, low: int, high: int) -> int:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{self._where(key)} must be an integer from {low} to {high}")
        return value

    def path(self, key: str, default: str | None = None, *, must_exist: bool = True) -> Path:
        path = (self.file.parent / self.text(key, default)).resolve()
        if must_exist and not path.exists():
            raise ConfigError(f"{self._where(key)}: {path} does not exist")
        return path


def _read(path: Path) -> _Table:
    try:
        with path.open("rb") as f:
            return _Table(tomllib.load(f), path, "")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load_policy(path: Path) -> Policy:
    top = _read(path)
    policy, size, evidence = top.table("policy"), top.table("size"), top.table("evidence")
    return Policy(
        id=policy.text("id"),
        name=policy.text("name"),
        local_max_size=size.number("local_max", low=1024, high=2**40),
        evidence_folder=evidence.text("folder"),
        message_type=evidence.text("message_type"),
    )


def load(path: Path) -> Settings:
    path = path.resolve()
    top = _read(path)
    server, ports, tls = top.table("server"), top.table("ports"), top.table("tls")
    evidence, trust, database = top.table("evidence"), top.table("trust"), top.table("database")
    data_dir = server.path("data_dir", ".", must_exist=False)
    url = database.text("url", "sqlite+aiosqlite:///kepmta.db")
    if url.startswith("sqlite+aiosqlite:///") and not url.startswith("sqlite+aiosqlite:////"):
        url = "sqlite+aiosqlite:///" + str(data_dir / url.removeprefix("sqlite+aiosqlite:///"))

    def port(key: str) -> int:
        return ports.number(key, low=0, high=65535)

    return Settings(
        source=path,
        domain=server.text("domain").lower(),
        provider_name=server.text("provider_name"),
        hostname=server.text("hostname", "localhost"),
        listen=server.text("listen", "127.0.0.1"),
        ports=Ports(port("submission"), port("submissions"), port("imap"), port("imaps")),
        data_dir=data_dir,
        database_url=url,
        tls_cert=tls.path("cert"),
        tls_key=tls.path("key"),
        evidence_cert=evidence.path("cert"),
        evidence_key=evidence.path("key"),
        provider_ca=evidence.path("provider_ca"),
        tsa_cert=evidence.path("tsa_cert"),
        tsa_key=evidence.path("tsa_key"),
        qualified_ca=trust.path("qualified_ca"),
        policy=load_policy(top.table("policy").path("file", str(DEFAULT_POLICY))),
    )
