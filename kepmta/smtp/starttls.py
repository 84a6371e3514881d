"""STARTTLS (RFC 3207) for aiosmtpd's SMTP through the event loop's own TLS.

aiosmtpd builds asyncio's `SSLProtocol` itself, which is TLS record handling written in Python;
under the submission bench it was a tenth of the server's main thread. `loop.start_tls` is the
same upgrade done by the loop, compiled under uvloop, and it is a public interface where aiosmtpd
reaches into asyncio's private one.
"""

from __future__ import annotations

import asyncio
import ssl

from aiosmtpd.smtp import SMTP, TLSSetupException, syntax

# The same bound as the IMAP listener's: a client that never completes its handshake is dropped.
HANDSHAKE_TIMEOUT = 30.0


class LoopTLS(SMTP):
    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if self._tls_protocol is not None:
            # RFC 3207 §4.2: STARTTLS is not offered once TLS is in place, nor accepted.
            await self.push("503 5.5.1 TLS already active")
            return
        if not self.tls_context:
            await self.push("454 4.7.0 TLS not available")
            return
        # RFC 3207 §4.2: commands the client pipelined after STARTTLS came in cleartext and are
        # dropped. No await between that, the 220 and start_tls: the loop must not read the
        # ClientHello into the cleartext stream before the TLS layer takes over the transport.
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        self._writer.write(b"220 Ready to start TLS\r\n")
        try:
            await self._writer.start_tls(self.tls_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            raise TLSSetupException() from error
        transport = self._writer.transport
        # The reader pauses and resumes reading through its transport when its buffer fills.
        self._reader._transport = transport  # type: ignore[attr-defined]
        self.transport = transport
        # RFC 3207 §4.2: the server forgets what it knew from before TLS, the EHLO above all, and
        # a new session (still of the same peer) begins.
        self._set_rset_state()  # type: ignore[no-untyped-call]
        self.session = self._create_session()
        self.session.peer = transport.get_extra_info("peername")
        self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}
        self.under_tls(transport)

    def under_tls(self, transport: asyncio.BaseTransport) -> None:
        """Tell aiosmtpd the session is encrypted by `transport`. aiosmtpd knows a session is under
        TLS, for AUTH (offered and allowed while auth_require_tls stays on) and for the EHLO
        keywords, only by whether it has a TLS protocol, which neither uvloop's transports nor
        `start_tls` give out: the TLS transport stands in for it."""
        self._tls_protocol = transport  # type: ignore[assignment]
