"""Plain notices from the provider to a user (quota warnings, relay delays): information in the
user's INBOX, not evidence, in Turkish and English."""

from __future__ import annotations

import email.header
import email.utils
import secrets


def notice_message(address: str, service: str, subject: str, turkish: str, english: str, kind: str) -> bytes:
    """A text/plain message from `service` to `address`; `kind` starts its Message-ID."""
    domain = service.split("@")[-1]
    head = (
        f"From: {service}\r\nTo: {address}\r\n"
        f"Subject: {email.header.Header(subject, 'utf-8').encode()}\r\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
        f"Message-ID: <{kind}.{secrets.token_hex(8)}@{domain}>\r\n"
        "Auto-Submitted: auto-generated\r\n"  # RFC 3834 §5: no auto-replies to this
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
    )
    return (head + "\r\n" + turkish + "\r\n\r\n" + english).encode()
