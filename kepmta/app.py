"""Builds every service from the settings and runs them in one event loop, with a clean shutdown."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import signal
import ssl
from pathlib import Path

from cryptography import x509
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta import devinit, metrics, pki, sdnotify
from kepmta.accounts import AccountStore, LoginRefusal
from kepmta.api.server import ApiServer
from kepmta.config import Settings
from kepmta.db.engine import open_engine
from kepmta.db.runner import close
from kepmta.delivery import DeliveryWorker, ProviderIdentity
from kepmta.events import EventRecorder, Issuer, StampWorker
from kepmta.evidence.checkpoint import Checkpointer
from kepmta.evidence.keys import evidence_pair
from kepmta.evidence.ledger import Ledger
from kepmta.evidence.revocation import RevocationCapture
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.tsa import BuiltinTsa, TimeStamper
from kepmta.evidence.tsa_client import HttpTsa, TsaSettings
from kepmta.hooks.dovecot import DovecotReadSpool
from kepmta.hooks.read import ReadHook
from kepmta.imap.protocol import CommandFailed
from kepmta.imap.server import ImapServer
from kepmta.inbound import InboundService
from kepmta.live import Live
from kepmta.maildir import Maildir
from kepmta.notify import Contacts, NotifyWorker
from kepmta.passwords import CheckedPasswords
from kepmta.peers import PeerRegistry, Peers
from kepmta.queue import jobs
from kepmta.queue.relay import RelayWorker
from kepmta.quota import QuotaWarner
from kepmta.ratelimit import FailureLimiter, Limits
from kepmta.reload import Reloader, server_tls
from kepmta.smtp.relay import relay_tls, start_relay
from kepmta.smtp.submission import start_submission
from kepmta.submission import SubmissionService, originals_dir
from kepmta.workers import Forker, WorkerPool

log = logging.getLogger(__name__)

# Worker processes (kepmta.workers): two check submissions, two build, sign and write dispatches
# and receipts. Apart, so an acceptance never queues behind deliveries; they wait on fsync much of
# the time, so two of each keep a second core busy on a small machine.
_WORKER_PROCESSES = 2


class ImapBackendAdapter:
    """What the IMAP server needs from the rest of kepmta."""

    def __init__(self, accounts: AccountStore, read_hook: ReadHook, evidence_folder: str) -> None:
        self.accounts = accounts
        self.read_hook = read_hook
        self.evidence_folder = evidence_folder

    async def authenticate(self, username: str, password: str, peer_ip: str, authzid: str = "") -> str | None:
        login = await self.accounts.login(username, password, peer_ip, authzid=authzid)
        if login.refusal is LoginRefusal.THROTTLED:
            # RFC 5530 §3: UNAVAILABLE, a temporary failure; the password was not even checked.
            raise CommandFailed("too many failed logins; try again later", "UNAVAILABLE")
        return login.account.address if login.account else None

    async def quota(self, user: str) -> tuple[int, int]:
        usage = await self.accounts.usage(user)
        return usage.used, usage.limit

    def maildir(self, user: str) -> Maildir:
        return self.accounts.maildir(user)

    async def on_seen(self, user: str, mailbox: str, path: Path, operator: str | None = None) -> None:
        await self.read_hook.opened(user, path, operator)

    def read_only_folders(self, user: str) -> frozenset[str]:
        # Evidence receipts are the user's proof: readable, never changed through IMAP.
        return frozenset({self.evidence_folder})


def time_stamper(s: Settings) -> TimeStamper:
    """The external TSA of [tsa], or the built-in one."""
    if s.tsa is None:
        assert s.tsa_cert is not None and s.tsa_key is not None  # config requires them without [tsa]
        return BuiltinTsa(pki.load_pair(s.tsa_cert, s.tsa_key), pki.load_certs(s.tsa_cert)[1:])
    t = s.tsa
    password = t.password_file.read_text().strip() if t.password_file is not None else None
    return HttpTsa(
        TsaSettings(
            url=t.url,
            trust=tuple(pki.load_certs(t.ca)),
            policy=t.policy,
            username=t.username,
            password=password,
            timeout=float(t.timeout),
            retries=t.retries,
        )
    )


def tsa_trust(s: Settings) -> list[x509.Certificate]:
    """The anchors a time-stamp of ours chains to."""
    return pki.load_certs(s.tsa.ca if s.tsa is not None else s.provider_ca)


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # What a reload changes: services read the policy through it (kepmta.live, kepmta.reload).
        self.live = Live(settings)
        self.reloader: Reloader | None = None
        self.engine: AsyncEngine | None = None
        self.servers: list[asyncio.Server] = []
        self.imap: ImapServer | None = None
        self.pools: list[WorkerPool] = []
        self.forker: Forker | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.ports: dict[str, int] = {}
        self.registry: PeerRegistry | None = None
        self.api: ApiServer | None = None
        self.metrics: metrics.MetricsServer | None = None
        self._tls_for: tuple[Peers, Settings, ssl.SSLContext] | None = None

    def _relay_tls(self) -> ssl.SSLContext:
        """The relay listener's TLS, made again only when the peer registry or the settings changed."""
        assert self.registry is not None
        peers, s = self.registry.current, self.live.settings
        if self._tls_for is None or self._tls_for[0] is not peers or self._tls_for[1] is not s:
            self._tls_for = (peers, s, relay_tls(s.tls_cert, s.tls_key, peers))
        return self._tls_for[2]

    async def start(self, demo: devinit.Demo | None = None) -> None:
        s = self.settings
        self.engine = engine = await open_engine(s.database_url)
        node = jobs.Node(s.node, dt.timedelta(seconds=s.job_lease))
        log.info("node %s (job leases of %d s)", node.name, s.job_lease)
        p = s.policy
        live = self.live
        limiter = FailureLimiter(lambda: Limits.from_policy(live.policy))
        accounts = AccountStore(
            engine,
            s.mail_root,
            domain=s.domain,
            default_quota=p.default_quota,
            limiter=limiter,
            passwords=CheckedPasswords(lambda: live.policy.auth_cache_seconds),
        )
        if demo is not None:
            await devinit.add_demo_accounts(accounts, demo)

        evidence_certs = pki.load_certs(s.evidence_cert)
        signer_pair = evidence_pair(s)
        evidence_signer = EvidenceSigner(signer_pair, evidence_certs[1:], time_stamper(s))
        ledger = Ledger(engine)
        issuer = Issuer(s.provider_name, s.domain, (p.id,), p.message_type)
        revocation = RevocationCapture(s.evidence_crls, [*evidence_certs[1:], *pki.load_certs(s.provider_ca)])
        await revocation.load_recorded(engine)
        recorder = EventRecorder(issuer, evidence_signer, ledger, revocation)
        checkpointer = Checkpointer(
            ledger,
            evidence_signer,
            s.domain,
            every_records=s.checkpoint_records,
            every=dt.timedelta(minutes=s.checkpoint_minutes),
        )
        ledger.on_append = checkpointer.appended
        identity = ProviderIdentity(
            service_address=s.service_address,
            policy_ids=(p.id,),
            message_type=p.message_type,
            evidence_folder=p.evidence_folder,
        )
        warner = QuotaWarner(accounts, p.quota_warnings, s.service_address)
        self.forker = Forker()
        checking, filing = (WorkerPool(s, workers=_WORKER_PROCESSES, forker=self.forker) for _ in range(2))
        self.pools = [checking, filing]
        for pool in self.pools:
            await pool.start()
        worker = DeliveryWorker(
            engine, accounts, recorder, identity, originals_dir(s.spool_dir), warner, filing, node
        )
        self.registry = registry = PeerRegistry(s.peers_file, Peers(s.peers))
        relaying = RelayWorker(worker, registry, s.relay, live, s.hostname, filing)
        worker.wake_relay = relaying.wake

        def wake() -> None:
            worker.wake()
            relaying.wake()

        pki.load_trust(s.qualified_ca)  # a bad trust store stops the start, not a worker later
        service = SubmissionService(
            accounts,
            recorder,
            domain=s.domain,
            spool_dir=s.spool_dir,
            live=live,
            peers=registry,
            workers=checking,
            wake_delivery=wake,
            node=node.name,
        )
        await service.recover()
        if taken := await jobs.take_over(engine, node):
            log.info("took up %d job(s) an earlier run of node %s had begun", taken, node.name)
        self.tasks.append(asyncio.create_task(node.keep_leases(engine), name="job-leases"))
        tls = server_tls(s)
        self.tasks.append(asyncio.create_task(worker.run(), name="delivery"))
        self.tasks.append(asyncio.create_task(relaying.run(), name="relay"))
        self.tasks.append(asyncio.create_task(registry.watch(), name="peer-registry"))
        stamper = StampWorker(recorder, wake, node)
        self.tasks.append(asyncio.create_task(stamper.run(), name="evidence-timestamps"))
        self.tasks.append(asyncio.create_task(checkpointer.run(), name="ledger-checkpoints"))
        if s.notify is not None:
            notices = NotifyWorker(engine, ledger, Contacts(accounts), s.notify, node)
            worker.on_delivered = notices.delivered
            self.tasks.append(asyncio.create_task(notices.run(), name="notifications"))
        self.servers = await start_submission(
            service,
            tls,
            s.listen,
            s.hostname,
            s.ports.submission,
            s.ports.submissions,
            connections_per_address=lambda: live.policy.submission_connections_per_address,
            sessions_per_account=lambda: live.policy.submission_sessions_per_account,
        )
        read_hook = ReadHook(recorder, wake)
        backend = ImapBackendAdapter(accounts, read_hook, s.policy.evidence_folder)
        if s.dovecot_read_spool is not None:
            spool = DovecotReadSpool(s.dovecot_read_spool, accounts.maildir, read_hook)
            self.tasks.append(asyncio.create_task(spool.run(), name="dovecot-read-events"))
        self.imap = ImapServer(
            backend,
            tls,
            special_folders={s.policy.evidence_folder: "\\Archive"},
            live=live,
        )
        await self.imap.start(s.listen, s.ports.imap, s.ports.imaps)
        submission, submissions = (srv.sockets[0].getsockname()[1] for srv in self.servers)
        self.ports = {"submission": submission, "submissions": submissions, **self.imap.ports}
        if s.ports.relay is not None:
            inbound = InboundService(
                accounts,
                recorder,
                registry,
                domain=s.domain,
                spool_dir=s.spool_dir,
                live=live,
                check=checking.check_relayed,
                wake_delivery=worker.wake,
                wake_relay=relaying.wake,
                node=node.name,
            )
            inbound.recover()
            relay_server = await start_relay(
                inbound,
                self._relay_tls,
                s.listen,
                s.hostname,
                s.ports.relay,
                connections_per_address=lambda: live.policy.relay_connections_per_address,
            )
            self.servers.append(relay_server)
            self.ports["relay"] = relay_server.sockets[0].getsockname()[1]
        if s.ports.api is not None:
            self.api = ApiServer()
            self.ports["api"] = await self.api.start(s, tls, accounts, service, ledger, registry, signer_pair)
        if s.ports.metrics is not None:
            metrics.node(node.name)
            self.metrics = metrics.MetricsServer()
            self.ports["metrics"] = await self.metrics.start(engine, s.metrics_listen, s.ports.metrics)
        self.reloader = Reloader(live, [tls], registry, self.pools)
        log.info("kepmta serving %s on %s: %s", s.domain, s.listen, self.ports)

    async def stop(self) -> None:
        if self.api:
            await self.api.stop()
        if self.metrics:
            await self.metrics.stop()
        for srv in self.servers:
            srv.close()
        if self.imap:
            await self.imap.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for srv in self.servers:
            await srv.wait_closed()
        for pool in self.pools:
            await pool.close()
        if self.forker is not None:
            await self.forker.close()
        if self.engine:
            await close(self.engine)


async def serve(settings: Settings, demo: devinit.Demo | None = None) -> None:
    """Run until SIGTERM or SIGINT."""
    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start(demo)
    # What start-up made (modules, schema, keys, certificates: some 150,000 objects) lives as long
    # as the process. Out of the collector's reach, a full collection under load took 6 to 15 ms
    # instead of 85 to 122, the event loop standing still meanwhile.
    gc.collect()  # start-up's garbage first: frozen, it would never be freed
    gc.freeze()
    log.info("%d objects made at start-up left out of garbage collection", gc.get_freeze_count())
    assert app.reloader is not None
    # SIGHUP: certificates, policy, peers and trust anchors again, open sessions kept (kepmta.reload).
    loop.add_signal_handler(signal.SIGHUP, app.reloader.reload)
    sdnotify.ready()  # every listener is open
    try:
        await stop.wait()
    finally:
        sdnotify.stopping()
        log.info("shutting down")
        await app.stop()
