"""Typed settings read from `kepmta.toml` and the policy file it names.

Every mistake is reported as one ConfigError line naming the file and key. Relative paths are
resolved against the folder of the file that contains them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kepmta import peers as peer_registry
from kepmta.imap.folders import NAME_MAX, FolderLimits
from kepmta.limits import ImapLimits

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "policies" / "kep-tr.toml"


class ConfigError(Exception):
    """A configuration mistake, said in one line."""


# A node's name goes into job claims and spool file names (kepmta.queue.jobs, kepmta.spool).
_NODE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


def default_node() -> str:
    """This machine's name and this process's id: unique among the live nodes on one database."""
    return f"{socket.gethostname().split('.')[0][:50]}-{os.getpid()}"


@dataclass(frozen=True)
class Ports:
    submission: int  # RFC 6409 submission with STARTTLS (587 in production)
    submissions: int  # RFC 8314 implicit TLS (465)
    imap: int  # STARTTLS (143)
    imaps: int  # implicit TLS (993)
    # Inbound relay from peer providers (25 in production); None: no relay listener.
    relay: int | None = None
    # The integration API and the verification page over HTTPS (kepmta.api); None: not served.
    api: int | None = None
    # Prometheus metrics over plain HTTP on [server] metrics_listen (kepmta.metrics); None: none.
    metrics: int | None = None

    def as_dict(self) -> dict[str, int]:
        ports = {
            "submission": self.submission,
            "submissions": self.submissions,
            "imap": self.imap,
            "imaps": self.imaps,
        }
        if self.relay is not None:
            ports["relay"] = self.relay
        if self.api is not None:
            ports["api"] = self.api
        if self.metrics is not None:
            ports["metrics"] = self.metrics
        return ports


@dataclass(frozen=True)
class ApiPolicy:
    """[api] of the policy file: what one client of the integration API may ask (kepmta.api)."""

    # Each token's token bucket: requests it may make at once, and how fast that allowance comes
    # back. The verification page meters each client address the same way.
    burst: int = 60
    requests_per_minute: int = 600
    # Addresses in one directory bulk check, and entries in one directory search answer.
    bulk_check_max: int = 1000
    search_results: int = 50
    # The largest file the verification page (/dogrula) takes, in bytes.
    verify_max_size: int = 20 * 1024 * 1024


@dataclass(frozen=True)
class Policy:
    id: str
    name: str
    local_max_size: int
    peer_max_size: int
    default_quota: int
    quota_warnings: tuple[int, ...]
    auth_failures_per_account: int
    auth_failures_per_address: int
    auth_window_seconds: int
    malware_command: tuple[str, ...]
    evidence_folder: str
    message_type: str
    relay: RelayPolicy
    # [imap]: what an account's folders may cost.
    imap: FolderLimits = field(default_factory=FolderLimits)
    # [auth], kepmta.ratelimit: failures of one account from one address before its tries wait,
    # the first such wait (doubling after), the fixed wait of a clean address logging in to an
    # account under attack, the longest wait slept, and tries asleep at once per address.
    auth_failures_per_pair: int = 5
    auth_first_delay: int = 1
    auth_account_delay: int = 1
    auth_max_delay: int = 30
    auth_waiting_per_address: int = 10
    # [auth], kepmta.passwords.CheckedPasswords: how long a confirmed password is taken again
    # without scrypt for the same account.
    auth_cache_seconds: int = 300
    # [submission]: refused RCPTs in one transaction, and refused MAILs and RCPTs in one session,
    # before the session is ended with 421 (kepmta.submission).
    max_refused_recipients: int = 10
    max_refused_per_session: int = 20
    # [imap]: connections, sessions and the sizes of commands (kepmta.limits).
    imap_limits: ImapLimits = field(default_factory=ImapLimits)
    # [submission]: connections at once from one client address (IPv6 by its /64), the
    # submission and submissions ports together, and authenticated sessions of one account.
    submission_connections_per_address: int = 20
    submission_sessions_per_account: int = 10
    # [relay]: connections at once to the relay listener from one peer address.
    relay_connections_per_address: int = 20
    # [api]: the integration API's rate limits and sizes.
    api: ApiPolicy = field(default_factory=ApiPolicy)


@dataclass(frozen=True)
class RelayPolicy:
    """Timers of relaying to peer providers ([relay] of the policy file), in seconds."""

    # Waits between delivery attempts to an unreachable or temporarily refusing peer; the last
    # one repeats.
    retry_schedule: tuple[int, ...]
    # No relay evidence from the peer this long after acceptance: the sender is warned (KEP.md).
    warn_after: int
    # ... and this long after: RelayFailure (RB09), the message is given up.
    fail_after: int
    # After a permanent SMTP refusal, how long the peer's own RelayRejection evidence is awaited
    # before we record RelayFailure naming its reply.
    refusal_wait: int


@dataclass(frozen=True)
class DkimSigning:
    """One of our DKIM keys for relayed messages (RFC 6376; RFC 8463 for Ed25519)."""

    selector: str
    algorithm: str  # "ed25519" or "rsa"
    key: Path  # PEM private key


@dataclass(frozen=True)
class RelaySettings:
    """Our identity towards peer providers ([relay] of kepmta.toml)."""

    client_cert: Path  # TLS client certificate for our domain, followed by its chain
    client_key: Path
    dkim: tuple[DkimSigning, ...]


@dataclass(frozen=True)
class TsaConfig:
    """An external RFC 3161 time-stamp authority ([tsa]); without it the built-in TSA signs."""

    url: str
    ca: Path  # PEM certificate(s) the TSA certificate must chain to
    policy: str | None = None
    username: str | None = None
    password_file: Path | None = None
    timeout: int = 10  # seconds for one request
    retries: int = 2  # further attempts before the evidence waits for a later try


@dataclass(frozen=True)
class Smarthost:
    """The SMTP server e-mail notices leave through ([notify] smarthost; kepmta.notify)."""

    host: str
    port: int
    security: str  # "starttls", "tls" (implicit, RFC 8314) or "none"
    sender: str  # the notices' From
    ca: Path | None = None  # PEM CA(s) its certificate must chain to; None: the system's
    username: str | None = None
    password_file: Path | None = None


@dataclass(frozen=True)
class NotifySettings:
    """Notices that a KEP reached a mailbox ([notify]; kepmta.notify): an SMS through the
    operator's command or webhook, an e-mail through a smarthost, each to the accounts that
    registered a number or an address."""

    sms_command: tuple[str, ...] = ()  # argv; "{phone}" and "{text}" replaced; the text on stdin
    sms_webhook: str | None = None  # HTTP(S) URL that takes a POST of JSON
    smarthost: Smarthost | None = None
    timeout: int = 10  # seconds one attempt may take
    retry_schedule: tuple[int, ...] = (10, 60, 300, 1800, 7200)  # waits after each failure


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
    evidence_key: Path | None  # PEM key file, or None when the key is in a PKCS#11 token
    provider_ca: Path
    tsa_cert: Path | None  # the built-in TSA's certificate and key; None with an external [tsa]
    tsa_key: Path | None
    qualified_ca: Path  # PEM bundle of the qualified CAs (and their CRLs) trusted for submissions
    policy: Policy
    peers_file: Path | None = None  # the peer registry ([peers] file)
    peers: tuple[peer_registry.Peer, ...] = ()
    # Dovecot as the IMAP front end: where its Lua script spools read events (conf/dovecot/)
    dovecot_read_spool: Path | None = None
    # The evidence key in an HSM: RFC 7512 PKCS#11 URI and the file holding the user PIN.
    evidence_key_uri: str | None = None
    evidence_pin_file: Path | None = None
    # CRLs of the provider CA chain, captured into the ledger while in force.
    evidence_crls: tuple[Path, ...] = ()
    tsa: TsaConfig | None = None
    # A ledger checkpoint after this many records, or this many minutes after the last one.
    checkpoint_records: int = 1000
    checkpoint_minutes: int = 60
    relay: RelaySettings | None = None
    notify: NotifySettings | None = None
    # Hash algorithm (sha256, sha384, sha512) → the moment it counts as weak: an evidence record
    # chain in it must have been re-hashed (`kepmta evidence renew --rehash`) before then.
    weak_algorithms: dict[str, dt.datetime] = field(default_factory=dict)
    # This server among several on one database and data folder ([server] node): its name in the
    # jobs it claims and the spool files it writes; and how many seconds its claim on a job holds
    # without renewal ([server] job_lease), so how soon a dead node's jobs are taken up.
    node: str = field(default_factory=default_node)
    job_lease: int = 60
    # Where the metrics port listens ([server] metrics_listen): loopback unless said otherwise,
    # as the metrics are served without authentication.
    metrics_listen: str = "127.0.0.1"
    # [log] format: "text" (one line a record) or "json" (one JSON object a line; kepmta.logs).
    log_format: str = "text"

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
    """A TOML table that knows where it came from, for one-line errors, and which of its keys were
    read: a key never read is a misspelling or a setting with no effect, refused (see unused)."""

    def __init__(self, data: dict[str, Any], file: Path, prefix: str) -> None:
        self.data, self.file, self.prefix = data, file, prefix
        self.used: set[str] = set()
        self._parts: dict[str, _Table] = {}

    def _where(self, key: str) -> str:
        return f"{self.file}: {self.prefix}{key}"

    def _get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def table(self, key: str) -> _Table:
        if key in self._parts:
            return self._parts[key]
        value = self._get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self._where(key)} must be a table")
        part = self._parts[key] = _Table(value, self.file, f"{self.prefix}{key}.")
        return part

    def entries(self, key: str) -> list[_Table]:
        """An array of tables ([[key]]), each entry checked like a table of its own."""
        value = self._get(key, [])
        if not isinstance(value, list):
            raise ConfigError(f"{self._where(key)} must be an array of tables ([[{self.prefix}{key}]])")
        parts = []
        for i, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise ConfigError(f"{self._where(f'{key}[{i}]')} must be a table")
            part = _Table(entry, self.file, f"{self.prefix}{key}[{i}].")
            parts.append(self._parts.setdefault(f"{key}[{i}]", part))
        return parts

    def text(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self._where(key)} must be a non-empty string")
        return value

    def number(self, key: str, *, low: int, high: int) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{self._where(key)} must be an integer from {low} to {high}")
        return value

    def numbers(self, key: str, *, low: int, high: int, nonempty: bool = False) -> tuple[int, ...]:
        value = self._get(key)
        if (
            not isinstance(value, list)
            or (nonempty and not value)
            or not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in value)
        ):
            raise ConfigError(f"{self._where(key)} must be a list of integers from {low} to {high}")
        return tuple(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self._where(key)} must be a list of non-empty strings")
        return tuple(value)

    def path(self, key: str, default: str | None = None, *, must_exist: bool = True) -> Path:
        path = (self.file.parent / self.text(key, default)).resolve()
        if must_exist and not path.exists():
            raise ConfigError(f"{self._where(key)}: {path} does not exist")
        return path

    def unused(self) -> None:
        """Refuse the first key no setting read, here or in a table below: a misspelt key must not
        silently leave a setting at its default."""
        for key in self.data:
            if key not in self.used:
                raise ConfigError(f"{self._where(key)} is not a known key, or has no effect here")
        for part in self._parts.values():
            part.unused()


def weak_since(name: str, value: object, where: str) -> tuple[str, dt.datetime]:
    """One `weak_algorithms` entry: a hash algorithm and the UTC day from which it is weak."""
    if name not in ("sha256", "sha384", "sha512"):
        raise ConfigError(f"{where}: {name} is not sha256, sha384 or sha512")
    try:
        # TOML gives a bare 2040-01-01 as a date, a quoted one as a string; both mean that day.
        day = value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}.{name} must be a date, YYYY-MM-DD") from exc
    return name, dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


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
    quota, auth, malware = top.table("quota"), top.table("auth"), top.table("malware")
    submission = top.table("submission")
    max_delay = auth.number("max_delay_seconds", low=1, high=3600)
    relay = top.table("relay")
    imap = top.table("imap")
    api = top.table("api")
    local_max = size.number("local_max", low=1024, high=2**40)
    peer_max = size.number("peer_max", low=1024, high=local_max)
    preauth_literal = imap.number("max_literal_before_login", low=256, high=1024 * 1024)
    literal = imap.number("max_literal", low=1024, high=2**30)
    loaded = Policy(
        id=policy.text("id"),
        name=policy.text("name"),
        local_max_size=local_max,
        peer_max_size=peer_max,
        default_quota=quota.number("default", low=1024, high=2**50),
        quota_warnings=tuple(sorted(quota.numbers("warn_at", low=1, high=100))),
        auth_failures_per_account=auth.number("failures_per_account", low=1, high=10_000),
        auth_failures_per_address=auth.number("failures_per_address", low=1, high=1_000_000),
        auth_window_seconds=auth.number("window_seconds", low=1, high=86_400),
        malware_command=malware.strings("command"),
        evidence_folder=evidence.text("folder"),
        message_type=evidence.text("message_type"),
        relay=RelayPolicy(
            retry_schedule=relay.numbers("retry_schedule", low=1, high=86_400, nonempty=True),
            warn_after=relay.number("warn_after", low=1, high=30 * 86_400),
            fail_after=relay.number("fail_after", low=1, high=30 * 86_400),
            refusal_wait=relay.number("refusal_wait", low=1, high=86_400),
        ),
        imap=FolderLimits(
            # The special-use folders made at login count; the name is one directory's (NAME_MAX).
            max_folders=imap.number("max_folders", low=8, high=1_000_000),
            max_folder_depth=imap.number("max_folder_depth", low=1, high=NAME_MAX // 2),
            max_folder_name=imap.number("max_folder_name", low=16, high=NAME_MAX),
        ),
        auth_failures_per_pair=auth.number("failures_per_pair", low=1, high=10_000),
        auth_first_delay=auth.number("first_delay_seconds", low=1, high=3600),
        auth_account_delay=auth.number("account_delay_seconds", low=0, high=max_delay),
        auth_max_delay=max_delay,
        auth_waiting_per_address=auth.number("waiting_per_address", low=1, high=10_000),
        auth_cache_seconds=auth.number("cache_seconds", low=0, high=86_400),
        max_refused_recipients=submission.number("max_refused_recipients", low=1, high=10_000),
        max_refused_per_session=submission.number("max_refused_per_session", low=1, high=100_000),
        imap_limits=ImapLimits(
            connections_per_address=imap.number("connections_per_address", low=1, high=1_000_000),
            sessions_per_account=imap.number("sessions_per_account", low=1, high=100_000),
            # RFC 7162 §4: a client should be able to send lines of 8192 octets.
            line=imap.number("max_line", low=8192, high=2**24),
            preauth_literal=preauth_literal,
            preauth_command=imap.number("max_command_before_login", low=preauth_literal, high=2**24),
            literal=literal,
            command=imap.number("max_command", low=literal, high=2**30),
            # A mailbox never needs a message larger than the largest one a user can be sent.
            message=local_max,
        ),
        submission_connections_per_address=submission.number(
            "connections_per_address", low=1, high=1_000_000
        ),
        submission_sessions_per_account=submission.number("sessions_per_account", low=1, high=100_000),
        relay_connections_per_address=relay.number("connections_per_address", low=1, high=1_000_000),
        api=ApiPolicy(
            burst=api.number("burst", low=1, high=1_000_000),
            requests_per_minute=api.number("requests_per_minute", low=1, high=6_000_000),
            bulk_check_max=api.number("bulk_check_max", low=1, high=100_000),
            search_results=api.number("search_results", low=1, high=10_000),
            verify_max_size=api.number("verify_max_size", low=1024, high=2**31),
        ),
    )
    top.unused()
    return loaded


def _tsa(table: _Table) -> TsaConfig:
    url = table.text("url")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{table.file}: tsa.url must be an http:// or https:// URL")
    username = table.text("username") if "username" in table.data else None
    return TsaConfig(
        url=url,
        ca=table.path("ca"),
        policy=table.text("policy") if "policy" in table.data else None,
        username=username,
        password_file=table.path("password_file") if username is not None else None,
        timeout=table.number("timeout", low=1, high=600) if "timeout" in table.data else 10,
        retries=table.number("retries", low=0, high=20) if "retries" in table.data else 2,
    )


def _notify(table: _Table) -> NotifySettings:
    where = f"{table.file}: notify"
    command = table.strings("sms_command")
    webhook = table.text("sms_webhook") if "sms_webhook" in table.data else None
    if command and webhook is not None:
        raise ConfigError(f"{where}: give sms_command or sms_webhook, not both")
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.sms_webhook must be an http:// or https:// URL")
    smarthost = None
    if "smarthost" in table.data:
        host = table.table("smarthost")
        security = host.text("security", "starttls")
        if security not in ("starttls", "tls", "none"):
            raise ConfigError(f"{where}.smarthost.security must be starttls, tls or none")
        username = host.text("username") if "username" in host.data else None
        smarthost = Smarthost(
            host=host.text("host"),
            port=host.number("port", low=1, high=65535),
            security=security,
            sender=host.text("sender"),
            ca=host.path("ca") if "ca" in host.data else None,
            username=username,
            password_file=host.path("password_file") if username is not None else None,
        )
    defaults = NotifySettings()
    return NotifySettings(
        sms_command=command,
        sms_webhook=webhook,
        smarthost=smarthost,
        timeout=table.number("timeout", low=1, high=600) if "timeout" in table.data else defaults.timeout,
        retry_schedule=(
            table.numbers("retry_schedule", low=1, high=7 * 24 * 3600, nonempty=True)
            if "retry_schedule" in table.data
            else defaults.retry_schedule
        ),
    )


_DKIM_ALGORITHMS = ("ed25519", "rsa")


def _relay(table: _Table) -> RelaySettings:
    entries = table.entries("dkim")
    if not entries:
        raise ConfigError(f"{table.file}: relay.dkim must be an array of tables ([[relay.dkim]])")
    keys = []
    for i, key in enumerate(entries):
        algorithm = key.text("algorithm")
        if algorithm not in _DKIM_ALGORITHMS:
            raise ConfigError(f"{table.file}: relay.dkim[{i}].algorithm must be ed25519 or rsa")
        keys.append(DkimSigning(key.text("selector"), algorithm, key.path("key")))
    return RelaySettings(table.path("client_cert"), table.path("client_key"), tuple(keys))


def _log_format(table: _Table) -> str:
    value = table.text("format", "text")
    if value not in ("text", "json"):
        raise ConfigError(f'{table.file}: log.format must be "text" or "json"')
    return value


def load(path: Path) -> Settings:
    path = path.resolve()
    top = _read(path)
    server, ports, tls = top.table("server"), top.table("ports"), top.table("tls")
    evidence, trust, database = top.table("evidence"), top.table("trust"), top.table("database")
    dovecot = top.table("dovecot")
    data_dir = server.path("data_dir", ".", must_exist=False)
    url = database.text("url", "sqlite+aiosqlite:///kepmta.db")
    if url.startswith("sqlite+aiosqlite:///") and not url.startswith("sqlite+aiosqlite:////"):
        url = "sqlite+aiosqlite:///" + str(data_dir / url.removeprefix("sqlite+aiosqlite:///"))

    def port(key: str) -> int:
        return ports.number(key, low=0, high=65535)

    tsa = _tsa(top.table("tsa")) if "tsa" in top.data else None
    if tsa is not None:
        # The built-in TSA's pair may stay beside [tsa] (conf/kepmta.toml): known, not refused.
        evidence.used.update({"tsa_cert", "tsa_key"})
    has_key, has_uri = "key" in evidence.data, "key_uri" in evidence.data
    if has_key == has_uri:
        raise ConfigError(f"{path}: evidence: give exactly one of key (a PEM file) and key_uri (PKCS#11)")
    key_uri = evidence.text("key_uri") if has_uri else None
    if key_uri is not None and not key_uri.startswith("pkcs11:"):
        raise ConfigError(f"{path}: evidence.key_uri must be an RFC 7512 pkcs11: URI")
    crl_paths = evidence.strings("crls")
    weak = evidence.table("weak_algorithms")
    weak.used.update(weak.data)  # every key is an algorithm name, checked by weak_since
    weak_algorithms = dict(
        weak_since(k, v, f"{path}: evidence.weak_algorithms") for k, v in weak.data.items()
    )

    peers_file = top.table("peers").path("file") if "file" in top.table("peers").data else None
    node = server.text("node") if "node" in server.data else default_node()
    if not _NODE.match(node):
        raise ConfigError(f"{path}: server.node must be 1 to 64 letters, digits, '.', '_' or '-'")
    settings = Settings(
        source=path,
        domain=server.text("domain").lower(),
        provider_name=server.text("provider_name"),
        hostname=server.text("hostname", "localhost"),
        listen=server.text("listen", "127.0.0.1"),
        ports=Ports(
            port("submission"),
            port("submissions"),
            port("imap"),
            port("imaps"),
            port("relay") if "relay" in ports.data else None,
            port("api") if "api" in ports.data else None,
            port("metrics") if "metrics" in ports.data else None,
        ),
        data_dir=data_dir,
        database_url=url,
        tls_cert=tls.path("cert"),
        tls_key=tls.path("key"),
        evidence_cert=evidence.path("cert"),
        evidence_key=evidence.path("key") if has_key else None,
        evidence_key_uri=key_uri,
        evidence_pin_file=evidence.path("pin_file") if has_uri else None,
        evidence_crls=tuple(_Table({"crl": c}, path, "evidence.crls.").path("crl") for c in crl_paths),
        checkpoint_records=(
            evidence.number("checkpoint_records", low=1, high=10_000_000)
            if "checkpoint_records" in evidence.data
            else 1000
        ),
        checkpoint_minutes=(
            evidence.number("checkpoint_minutes", low=1, high=7 * 24 * 60)
            if "checkpoint_minutes" in evidence.data
            else 60
        ),
        weak_algorithms=weak_algorithms,
        node=node,
        # Renewed every third of it: 15 s leave room for a renewal to wait on a busy database.
        job_lease=server.number("job_lease", low=15, high=3600) if "job_lease" in server.data else 60,
        metrics_listen=server.text("metrics_listen", "127.0.0.1"),
        log_format=_log_format(top.table("log")),
        relay=_relay(top.table("relay")) if "relay" in top.data else None,
        tsa=tsa,
        provider_ca=evidence.path("provider_ca"),
        tsa_cert=evidence.path("tsa_cert") if tsa is None else None,
        tsa_key=evidence.path("tsa_key") if tsa is None else None,
        qualified_ca=trust.path("qualified_ca"),
        policy=load_policy(top.table("policy").path("file", str(DEFAULT_POLICY))),
        peers_file=peers_file,
        peers=peer_registry.load_peers(peers_file).peers if peers_file is not None else (),
        dovecot_read_spool=(
            dovecot.path("read_spool", must_exist=False) if "read_spool" in dovecot.data else None
        ),
        notify=_notify(top.table("notify")) if "notify" in top.data else None,
    )
    top.unused()
    return settings
