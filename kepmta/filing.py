"""Writing REM messages in worker processes.

Building and signing a dispatch or receipt and waiting for its fsync is most of the work behind
each accepted message; in the server's own process it competes for the one interpreter lock with
every SMTP and IMAP connection. So a worker process writes the finished message into the folder's
tmp/ and syncs it; the server then moves it into new/ itself (`Maildir.publish`), so that its
folder-size bookkeeping sees every change it makes.

Workers load the provider's signing key once, at start, the way the server does (PEM or PKCS#11).
"""

from __future__ import annotations

import asyncio
import email.utils
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from cryptography import x509

from kepmta import pki
from kepmta.config import Settings
from kepmta.evidence.keys import evidence_pair
from kepmta.headers import read_headers
from kepmta.maildir import write_synced
from kepmta.rem.dispatch import DispatchInfo, write_dispatch
from kepmta.rem.receipt import ReceiptInfo, build_receipt


class FilingError(Exception):
    """A worker could not write the message (it died, or the write failed); the job is retried."""


_signer: tuple[pki.KeyPair, tuple[x509.Certificate, ...]] | None = None


def _start(settings: Settings) -> None:
    global _signer
    _signer = (evidence_pair(settings), tuple(pki.load_certs(settings.evidence_cert)[1:]))


def _identity() -> tuple[pki.KeyPair, tuple[x509.Certificate, ...]]:
    assert _signer is not None, "a filing worker runs _start first"
    return _signer


def _addresses(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(addr for _, addr in email.utils.getaddresses([str(v) for v in values]) if addr)


def _write_dispatch(
    tmp: Path, original: Path, info: DispatchInfo, xml: bytes, der: bytes, event: str
) -> None:
    head = read_headers(original).addresses
    # The dispatch carries To and Cc as in the original (EVIDENCE.md, REM dispatch).
    info = replace(info, to=_addresses(head.to), cc=_addresses(head.cc))
    pair, chain = _identity()

    def write(out: BinaryIO) -> None:
        write_dispatch(out, original, info, xml, der, event, pair, chain)

    write_synced(tmp, write)


def _write_receipt(tmp: Path, info: ReceiptInfo, xml: bytes, der: bytes) -> None:
    pair, chain = _identity()
    raw = build_receipt(info, xml, der, pair, chain)

    def write(out: BinaryIO) -> None:
        out.write(raw)

    write_synced(tmp, write)


class FilingPool:
    """The worker processes, started on first use and replaced if one dies."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    async def dispatch(
        self, tmp: Path, original: Path, info: DispatchInfo, xml: bytes, der: bytes, event: str
    ) -> None:
        """The REM dispatch of `original` (To and Cc filled from its header) synced at `tmp`."""
        await self._run(_write_dispatch, tmp, original, info, xml, der, event)

    async def receipt(self, tmp: Path, info: ReceiptInfo, xml: bytes, der: bytes) -> None:
        """The receipt for an evidence synced at `tmp`."""
        await self._run(_write_receipt, tmp, info, xml, der)

    async def _run(self, fn: Callable[..., None], *args: Any) -> None:
        if self._pool is None:
            # spawn, not fork: the server has threads, and a forked child would inherit their locks.
            self._pool = ProcessPoolExecutor(
                self.workers,
                multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(self.settings,),
            )
        pool = self._pool
        try:
            await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool as e:
            if self._pool is pool:
                self._pool = None  # the next job starts new workers
                pool.shutdown(wait=False, cancel_futures=True)
            raise FilingError(f"a filing worker stopped: {e}") from e

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
