"""SIGHUP: read the configuration again and put what can change in a running server in force.

Certificates (the TLS context every listener shares, loaded again in place: connections made from
then on present the new certificate, open ones keep theirs), the policy (through kepmta.live, read
at each use), the peer registry and the trust anchors (the worker processes that check submissions
are replaced as they are next used) change without dropping a session. A configuration that does
not load, or whose keys and certificates have an error (kepmta.configcheck), is refused: each
problem is logged as the one line `kepmta check-config` prints, and the configuration in force
stays.

What a running server cannot take up (listeners, the database, the data folder, the evidence
signing key and the rest below) keeps its old value until a restart, said in one log line.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kepmta import config, configcheck, sdnotify
from kepmta.live import Live

if TYPE_CHECKING:
    from kepmta.peers import PeerRegistry
    from kepmta.workers import WorkerPool

log = logging.getLogger(__name__)

# Settings a reload puts in force; every other one waits for a restart.
RELOADED = frozenset({"source", "tls_cert", "tls_key", "qualified_ca", "peers_file", "peers", "policy"})
# Policy values read once at start: the evidence identity (policy id, message type, the evidence
# folder of every mailbox), an account's quota and its warning levels, and the API's limits.
POLICY_AT_START = ("id", "message_type", "evidence_folder", "default_quota", "quota_warnings", "api")


def server_tls(settings: config.Settings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996, RFC 8314 §4.1
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx


def in_force(old: config.Settings, new: config.Settings) -> tuple[config.Settings, list[str]]:
    """`new` with what a reload cannot change kept from `old`, and the names of what changed
    there and waits for a restart."""
    waiting = [
        f.name
        for f in dataclasses.fields(old)
        if f.name not in RELOADED and getattr(old, f.name) != getattr(new, f.name)
    ]
    waiting += [
        f"policy.{name}" for name in POLICY_AT_START if getattr(old.policy, name) != getattr(new.policy, name)
    ]
    policy = dataclasses.replace(new.policy, **{name: getattr(old.policy, name) for name in POLICY_AT_START})
    kept = {f.name: getattr(old, f.name) for f in dataclasses.fields(old) if f.name not in RELOADED}
    return dataclasses.replace(new, **kept, policy=policy), waiting


class Reloader:
    def __init__(
        self,
        live: Live,
        tls: Sequence[ssl.SSLContext],
        registry: PeerRegistry,
        pools: Sequence[WorkerPool],
    ) -> None:
        self.live = live
        self.tls = tls
        self.registry = registry
        self.pools = pools

    def reload(self) -> bool:
        """Read the configuration file again; whether the new one is now in force. systemd hears
        RELOADING=1 before and READY=1 after, whichever way it went (sd_notify(3))."""
        sdnotify.reloading()
        try:
            return self._reload()
        finally:
            sdnotify.ready()

    def _refuse(self, line: str) -> bool:
        log.error("configuration not reloaded, the one in force stays: %s", line)
        return False

    def _reload(self) -> bool:
        old = self.live.settings
        try:
            new = config.load(old.source)
        except config.ConfigError as e:
            return self._refuse(str(e))
        problems = configcheck.check(new)
        for problem in problems:
            if not problem.error:
                log.warning("%s", problem.line)
        errors = [p.line for p in problems if p.error]
        for line in errors:
            self._refuse(line)
        if errors:
            return False
        try:
            # Loaded into a context of its own first: a pair the shared contexts refuse would leave
            # them with the new certificate and the old key.
            server_tls(new)
        except (OSError, ssl.SSLError) as e:
            return self._refuse(f"{new.source}: tls.key: {new.tls_key} cannot serve {new.tls_cert}: {e}")
        settings, waiting = in_force(old, new)
        for ctx in self.tls:
            ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
        self.live.settings = settings
        self.registry.path = settings.peers_file
        self.registry.reload()
        for pool in self.pools:
            pool.renew(settings)
        log.info("reloaded %s: certificates, policy, peers and trust anchors", settings.source)
        if waiting:
            log.warning("changed in %s but kept until a restart: %s", settings.source, ", ".join(waiting))
        return True
