"""Password hashing with scrypt (RFC 7914); verification runs off the event loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os

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
