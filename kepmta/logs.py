"""The server's log: one line per record, as text or as JSON ([log] format), each carrying the
fields of what it is about (message_id, session, peer, reason, …).

A field comes from the record itself (`log.info(…, extra={"message_id": mid})`) or from the task
that logs it: `bind` gives every later line of the current asyncio task a field. asyncio runs
each connection and each job attempt in a task of its own, made with a copy of its creator's
context, so what one binds stays out of the others' lines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import sys
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

_BOUND: ContextVar[MappingProxyType[str, str]] = ContextVar("kepmta_log_fields", default=MappingProxyType({}))
# What every LogRecord has; anything else on a record was given as `extra`, so is a field, but
# for uvicorn's copy of its message with terminal colours.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


def bind(**fields: str) -> None:
    """Every later line of the current task carries `fields`."""
    _BOUND.set(MappingProxyType({**_BOUND.get(), **fields}))


def bind_session(peer: object) -> None:
    """A new client connection: its lines carry a session id of their own and the client's address."""
    where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
    bind(session=secrets.token_hex(4), peer=where)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The task's bound fields, then the record's own (which win)."""
    own = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
    return {**_BOUND.get(), **own}


class _WithFields(logging.Filter):
    """Takes the task's fields while the record is still in that task (a handler may format later)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__["_kepmta_fields"] = fields(record)
        return True


def _fields_of(record: logging.LogRecord) -> dict[str, Any]:
    found: dict[str, Any] | None = getattr(record, "_kepmta_fields", None)
    return found if found is not None else fields(record)


def _timestamp(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC, ISO 8601), level, logger, message, the fields, and exc
    (the traceback) for an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields_of(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        # default=str: a field may be any object; its text is what a reader of the log needs.
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger: message key=value …` on one line: a line break in a message or a traceback
    is written as \\n, so one record never reads as several, nor forges another."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        extra = " ".join(f"{k}={v}" for k, v in _fields_of(record).items())
        if extra:
            text += f" [{extra}]"
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info)
        return text.replace("\r", "\\r").replace("\n", "\\n")


def configure(log_format: str, *, verbose: bool = False) -> None:
    """The process's logging: one handler on standard error, in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_WithFields())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # aiosmtpd's own logger chats per connection and command; at DEBUG it prints AUTH exchanges.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # Python's warnings (a library's DeprecationWarning, say) become records of this log too.
    logging.captureWarnings(True)
