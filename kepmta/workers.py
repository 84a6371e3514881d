"""Per-message file work in worker processes.

Checking a submitted message (its signature above all) and building, signing and syncing the
dispatch and receipts that follow it is most of the CPU behind each message. In the server's own
process it would compete for the one interpreter lock with every SMTP and IMAP connection. So
worker processes do it, on files: they read the spooled submission and store the original, or
write a finished REM message into the folder's tmp/. The server moves that into new/ itself
(`Maildir.publish`), so that its folder-size bookkeeping sees every change it makes.

Workers load, once at start and the way the server would, the provider's signing key (PEM or
PKCS#11) and the qualified trust store with its CRLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from cryptography import x509

from kepmta import dkim, metrics, pki
from kepmta.config import Settings
from kepmta.evidence.keys import evidence_pair
from kepmta.headers import read_headers
from kepmta.inbound import Checked, check_relayed
from kepmta.inspection import Inspection, Signer, inspect
from kepmta.maildir import write_synced
from kepmta.message.addresses import addr_specs
from kepmta.policy.refusal import Refusal
from kepmta.rem.dispatch import DispatchInfo, write_dispatch
from kepmta.rem.receipt import ReceiptInfo, build_receipt


class WorkerError(Exception):
    """A worker process failed a request, or stopped before it answered."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        # The errno of an OSError the worker met (a full disk: kepmta.outage), else None.
        self.errno = errno


@dataclass(frozen=True)
class _State:
    signer: pki.KeyPair
    chain: tuple[x509.Certificate, ...]
    trust: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    domain: str
    dkim: tuple[dkim.SigningKey, ...]


_state: _State | None = None


def _start(settings: Settings) -> None:
    global _state
    trust, crls = pki.load_trust(settings.qualified_ca)
    chain = tuple(pki.load_certs(settings.evidence_cert)[1:])
    keys = tuple(
        dkim.SigningKey(k.selector, k.algorithm, k.key.read_bytes())
        for k in (settings.relay.dkim if settings.relay else ())
    )
    _state = _State(evidence_pair(settings), chain, tuple(trust), tuple(crls), settings.domain, keys)


def _here() -> _State:
    assert _state is not None, "a worker process runs _start first"
    return _state


def _inspect(*request: Any) -> Inspection:
    """`WorkerPool.inspect`'s arguments, with the trust store this worker loaded."""
    state = _here()
    return inspect(*request, trust=state.trust, crls=state.crls)


def _addresses(values: Sequence[str]) -> tuple[str, ...]:
    return addr_specs(str(v) for v in values)


def _with_addresses(original: Path, info: DispatchInfo) -> DispatchInfo:
    head = read_headers(original).addresses
    # The dispatch carries To and Cc as in the original (EVIDENCE.md, REM dispatch).
    return replace(info, to=_addresses(head.to), cc=_addresses(head.cc))


def _write_dispatch(
    tmp: Path, original: Path, info: DispatchInfo, xml: bytes, der: bytes, event: str
) -> None:
    info = _with_addresses(original, info)
    state = _here()

    def write(out: BinaryIO) -> None:
        write_dispatch(out, original, info, xml, der, event, state.signer, state.chain)

    write_synced(tmp, write)


def _write_receipt(tmp: Path, info: ReceiptInfo, xml: bytes, der: bytes) -> None:
    state = _here()
    raw = build_receipt(info, xml, der, state.signer, state.chain)

    def write(out: BinaryIO) -> None:
        out.write(raw)

    write_synced(tmp, write)


def _signed_for_relay(raw: bytes) -> bytes:
    """`raw` with our DKIM signatures in front (RFC 6376 §5; RFC 8463 Ed25519 beside RSA)."""
    state = _here()
    if not state.dkim:
        raise ValueError("no [relay] DKIM keys are configured: nothing can be relayed")
    return dkim.sign(raw, state.domain, state.dkim) + raw


def _relay_dispatch(original: Path, info: DispatchInfo, xml: bytes, der: bytes, event: str) -> bytes:
    buf = io.BytesIO()
    state = _here()
    write_dispatch(buf, original, _with_addresses(original, info), xml, der, event, state.signer, state.chain)
    return _signed_for_relay(buf.getvalue())


def _relay_receipt(info: ReceiptInfo, xml: bytes, der: bytes) -> bytes:
    state = _here()
    return _signed_for_relay(build_receipt(info, xml, der, state.signer, state.chain))


_TASKS: dict[str, Callable[..., Any]] = {
    "inspect": _inspect,
    "dispatch": _write_dispatch,
    "receipt": _write_receipt,
    "relay_dispatch": _relay_dispatch,
    "relay_receipt": _relay_receipt,
    "check_relayed": check_relayed,
}


def _frame(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(4, "big") + data


def _serve() -> None:
    """A worker process: the settings, then (task, args) requests answered one at a time."""
    source, sink = sys.stdin.buffer, sys.stdout.buffer

    def receive() -> Any:
        head = source.read(4)
        if len(head) < 4:
            return None  # the server closed our input: stop
        return pickle.loads(source.read(int.from_bytes(head, "big")))

    _start(receive())
    sink.write(_frame((True, None)))  # ready: imports done, keys and trust loaded
    sink.flush()
    while (request := receive()) is not None:
        name, args = request
        try:
            answer: tuple[bool, object] = (True, _TASKS[name](*args))
        except Exception as e:  # told to the server as text: not every exception pickles
            answer = (False, (f"{type(e).__name__}: {e}", e.errno if isinstance(e, OSError) else None))
        sink.write(_frame(answer))
        sink.flush()


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process, generation: int) -> None:
        self.proc = proc
        self.generation = generation  # of the pool's settings it was started with
        assert proc.stdin is not None and proc.stdout is not None
        self.input, self.output = proc.stdin, proc.stdout

    async def call(self, name: str, args: tuple[Any, ...]) -> Any:
        self.input.write(_frame((name, args)))
        await self.input.drain()
        return await self._answer()

    async def ready(self) -> None:
        """Wait for the worker's first answer, given once it has started. One that could not start
        is left for its first request to fail, which replaces it (`WorkerPool._run`)."""
        with contextlib.suppress(OSError, EOFError, asyncio.IncompleteReadError):
            await self._answer()

    async def _answer(self) -> Any:
        size = int.from_bytes(await self.output.readexactly(4), "big")
        ok, value = pickle.loads(await self.output.readexactly(size))
        if not ok:
            message, errno = value
            raise WorkerError(message, errno)
        return value


class WorkerPool:
    """Worker processes, each answering one request at a time over its standard input and output:
    no threads in the server, so a call costs two pipe writes and no lock hand-offs."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._generation = 0

    def renew(self, settings: Settings) -> None:
        """Serve with `settings` from the next request on (a reload: kepmta.reload). A worker still
        on older ones is replaced when next taken, not while answering, so it reads the trust store
        and keys again."""
        self.settings = settings
        self._generation += 1

    async def inspect(
        self,
        incoming: Path,
        original: Path,
        message_id: str,
        early: Refusal | None,
        sender: str,
        recipients: tuple[str, ...],
        signer: Signer,
    ) -> Inspection:
        """kepmta.inspection.inspect, with the trust store the worker loaded."""
        result: Inspection = await self._run(
            "inspect", incoming, original, message_id, early, sender, recipients, signer
        )
        return result

    async def dispatch(
        self, tmp: Path, original: Path, info: DispatchInfo, xml: bytes, der: bytes, event: str
    ) -> None:
        """The REM dispatch of `original` (To and Cc filled from its header) synced at `tmp`."""
        await self._run("dispatch", tmp, original, info, xml, der, event)

    async def receipt(self, tmp: Path, info: ReceiptInfo, xml: bytes, der: bytes) -> None:
        """The receipt for an evidence synced at `tmp`."""
        await self._run("receipt", tmp, info, xml, der)

    async def relay_dispatch(
        self, original: Path, info: DispatchInfo, xml: bytes, der: bytes, event: str
    ) -> bytes:
        """The DKIM-signed REM dispatch of `original` for a peer provider (at most the policy's
        peer size, 25 MB: it travels as one SMTP DATA)."""
        raw: bytes = await self._run("relay_dispatch", original, info, xml, der, event)
        return raw

    async def relay_receipt(self, info: ReceiptInfo, xml: bytes, der: bytes) -> bytes:
        """The DKIM-signed receipt for an evidence, for the peer provider of its sender."""
        raw: bytes = await self._run("relay_receipt", info, xml, der)
        return raw

    async def check_relayed(
        self, path: Path, domains: tuple[str, ...], keys: tuple[dkim.PublicKey, ...], trust: bytes
    ) -> Checked:
        """kepmta.inbound.check_relayed: DKIM and the REM checks of a message from a peer."""
        checked: Checked = await self._run("check_relayed", path, domains, keys, trust)
        return checked

    async def start(self) -> None:
        """Start the processes, if not yet started, and wait until each is ready. The server does
        so before it listens: each imports kepmta and loads keys and trust, most of a second of a
        core, which would otherwise be taken from the first sessions (on two cores, a first
        SELECT after a restart took several times as long while four workers started)."""
        if self._idle is None:
            self._idle = asyncio.Queue()
            for worker in await asyncio.gather(*(self._spawn() for _ in range(self.workers))):
                self._idle.put_nowait(worker)

    async def _run(self, name: str, *args: Any) -> Any:
        await self.start()
        assert self._idle is not None
        worker = await self._idle.get()
        if worker.generation != self._generation:
            await self._retire(worker)
            worker = await self._spawn()
        try:
            result = await worker.call(name, args)
        except WorkerError:
            self._idle.put_nowait(worker)  # it answered: it is ready for the next request
            raise
        except BaseException as e:
            # Dead, or cancelled mid-request (its answer would reach the next caller): replace it.
            await self._retire(worker)
            metrics.worker_restarted(name)
            self._idle.put_nowait(await self._spawn())
            if isinstance(e, (OSError, EOFError, asyncio.IncompleteReadError)):
                raise WorkerError(f"a worker process stopped: {e!r}") from e
            raise
        self._idle.put_nowait(worker)
        return result

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kepmta.workers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = _Worker(proc, self._generation)
        worker.input.write(_frame(self.settings))
        self._all.add(worker)
        await worker.ready()
        return worker

    async def _retire(self, worker: _Worker) -> None:
        self._all.discard(worker)
        if worker.proc.returncode is None:
            worker.proc.kill()
        await worker.proc.wait()

    async def close(self) -> None:
        for worker in list(self._all):
            worker.input.close()  # end of input: the worker finishes its request and exits
            try:
                await asyncio.wait_for(worker.proc.wait(), 10)
            except TimeoutError:
                await self._retire(worker)
        self._all.clear()


if __name__ == "__main__":
    _serve()
