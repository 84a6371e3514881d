"""Tell systemd how the service is doing: the sd_notify datagram protocol of Type=notify units.

systemd passes the address of its socket in NOTIFY_SOCKET (a path, or an abstract name written
with a leading '@'); each state is one datagram of newline-separated VAR=value lines
(sd_notify(3)). Outside systemd the variable is unset and every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send `states` (e.g. "READY=1") as one datagram; whether a socket was there to take it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    # sd_notify(3): a name starting with '@' is in the abstract namespace.
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), target)
    except OSError as e:
        # systemd is gone or the socket is not ours to write: the service itself is fine.
        log.warning("could not notify systemd at %s: %s", address, e)
        return False
    return True


def ready() -> bool:
    return notify("READY=1", f"STATUS=serving, pid {os.getpid()}")


def reloading() -> bool:
    # systemd.service(5), Type=notify-reload: RELOADING=1 comes with the CLOCK_MONOTONIC time in µs,
    # so systemd can tell this reload from an earlier one.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")
