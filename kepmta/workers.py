"""Per-message file work in worker processes.

Checking a submitted message (its signature above all) and building, signing and syncing the
dispatch and receipts that follow it is most of the CPU behind each message. In the server's own
process it would compete for the one interpreter lock with every SMTP and IMAP connection. So
worker processes do it, on files: they read the spooled submission and store the original, or
write a finished REM message into the folder's tmp/. The server moves that into new/ itself
(`Maildir.publish`), so that its folder-size bookkeeping sees every change it makes.

Workers load, once at start and the way the server would, the provider's signing key (PEM or
PKCS#11) and the qualified trust store with its CRLs. They are forked from one process that has
imported this module (`python -m kepmta.workers FD`, the forker): a worker started on its own
spent most of a second of a core importing kepmta, and a server starts four before it listens, so
its (re)start took 3.5 s on two cores, 2 s of it for the workers. The key and the trust store are
loaded after the fork, in the worker, as a PKCS#11 session does not survive one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import pickle
import signal
import socket
import sys
import traceback
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


def _serve(source: BinaryIO, sink: BinaryIO) -> None:
    """A worker process: the settings, then (task, args) requests answered one at a time."""

    def receive() -> Any:
        head = source.read(4)
        if len(head) < 4:
            return None  # the server closed our input: stop
        return pickle.loads(source.read(int.from_bytes(head, "big")))

    _start(receive())
    sink.write(_frame((True, None)))  # ready: keys and trust loaded
    sink.flush()
    while (request := receive()) is not None:
        name, args = request
        try:
            answer: tuple[bool, object] = (True, _TASKS[name](*args))
        except Exception as e:  # told to the server as text: not every exception pickles
            answer = (False, (f"{type(e).__name__}: {e}", e.errno if isinstance(e, OSError) else None))
        sink.write(_frame(answer))
        sink.flush()


def _reap(*_: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _fork_workers(control: socket.socket) -> None:
    """The forker: for each request on `control` (the two pipe ends of a new worker), fork a worker
    serving on them, and answer with a pidfd of it. Ends when the server closes `control`.

    A pidfd, not a PID, because the forker reaps its children: once one is reaped its PID may be
    another process's, and the server must never signal that one.
    """
    signal.signal(signal.SIGCHLD, _reap)
    # Every worker shares the forker's modules: frozen, its collections never write to their pages
    # (which would copy them) nor spend time on them.
    gc.collect()
    gc.freeze()
    while True:
        message, fds, _, _ = socket.recv_fds(control, 1, 2)
        if not message:
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _serve(os.fdopen(fds[0], "rb"), os.fdopen(fds[1], "wb"))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)  # never back into the forker's loop
        for fd in fds:
            os.close(fd)
        # Not yet reaped (the SIGCHLD handler runs between bytecodes, after this line at the
        # earliest only if the child already exited, and then the pidfd still names it).
        pidfd = os.pidfd_open(pid)
        try:
            socket.send_fds(control, [pid.to_bytes(4, "big")], [pidfd])
        finally:
            os.close(pidfd)


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


class Forker:
    """The server's side of the forker process (`_fork_workers`): started when first needed, and
    again if it died. The pools of one server share one."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._lock = asyncio.Lock()

    async def fork(self) -> tuple[int, int, int, int]:
        """A new worker: (pid, pidfd, the write end of its input, the read end of its output)."""
        async with self._lock:
            try:
                return await self._fork()
            except OSError:
                await self.close()  # the forker died: start another, once
                return await self._fork()

    async def _fork(self) -> tuple[int, int, int, int]:
        if self._control is None:
            await self._start()
        assert self._control is not None
        to_worker, its_input = os.pipe()[::-1]
        its_output, from_worker = os.pipe()[::-1]
        try:
            socket.send_fds(self._control, [b"F"], [its_input, its_output])
        except OSError:
            os.close(to_worker)
            os.close(from_worker)
            raise
        finally:
            os.close(its_input)
            os.close(its_output)
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self._control, 4, 1)
                break
            except BlockingIOError:
                await _readable(self._control)
        if len(message) < 4 or not fds:
            os.close(to_worker)
            os.close(from_worker)
            raise ConnectionResetError("the worker forker stopped")
        return int.from_bytes(message, "big"), fds[0], to_worker, from_worker

    async def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kepmta.workers",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._control = ours

    async def close(self) -> None:
        """End the forker (its workers go on until their input closes)."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._proc is not None:
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
            self._proc = None


class _Worker:
    def __init__(
        self,
        pid: int,
        pidfd: int,
        streams: tuple[asyncio.StreamWriter, asyncio.StreamReader],
        generation: int,
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.generation = generation  # of the pool's settings it was started with
        self.input, self.output = streams
        self.started = False  # it answered that its keys and trust store are loaded

    async def call(self, name: str, args: tuple[Any, ...]) -> Any:
        self.input.write(_frame((name, args)))
        await self.input.drain()
        return await self._answer()

    async def ready(self) -> None:
        """Wait for the worker's first answer, given once it has started. One that could not start
        is left for its first request to fail, which replaces it (`WorkerPool._run`)."""
        with contextlib.suppress(OSError, EOFError, asyncio.IncompleteReadError):
            await self._answer()
            self.started = True

    async def _answer(self) -> Any:
        size = int.from_bytes(await self.output.readexactly(4), "big")
        ok, value = pickle.loads(await self.output.readexactly(size))
        if not ok:
            message, errno = value
            raise WorkerError(message, errno)
        return value

    def kill(self) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    async def exited(self) -> None:
        """Returns once the worker is gone: its output closes only when it exits."""
        with contextlib.suppress(OSError):
            while await self.output.read(1 << 16):
                pass
        self.input.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


async def _streams(to_worker: int, from_worker: int) -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_worker, "rb", 0)
    )
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), os.fdopen(to_worker, "wb", 0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop), reader


class WorkerPool:
    """Worker processes, each answering one request at a time over its standard input and output:
    no threads in the server, so a call costs two pipe writes and no lock hand-offs."""

    def __init__(self, settings: Settings, workers: int, forker: Forker | None = None) -> None:
        self.settings = settings
        self.workers = workers
        # The pools of one server share one forker: one import of kepmta for all their workers. A
        # pool made without one has its own.
        self._forker = forker or Forker()
        self._own_forker = forker is None
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
        pid, pidfd, to_worker, from_worker = await self._forker.fork()
        worker = _Worker(pid, pidfd, await _streams(to_worker, from_worker), self._generation)
        worker.input.write(_frame(self.settings))
        self._all.add(worker)
        await worker.ready()
        return worker

    async def _retire(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.kill()
        await worker.exited()

    async def close(self) -> None:
        for worker in list(self._all):
            worker.input.close()  # end of input: the worker finishes its request and exits
            try:
                await asyncio.wait_for(worker.exited(), 10)
            except TimeoutError:
                await self._retire(worker)
        self._all.clear()
        if self._own_forker:
            await self._forker.close()


if __name__ == "__main__":
    _fork_workers(socket.socket(fileno=int(sys.argv[1])))
