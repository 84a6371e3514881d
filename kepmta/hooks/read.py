"""The read hook: the first time a recipient opens a dispatch, ContentHandover evidence, once.

Fed by whatever IMAP server the recipient reads with (ours, or Dovecot through its notify hook);
it only needs the account and the file that was opened.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from kepmta import addresses
from kepmta.db.schema import handovers
from kepmta.events import EventRecorder, load_facts, utcnow
from kepmta.evidence.ledger import Writes
from kepmta.evidence.model import Reason
from kepmta.message.header import read_header

log = logging.getLogger(__name__)

_HANDOVER = insert(handovers)

DISPATCH_TYPE = "http://uri.etsi.org/19522/v1#/ERDMessageType/dispatch"
_HEAD_LIMIT = 256 * 1024


def dispatch_id(path: Path) -> str | None:
    """The provider message id of a REM dispatch file, or None if the file is not a dispatch."""
    with path.open("rb") as f:
        head = f.read(_HEAD_LIMIT)
    parsed = read_header(head, 0, len(head))
    if not parsed.has_blank_line:
        return None
    if (parsed.get("REM-MessageType") or "").strip() != DISPATCH_TYPE:
        return None
    found = re.search(r"<([^<>\s]+)>", parsed.get("Message-ID") or "")
    return found.group(1) if found else None


class ReadHook:
    def __init__(self, recorder: EventRecorder, wake_delivery: Callable[[], None]) -> None:
        self.recorder = recorder
        self.wake_delivery = wake_delivery
        self.engine = recorder.ledger.engine

    async def opened(self, user: str, path: Path, operator: str | None = None) -> None:
        """`user` has just seen the message in `path` for the first time since it was unseen;
        `operator`, if given, is the person who logged in for the legal entity `user` to read it."""
        try:
            message_id = await asyncio.to_thread(dispatch_id, path)
        except OSError as e:
            log.warning("read hook: cannot read %s: %s", path, e)
            return
        if message_id is None:
            return
        reader = str(addresses.parse(user))
        person = str(addresses.parse(operator)) if operator else reader
        async with self.engine.connect() as conn:
            facts = await load_facts(conn, message_id)
            if facts is None or reader not in facts.recipients:
                return  # not a dispatch we made for this reader: it proves nothing
            position = facts.recipients.index(reader) + 1
            seen = await conn.execute(
                select(handovers.c.read_at).where(
                    handovers.c.message_id == message_id, handovers.c.recipient == position
                )
            )
            if seen.first() is not None:
                return
        # EN 319 522-2: ContentHandover, the recipient has taken the content
        # The evidence's Operator (kep:Operator) is the sender's; the one who read for an entity
        # is named in the event reason's details, which the evidence signs.
        details = Reason.RE01.label
        if person != reader:
            details = f"{details} Read by {person}, authorised operator of {reader}."
        signed = await self.recorder.sign(facts, Reason.RE01, details, recipient=position)

        def unit(w: Writes) -> None:
            # The unique (message, recipient) row decides, even against a concurrent first read.
            w.add(_HANDOVER, {"message_id": message_id, "recipient": position, "read_at": utcnow()})
            self.recorder.commit(w, signed)

        try:
            await self.recorder.ledger.transact(unit)
        except IntegrityError:
            return
        self.wake_delivery()
        log.info("%s opened %s", reader, message_id, extra={"message_id": message_id})
