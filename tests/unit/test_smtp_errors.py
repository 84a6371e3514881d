"""What an SMTP client is told when a handler fails: a retry code, never our internals."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiosmtpd.smtp import Session, TLSSetupException

from kepmta.smtp.data import SpoolingSMTP


def listener() -> SpoolingSMTP:
    server = SpoolingSMTP(object(), loop=asyncio.get_running_loop())
    server.session = Session(asyncio.get_running_loop())
    return server


async def test_an_unexpected_error_is_a_451_and_one_log_entry(caplog: pytest.LogCaptureFixture) -> None:
    server = listener()
    caplog.set_level(logging.INFO, logger="kepmta.smtp.data")
    reply = await server.handle_exception(ValueError("address must be local@domain, got 'postmaster'"))
    assert reply == "451 4.3.0 Internal error; try again later"
    entries = [r for r in caplog.records if r.name == "kepmta.smtp.data"]
    assert len(entries) == 1 and entries[0].levelno == logging.ERROR
    assert entries[0].exc_info is not None and "postmaster" in str(entries[0].exc_info[1])


async def test_a_failed_tls_handshake_is_one_line_and_no_reply(caplog: pytest.LogCaptureFixture) -> None:
    server = listener()
    caplog.set_level(logging.INFO, logger="kepmta.smtp.data")
    assert await server.handle_exception(TLSSetupException("handshake")) == ""
    entries = [r for r in caplog.records if r.name == "kepmta.smtp.data"]
    assert len(entries) == 1 and entries[0].levelno == logging.INFO and entries[0].exc_info is None
