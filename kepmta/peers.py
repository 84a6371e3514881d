"""The registry of peer KEP providers (`peers.toml`): who they are, where their relay listens, and
what we trust for their TLS identity, their signed evidence and their DKIM signatures.

A loaded registry is an immutable `Peers` snapshot. The server holds a `PeerRegistry`, which
re-reads the file when it changes; a broken file is refused with one line naming file and key, and
the registry in force stays.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

# kepmta.config imports this module to fill Settings.peers: its names are used at call time only.
from kepmta import addresses, config, pki

log = logging.getLogger(__name__)

DEFAULT_PORT = 25  # RFC 5321 §4.5.4.2: SMTP relay between MTAs
DKIM_ALGORITHMS = ("ed25519", "rsa")  # RFC 8463 and RFC 6376 (RFC 8301: rsa-sha256 only)
# RFC 8301 §3.2: verifiers must not accept RSA keys below 1024 bits.
_RSA_MIN_BITS = 1024
# A host name or DKIM selector: dot-separated LDH labels (RFC 1123 §2.1; selectors RFC 6376 §3.1).
_LABELS = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
_PIN = re.compile(r"[0-9a-f]{64}")
_PEER_KEYS = frozenset(
    {
        "name",
        "domain",
        "domains",
        "host",
        "port",
        "tls_ca",
        "tls_pins",
        "tls_server_name",
        "evidence_ca",
        "dkim",
    }
)
_DKIM_KEYS = frozenset({"selector", "algorithm", "public_key"})
DEFAULT_HEADER = (
    "# Peer KEP providers: see conf/peers.toml in kepmta's sources for every key.\n"
    "# `kepmta peers add | add-dev | remove` rewrite this file; only this first comment is kept."
)


@dataclass(frozen=True)
class DkimKey:
    """A peer's DKIM public key, as it would be published in DNS (RFC 6376 §3.6.1)."""

    selector: str
    algorithm: str  # "ed25519" (RFC 8463) or "rsa"
    public_key: str  # the base64 p= value


@dataclass(frozen=True)
class Peer:
    name: str  # the provider's legal name (goes into ExternalERDSDetails)
    domains: tuple[str, ...]  # its KEP domains, lower-case; the first is its main domain
    host: str | None = None  # relay endpoint; None: a known KEP domain, not reachable yet
    port: int = DEFAULT_PORT
    # PEM bundle: verifies its TLS server certificate (outbound) and client certificate (inbound).
    tls_ca: Path | None = None
    # Lower-case hex SHA-256 of the DER certificate(s) it must present, checked besides tls_ca.
    tls_pins: tuple[str, ...] = ()
    tls_server_name: str | None = None  # the name its server certificate must carry (default: host)
    evidence_ca: Path | None = None  # PEM: what its dispatches, receipts and evidence are signed under
    dkim: tuple[DkimKey, ...] = ()

    @property
    def domain(self) -> str:
        """The main domain."""
        return self.domains[0]

    @property
    def tls_name(self) -> str | None:
        """The name the peer's server certificate is checked against when we connect."""
        return self.tls_server_name or self.host


@dataclass(frozen=True)
class Peers:
    """An immutable snapshot of the registry: one peer per domain."""

    peers: tuple[Peer, ...] = ()
    _by_domain: dict[str, Peer] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_domain: dict[str, Peer] = {}
        for peer in self.peers:
            for domain in peer.domains:
                if domain in by_domain:
                    raise ValueError(f"{domain} is a domain of two peers")
                by_domain[domain] = peer
        object.__setattr__(self, "_by_domain", by_domain)

    def for_domain(self, domain: str) -> Peer | None:
        return self._by_domain.get(domain.lower())

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(self._by_domain)

    def named(self, name_or_domain: str) -> Peer | None:
        """The peer with this domain, or else with this name (case-insensitive)."""
        found = self.for_domain(name_or_domain)
        if found is not None:
            return found
        wanted = name_or_domain.casefold()
        return next((p for p in self.peers if p.name.casefold() == wanted), None)


def dkim_algorithm(private_key: PrivateKeyTypes) -> str | None:
    """ed25519 or rsa for a key DKIM can sign with, else None."""
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "rsa"
    return None


def _public_key_problem(algorithm: str, value: str) -> str | None:
    """Why `value` is not a usable p= value for `algorithm`, or None."""
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        return "is not valid base64"
    if algorithm == "ed25519":
        # RFC 8463 §4.2: the 32 bytes of the key itself.
        if len(raw) != 32:
            return "must be the raw 32-byte Ed25519 public key (RFC 8463 §4.2)"
        ed25519.Ed25519PublicKey.from_public_bytes(raw)
        return None
    try:
        key = serialization.load_der_public_key(raw)
    except ValueError:
        return "is not a DER SubjectPublicKeyInfo (RFC 6376 §3.6.1)"
    if not isinstance(key, rsa.RSAPublicKey):
        return "is not an RSA public key"
    if key.key_size < _RSA_MIN_BITS:
        return f"is a {key.key_size}-bit RSA key; at least {_RSA_MIN_BITS} bits (RFC 8301 §3.2)"
    return None


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return _LABELS.fullmatch(text) is not None
    return True


def _known(table: config._Table, allowed: frozenset[str]) -> None:
    # A misspelt key (tls_pin for tls_pins) must not silently drop a trust setting.
    for key in table.data:
        if key not in allowed:
            raise config.ConfigError(f"{table._where(key)} is not a known key")


def _optional_text(table: config._Table, key: str) -> str | None:
    return table.text(key) if key in table.data else None


def _host(table: config._Table, key: str) -> str | None:
    value = _optional_text(table, key)
    if value is None:
        return None
    value = value.lower()
    if not _is_host(value):
        raise config.ConfigError(f"{table._where(key)} {value!r} is not a host name or IP address")
    return value


def _certificates(table: config._Table, key: str) -> Path | None:
    if key not in table.data:
        return None
    path = table.path(key)
    try:
        pki.load_trust(path)
    except (OSError, ValueError):
        raise config.ConfigError(f"{table._where(key)}: {path} holds no PEM certificate") from None
    return path


def _domains(table: config._Table) -> tuple[str, ...]:
    if "domain" in table.data and "domains" in table.data:
        raise config.ConfigError(f"{table._where('domain')}: give domains or domain, not both")
    if "domain" in table.data:
        listed = [("domain", table.text("domain"))]
    else:
        names = table.strings("domains")
        if not names:
            raise config.ConfigError(f"{table._where('domains')} must list at least one domain")
        listed = [(f"domains[{i}]", name) for i, name in enumerate(names)]
    domains: list[str] = []
    for key, name in listed:
        domain = name.lower()
        if not addresses.is_domain(domain):
            raise config.ConfigError(f"{table._where(key)} {domain!r} is not a domain name")
        if domain in domains:
            raise config.ConfigError(f"{table._where(key)} {domain!r} is listed twice")
        domains.append(domain)
    return tuple(domains)


def _dkim(table: config._Table) -> tuple[DkimKey, ...]:
    entries = table.data.get("dkim", [])
    if not isinstance(entries, list):
        raise config.ConfigError(f"{table._where('dkim')} must be an array of tables ([[peer.dkim]])")
    keys: list[DkimKey] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise config.ConfigError(f"{table._where(f'dkim[{i}]')} must be a table")
        key = config._Table(entry, table.file, f"{table.prefix}dkim[{i}].")
        _known(key, _DKIM_KEYS)
        selector = key.text("selector").lower()
        if _LABELS.fullmatch(selector) is None:
            raise config.ConfigError(f"{key._where('selector')} {selector!r} is not a DKIM selector")
        if any(k.selector == selector for k in keys):
            raise config.ConfigError(f"{key._where('selector')} {selector!r} is listed twice")
        algorithm = key.text("algorithm").lower()
        if algorithm not in DKIM_ALGORITHMS:
            raise config.ConfigError(f"{key._where('algorithm')} must be ed25519 or rsa")
        public_key = key.text("public_key")
        problem = _public_key_problem(algorithm, public_key)
        if problem is not None:
            raise config.ConfigError(f"{key._where('public_key')} {problem}")
        keys.append(DkimKey(selector, algorithm, public_key))
    return tuple(keys)


def _peer(table: config._Table) -> Peer:
    _known(table, _PEER_KEYS)
    name = table.text("name")
    domains = _domains(table)
    host = _host(table, "host")
    port = table.number("port", low=1, high=65535) if "port" in table.data else DEFAULT_PORT
    tls_ca = _certificates(table, "tls_ca")
    if host is not None and tls_ca is None:
        # We never relay without verifying the peer's TLS certificate; a pin alone says nothing
        # about expiry or the name, so the CA is always needed.
        raise config.ConfigError(f"{table._where('tls_ca')} is required when host is given")
    pins = []
    for i, pin in enumerate(table.strings("tls_pins")):
        if _PIN.fullmatch(pin.lower()) is None:
            raise config.ConfigError(
                f"{table._where(f'tls_pins[{i}]')} must be 64 hex digits (SHA-256 of a DER certificate)"
            )
        pins.append(pin.lower())
    return Peer(
        name=name,
        domains=domains,
        host=host,
        port=port,
        tls_ca=tls_ca,
        tls_pins=tuple(pins),
        tls_server_name=_host(table, "tls_server_name"),
        evidence_ca=_certificates(table, "evidence_ca"),
        dkim=_dkim(table),
    )


def parse_peers(text: str, path: Path) -> Peers:
    """The registry in `text`, checked as if it were the file `path` (relative paths, messages)."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise config.ConfigError(f"{path}: not valid TOML: {e}") from None
    top = config._Table(data, path, "")
    _known(top, frozenset({"peer"}))
    entries = data.get("peer", [])
    if not isinstance(entries, list):
        raise config.ConfigError(f"{path}: peer must be an array of tables ([[peer]])")
    peers: list[Peer] = []
    listed_by: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise config.ConfigError(f"{path}: peer[{i}] must be a table")
        peer = _peer(config._Table(entry, path, f"peer[{i}]."))
        for domain in peer.domains:
            if domain in listed_by:
                raise config.ConfigError(
                    f"{path}: peer[{i}].domains: {domain} is already a domain of {listed_by[domain]}"
                )
            listed_by[domain] = f"peer[{i}]"
        if any(p.name.casefold() == peer.name.casefold() for p in peers):
            raise config.ConfigError(f"{path}: peer[{i}].name {peer.name!r} is the name of another peer")
        peers.append(peer)
    return Peers(tuple(peers))


def load_peers(path: Path) -> Peers:
    """Read and check the registry file; every mistake is one ConfigError line naming file and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise config.ConfigError(f"{path}: no such peers file") from None
    except UnicodeDecodeError:
        raise config.ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise config.ConfigError(f"{path}: cannot be read: {e.strerror}") from None
    return parse_peers(text, path)


def _toml_string(text: str) -> str:
    # TOML basic string: quote, backslash and control characters escaped (TOML 1.0 "String").
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_path(path: Path, folder: Path) -> str:
    # Files beside the registry stay relative, so the folder can move as a whole.
    return _toml_string(path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path))


def header_of(text: str) -> str:
    """The comment lines at the top of a registry file (kept when the file is rewritten)."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or (not line.strip() and lines):
            lines.append(line)
        elif line.strip():
            break
    return "\n".join(lines).strip()


def dump_peers(peers: Peers, path: Path, header: str = DEFAULT_HEADER) -> str:
    """The registry as TOML for the file `path`, after the comment `header`."""
    folder = path.parent.resolve()
    lines = [header.strip() or DEFAULT_HEADER, ""]
    for peer in peers.peers:
        lines += [
            "[[peer]]",
            f"name = {_toml_string(peer.name)}",
            f"domains = [{', '.join(_toml_string(d) for d in peer.domains)}]",
        ]
        if peer.host is not None:
            lines += [f"host = {_toml_string(peer.host)}", f"port = {peer.port}"]
        elif peer.port != DEFAULT_PORT:
            lines.append(f"port = {peer.port}")
        if peer.tls_ca is not None:
            lines.append(f"tls_ca = {_toml_path(peer.tls_ca, folder)}")
        if peer.tls_pins:
            lines.append(f"tls_pins = [{', '.join(_toml_string(p) for p in peer.tls_pins)}]")
        if peer.tls_server_name is not None:
            lines.append(f"tls_server_name = {_toml_string(peer.tls_server_name)}")
        if peer.evidence_ca is not None:
            lines.append(f"evidence_ca = {_toml_path(peer.evidence_ca, folder)}")
        for key in peer.dkim:
            lines += [
                "",
                "[[peer.dkim]]",
                f"selector = {_toml_string(key.selector)}",
                f"algorithm = {_toml_string(key.algorithm)}",
                f"public_key = {_toml_string(key.public_key)}",
            ]
        lines.append("")
    return "\n".join(lines)


def save_peers(peers: Peers, path: Path) -> Peers:
    """Rewrite the registry file with `peers`, keeping its header comment.

    The new text is checked as the file would be before it replaces the file (temporary file and
    rename), so a mistake leaves the file as it was; returns the registry as it will be read.
    """
    try:
        header = header_of(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        header = DEFAULT_HEADER
    text = dump_peers(peers, path, header)
    checked = parse_peers(text, path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return checked


class PeerRegistry:
    """The registry in force in the server, re-read when its file changes."""

    def __init__(self, path: Path | None, peers: Peers) -> None:
        self.path = path
        self._current = peers
        self._seen = self._signature()

    @property
    def current(self) -> Peers:
        return self._current

    def _signature(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload(self) -> bool:
        """Re-read the file; a broken one is logged and the registry in force stays. Returns
        whether the registry changed."""
        if self.path is None:
            return False
        # Taken before reading: a change made while we read is seen by the next poll.
        self._seen = self._signature()
        try:
            peers = load_peers(self.path)
        except config.ConfigError as e:
            log.error("peer registry not reloaded, the previous one stays in force: %s", e)
            return False
        if peers == self._current:
            return False
        self._current = peers
        log.info("peer registry reloaded from %s: %d peers", self.path, len(peers.peers))
        return True

    async def watch(self, interval: float = 2.0) -> None:
        """Poll the file (mtime, size, inode: an editor's rename changes the inode) and reload
        on every change; runs until cancelled. Without a file there is nothing to watch."""
        if self.path is None:
            return
        while True:
            await asyncio.sleep(interval)
            if self._signature() != self._seen:
                self.reload()
