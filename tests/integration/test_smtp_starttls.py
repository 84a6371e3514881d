"""STARTTLS on the submission port (RFC 3207), done by the event loop's own TLS: what the client
pipelined in cleartext is dropped, what it said before TLS is forgotten, a second STARTTLS is
refused, and a handshake that fails ends only that connection."""

from __future__ import annotations

import socket
import ssl

from kepclient import DevServer, smtp, smtp_reply


def _cleartext(srv: DevServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.ports["submission"]), timeout=30)
    assert smtp_reply(sock).startswith(b"220 ")
    sock.sendall(b"EHLO client.test\r\n")
    assert b"STARTTLS" in smtp_reply(sock)
    return sock


def _upgrade(srv: DevServer, sock: socket.socket, command: bytes = b"STARTTLS\r\n") -> ssl.SSLSocket:
    sock.sendall(command)
    assert smtp_reply(sock).startswith(b"220 ")
    return srv.tls().wrap_socket(sock)


def test_commands_pipelined_after_starttls_are_dropped(srv: DevServer) -> None:
    with _upgrade(srv, _cleartext(srv), b"STARTTLS\r\nNOOP\r\n") as tls:
        tls.sendall(b"EHLO client.test\r\n")
        # The first reply under TLS is the EHLO's, not a 250 for the NOOP sent in cleartext.
        assert smtp_reply(tls).startswith(b"250-")


def test_what_the_client_said_before_tls_is_forgotten(srv: DevServer) -> None:
    with _upgrade(srv, _cleartext(srv)) as tls:
        tls.sendall(b"AUTH PLAIN\r\n")
        assert smtp_reply(tls).startswith(b"503 ")  # the EHLO before TLS no longer counts
        tls.sendall(b"EHLO client.test\r\n")
        keywords = smtp_reply(tls)
        assert b"250-AUTH " in keywords and b"STARTTLS" not in keywords


def test_starttls_under_tls_is_refused(srv: DevServer) -> None:
    with _upgrade(srv, _cleartext(srv)) as tls:
        tls.sendall(b"EHLO client.test\r\nSTARTTLS\r\n")
        assert smtp_reply(tls).startswith(b"250-")
        assert smtp_reply(tls).startswith(b"503 5.5.1 TLS already active")
        tls.sendall(b"NOOP\r\n")
        assert smtp_reply(tls).startswith(b"250 ")
    raw = socket.create_connection(("127.0.0.1", srv.ports["submissions"]), timeout=30)
    with srv.tls().wrap_socket(raw) as implicit:
        assert smtp_reply(implicit).startswith(b"220 ")
        implicit.sendall(b"EHLO client.test\r\nSTARTTLS\r\n")
        assert b"STARTTLS" not in smtp_reply(implicit)
        assert smtp_reply(implicit).startswith(b"503 5.5.1 TLS already active")


def test_starttls_takes_no_argument(srv: DevServer) -> None:
    sock = _cleartext(srv)
    with sock:
        sock.sendall(b"STARTTLS now\r\nNOOP\r\n")
        assert smtp_reply(sock).startswith(b"501 ")
        assert smtp_reply(sock).startswith(b"250 ")  # still in cleartext, still served


def test_a_failed_handshake_ends_only_that_connection(srv: DevServer) -> None:
    sock = _cleartext(srv)
    with sock:
        sock.sendall(b"STARTTLS\r\n")
        assert smtp_reply(sock).startswith(b"220 ")
        sock.sendall(b"this is not a TLS ClientHello\r\n" * 8)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        # Closed, with at most a TLS alert record (content type 21) and never an SMTP reply.
        assert rest == b"" or rest[0] == 21
    with smtp(srv) as client:
        assert client.noop()[0] == 250
