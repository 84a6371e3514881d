"""The API port: uvicorn serving the FastAPI app over TLS, inside kepmta's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
from collections.abc import Iterator

import uvicorn

from kepmta import config
from kepmta.accounts import AccountStore
from kepmta.api import app as api_app
from kepmta.api.directory import Directory
from kepmta.api.service import ApiService
from kepmta.api.tokens import TokenStore
from kepmta.api.verify_page import Trust, VerifyPage
from kepmta.cli.evidence_people import peer_trust, provider_trust
from kepmta.evidence.ledger import Ledger
from kepmta.peers import PeerRegistry
from kepmta.pki import KeyPair
from kepmta.submission import SubmissionService

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """kepmta owns the process's signals (kepmta.app.serve): uvicorn must not take them over, and
    it stops when `should_exit` is set."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _trust(settings: config.Settings, registry: PeerRegistry) -> Trust:
    """Our provider and TSA CAs, and those of every peer provider registered now: the page checks
    the evidence of either."""
    provider, tsa = provider_trust(settings)
    by_domain = peer_trust(dataclasses.replace(settings, peers=registry.current.peers))
    peers = [c for certs in by_domain.values() for c in certs]
    return Trust([*provider, *peers], [*tsa, *peers], settings.weak_algorithms)


class ApiServer:
    def __init__(self) -> None:
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(
        self,
        settings: config.Settings,
        tls: ssl.SSLContext,
        accounts: AccountStore,
        submission: SubmissionService,
        ledger: Ledger,
        registry: PeerRegistry,
        signer: KeyPair,
    ) -> int:
        """Listen on the `api` port; returns the port bound."""
        assert settings.ports.api is not None
        policy = settings.policy.api
        service = ApiService(settings, accounts, submission, ledger, registry, signer)
        page = VerifyPage(lambda: _trust(settings, registry), policy)
        app = api_app.build(service, TokenStore(accounts), Directory(accounts), policy, page)
        # Bound here, not by uvicorn, so a taken port fails the start as the other listeners do.
        sock = socket.create_server((settings.listen, settings.ports.api), reuse_port=False)
        cfg = uvicorn.Config(
            app,
            log_config=None,  # kepmta's logging as configured by `serve`
            access_log=False,
            lifespan="off",
            server_header=False,
            proxy_headers=False,
        )
        cfg.load()
        # The same TLS as the mail listeners: the server's certificate, TLS 1.2 at least.
        cfg.ssl = tls
        self._server = _Server(cfg)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="api")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # uvicorn's own failure, raised here
                raise OSError("the API server stopped while starting")
            await asyncio.sleep(0.01)
        port: int = sock.getsockname()[1]
        self.port = port
        return port

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
