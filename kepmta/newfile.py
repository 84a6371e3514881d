"""New files created on a thread, for the event loop's sessions.

Creating a file can take long enough to hold up every other session on the loop: a round trip on a
shared mail store (NFS), or, on ext4 without a journal, a search of the inode group for an inode
not freed in the last minutes (fs/ext4/ialloc.c `recently_deleted`), which under mail's steady
coming and going took 0.1 to 0.8 ms of CPU per file on our two-core test machine. So a session
starts the creation on a thread, goes on (sending its continuation, say) and takes the descriptor
when it needs it. The rest of the writing stays on the loop: writes into the page cache are cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class NewFile:
    """A file being created at `path` (it must not exist); the creation starts at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._settled = False  # taken by `fd`, or abandoned
        # Shielded below: the thread goes on whatever happens to the session, and its outcome is
        # always either taken by `fd` or undone by `abandon`.
        self._created = asyncio.get_running_loop().run_in_executor(None, os.open, path, _FLAGS, 0o600)

    async def fd(self) -> int:
        """The new file's descriptor, the caller's to close; raises the OSError that stopped it."""
        try:
            fd = await asyncio.shield(self._created)
        except asyncio.CancelledError:
            self.abandon()
            raise
        self._settled = True
        return fd

    def abandon(self) -> None:
        """The caller will not take the file: once created, it is closed and removed. Nothing to
        do once `fd` has handed it over."""
        if not self._settled:
            self._settled = True
            self._created.add_done_callback(self._remove)

    def _remove(self, created: asyncio.Future[int]) -> None:
        if created.cancelled() or created.exception() is not None:
            return
        os.close(created.result())
        with contextlib.suppress(OSError):
            self.path.unlink()
