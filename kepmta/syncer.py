"""A child process that syncs the files named to it, in rounds, for the event loop's process.

A sync on a thread of the server's own process is cheap to start but slow to finish under load:
the thread needs the interpreter lock to pick the work up and again to hand the result back, and
a loop busy with other sessions gives it up only every switch interval (5 ms), twice a round. A
child has its own interpreter; the loop learns of the result as it learns of any socket's data.
An fsync through another process's descriptor syncs the same file (POSIX fsync is of the file,
not of the descriptor).

Wire format, over the child's stdin and stdout: a round is each path as bytes followed by a NUL,
then one more NUL; the answer is one line, empty when every file is synced, else
`errno<TAB>n` for the round's n-th path (from 0), the first that could not be (the rest are not
tried). A path that no longer exists is no error: what was in it can no longer be reported.
"""

from __future__ import annotations

import asyncio
import errno as errnos
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


class Syncer:
    """The server's side: one child, one round at a time, started on first use and again after
    it died."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kepmta.syncer",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )

    async def sync(self, paths: Sequence[Path]) -> None:
        """Returns once every file of `paths` that still exists is synced; raises OSError for the
        first that could not be, or when the child is gone."""
        if not paths:
            return
        request = b"".join(os.fsencode(path) + b"\0" for path in paths) + b"\0"
        async with self._lock:
            await self.start()
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(request)
                await proc.stdin.drain()
                answer = await proc.stdout.readline()
            except BaseException:
                # Cancelled or broken mid-round: its answer would be taken for the next round's.
                await self._kill()
                raise
            if not answer.endswith(b"\n"):
                await self._kill()
                raise OSError(errnos.EPIPE, "the sync process stopped")
        if answer != b"\n":
            code, _, n = answer[:-1].partition(b"\t")
            raise OSError(int(code), os.strerror(int(code)), str(paths[int(n)]))

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        """End the child once its round, if any, is answered."""
        async with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.stdin is None:
                return
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _sync(path: bytes) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _serve() -> None:
    # Ctrl-C at a terminal reaches the whole process group: the server's shutdown still has its
    # last round to ask for, and ends this by closing its input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pending = b""
    paths: list[bytes] = []
    while chunk := os.read(0, 65536):
        pending += chunk
        while (end := pending.find(b"\0")) >= 0:
            path, pending = pending[:end], pending[end + 1 :]
            if path:
                paths.append(path)
                continue
            answer = b"\n"
            for n, name in enumerate(paths):
                try:
                    _sync(name)
                except OSError as e:
                    answer = b"%d\t%d\n" % (e.errno or errnos.EIO, n)
                    break
            paths.clear()
            try:
                os.write(1, answer)
            except BrokenPipeError:
                return  # the server is gone


if __name__ == "__main__":
    _serve()
