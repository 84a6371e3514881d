"""The SMTP client side of relaying: one transaction to a peer provider over mutual TLS.

Protocol only: it says what the peer answered, per recipient; what that means for the message
(retry, wait for the peer's evidence, RelayFailure) is kepmta.queue.relay's decision.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiosmtplib

from kepmta.config import RelaySettings
from kepmta.peers import Peer

# A peer that takes longer than this for one command is treated as unreachable for this attempt.
_TIMEOUT = 120.0


class PeerUnavailable(Exception):
    """Nothing was handed over this time (no connection, no STARTTLS, wrong certificate, 4xx)."""


@dataclass(frozen=True)
class Handover:
    """What the peer said to each recipient of one transaction."""

    accepted: tuple[str, ...] = ()
    # Permanent refusals (5xx) and temporary ones (4xx), each with the peer's reply.
    refused: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)


def client_context(relay: RelaySettings, peer: Peer) -> ssl.SSLContext:
    """TLS towards `peer`: its registered CA only, and our client certificate (mutual TLS)."""
    assert peer.tls_ca is not None  # the registry refuses an endpoint without its TLS trust
    files = (peer.tls_ca, relay.client_cert, relay.client_key)
    return _context(relay, peer, tuple(f.stat().st_mtime_ns for f in files))


@functools.lru_cache(maxsize=64)
def _context(relay: RelaySettings, peer: Peer, versions: tuple[int, ...]) -> ssl.SSLContext:
    # Remembered per registry entry and file versions: reading the files and building a context
    # cost as much as the rest of a relay attempt (py-spy of bench/relay.py).
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(peer.tls_ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996
    ctx.load_cert_chain(str(relay.client_cert), str(relay.client_key))
    return ctx


def _reply(e: aiosmtplib.SMTPResponseException) -> str:
    return f"{e.code} {e.message}".strip()


def _check_pin(smtp: aiosmtplib.SMTP, peer: Peer) -> None:
    if not peer.tls_pins:
        return
    transport = smtp.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if der is None or hashlib.sha256(der).hexdigest() not in peer.tls_pins:
        raise PeerUnavailable(f"{peer.name}: its TLS certificate matches none of the registered pins")


async def hand_over(
    peer: Peer,
    tls: ssl.SSLContext,
    hostname: str,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
) -> Handover:
    """One SMTP transaction with `peer`; raises PeerUnavailable when nothing could be handed over."""
    assert peer.host is not None
    smtp = aiosmtplib.SMTP(
        hostname=peer.host, port=peer.port, local_hostname=hostname, timeout=_TIMEOUT, start_tls=False
    )
    try:
        await smtp.connect()
        await smtp.ehlo()
        if not smtp.supports_extension("starttls"):
            # RFC 3207 §4: nothing goes to a peer in clear text, whatever it offers instead.
            raise PeerUnavailable(f"{peer.name} ({peer.host}:{peer.port}) does not offer STARTTLS")
        await smtp.starttls(tls_context=tls, server_hostname=peer.tls_server_name or peer.host)
        _check_pin(smtp, peer)
        await smtp.ehlo()
        await smtp.mail(sender, options=[f"SIZE={len(message)}"] if smtp.supports_extension("size") else [])
        accepted: list[str] = []
        refused: dict[str, str] = {}
        deferred: dict[str, str] = {}
        for rcpt in recipients:
            try:
                await smtp.rcpt(rcpt)
                accepted.append(rcpt)
            except aiosmtplib.SMTPRecipientRefused as e:
                (refused if e.code >= 500 else deferred)[rcpt] = _reply(e)
        if accepted:
            try:
                await smtp.data(message)
            except aiosmtplib.SMTPDataError as e:
                if e.code < 500:
                    raise PeerUnavailable(f"{peer.name} deferred the message: {_reply(e)}") from None
                refused.update(dict.fromkeys(accepted, _reply(e)))
                accepted = []
        return Handover(tuple(accepted), refused, deferred)
    except aiosmtplib.SMTPSenderRefused as e:
        if e.code < 500:
            raise PeerUnavailable(f"{peer.name} deferred the sender: {_reply(e)}") from None
        return Handover((), dict.fromkeys(recipients, _reply(e)), {})
    except aiosmtplib.SMTPResponseException as e:
        raise PeerUnavailable(f"{peer.name} answered {_reply(e)}") from None
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as e:
        raise PeerUnavailable(f"{peer.name} ({peer.host}:{peer.port}): {e}") from None
    finally:
        if smtp.is_connected:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()
