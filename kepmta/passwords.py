"""Password hashing with scrypt (RFC 7914); verification runs off the event loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable

# RFC 7914 §2 parameters; n=2**15, r=8 costs ~32 MiB and ~0.1 s per check on this class of machine.
_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return f"$scrypt$ln={_N.bit_length() - 1},r={_R},p={_P}${_b64(salt)}${_b64(key)}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, scheme, params, salt, key = stored.split("$")
        values = dict(p.split("=") for p in params.split(","))
        n, r, p = 2 ** int(values["ln"]), int(values["r"]), int(values["p"])
    except (ValueError, KeyError):
        return False
    if scheme != "scrypt":
        return False
    expected = _unb64(key)
    got = hashlib.scrypt(
        password.encode(), salt=_unb64(salt), n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(expected)
    )
    return hmac.compare_digest(got, expected)


async def check_password_async(password: str, stored: str) -> bool:
    return await asyncio.to_thread(check_password, password, stored)


class CheckedPasswords:
    """Logins whose password scrypt confirmed lately, so that the same account and password need
    not pay for scrypt again for `seconds()` (the policy's [auth] cache_seconds; 0: never kept).

    A client that opens a connection per message logs in per message, and at ~0.1 s of a core per
    check (above) scrypt would be most of its cost; Dovecot's auth cache is there for the same
    reason. What is kept is an HMAC, under a key that never leaves this process, of the stored hash
    and the password: neither can be read back from it, a new password (a new hash, new salt)
    matches nothing kept, and only a success is ever kept, so a wrong password is always checked
    in full, after the throttle's wait, at full cost."""

    def __init__(
        self, seconds: Callable[[], float], size: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._seconds = seconds
        self._size = size
        self._clock = clock
        self._key = os.urandom(32)
        self._until: OrderedDict[bytes, float] = OrderedDict()

    def _tag(self, password: str, stored: str) -> bytes:
        return hmac.new(self._key, stored.encode() + b"\0" + password.encode(), hashlib.sha256).digest()

    async def check(self, password: str, stored: str) -> bool:
        seconds = self._seconds()
        if seconds <= 0:
            self._until.clear()
            return await check_password_async(password, stored)
        tag = self._tag(password, stored)
        now = self._clock()
        until = self._until.get(tag)
        if until is not None and now < until:
            return True
        ok = await check_password_async(password, stored)
        if ok:
            self._until[tag] = now + seconds
            self._until.move_to_end(tag)
            while len(self._until) > self._size:
                self._until.popitem(last=False)
        return ok
