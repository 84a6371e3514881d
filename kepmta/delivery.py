"""Local delivery: REM dispatches into recipients' INBOX, receipts into senders' evidence folder.

Runs the durable jobs that an acceptance or an evidence committed. Each job is idempotent: its
Maildir file name is fixed by the job, so a retry after a crash finds the earlier attempt instead of
delivering twice, and the evidence that follows a delivery is committed with the job's completion.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import shutil
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta import logs, metrics
from kepmta.accounts import AccountStore
from kepmta.db.schema import messages
from kepmta.events import EventRecorder, MessageFacts, load_facts
from kepmta.evidence.ledger import Ledger, Writes
from kepmta.evidence.model import Event, Evidence, Reason
from kepmta.evidence.xml import from_xml
from kepmta.maildir import INBOX, Maildir, fsync_dir, write_synced
from kepmta.outage import outage
from kepmta.queue import jobs
from kepmta.quota import QuotaWarner
from kepmta.rem.dispatch import DispatchInfo
from kepmta.rem.receipt import ReceiptInfo
from kepmta.workers import WorkerPool

log = logging.getLogger(__name__)

_KINDS = (jobs.DELIVER, jobs.RECEIPT, jobs.FILE_RECEIVED)
_CONCURRENT_JOBS = 16
_NOT_TOKEN = re.compile(r"[^0-9A-Za-z]")
# Moving filed messages into place (rename, directory fsync) runs on threads of its own, so a
# queue of deliveries never delays the worker threads that submissions wait on.
_MOVING_THREADS = 2


class DeliveryError(Exception):
    """A job that cannot be done now; it is retried later."""


class AwaitingTimestamp(DeliveryError):
    """The expected wait while the time-stamp authority is away: no fault to report."""


@dataclass(frozen=True)
class ProviderIdentity:
    """What provider-signed REM messages say about their sender (kepmta.workers signs them)."""

    service_address: str
    policy_ids: tuple[str, ...]
    message_type: str
    evidence_folder: str


def _copy_synced(source: Path, target: Path) -> None:
    def write(out: BinaryIO) -> None:
        with source.open("rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    write_synced(target, write)


def _token(message_id: str) -> str:
    # ASCII only, as Maildir.unique_name requires: a peer's message id may hold any letter.
    return _NOT_TOKEN.sub("-", message_id.split("@")[0])


class Publisher:
    """Moves filed messages from tmp/ into new/ a batch at a time, on one thread: every move
    waiting is made, then each directory moved into is synced once. Under load several deliveries
    and receipts finish together, and a move was mostly its directory's fsync and the hand-off
    to a thread."""

    def __init__(self, thread: ThreadPoolExecutor) -> None:
        self._thread = thread
        self._waiting: list[_Move] = []
        self._draining: asyncio.Task[None] | None = None

    async def publish(self, box: Maildir, folder: str, base: str) -> None:
        """`Maildir.publish`: the move is durable when this returns."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((box, folder, base, done))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Move] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                errors = await loop.run_in_executor(self._thread, _publish_all, [m[:3] for m in batch])
                for (*_, done), error in zip(batch, errors, strict=True):
                    if done.done():
                        continue  # its caller was cancelled
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
                batch = []
        except BaseException as e:
            # No caller is left waiting on a move that nobody will finish.
            for *_, done in (*batch, *self._waiting):
                if not done.done():
                    done.set_exception(e)
            self._waiting = []
            raise
        finally:
            self._draining = None


_Move = tuple[Maildir, str, str, "asyncio.Future[None]"]


def _publish_all(moves: list[tuple[Maildir, str, str]]) -> list[Exception | None]:
    """Each move's failure, or None; a directory that cannot be synced fails every move into it."""
    errors: list[Exception | None] = []
    into: dict[Path, list[int]] = {}
    for i, (box, folder, base) in enumerate(moves):
        try:
            into.setdefault(box.move(folder, base).parent, []).append(i)
            errors.append(None)
        except Exception as e:  # a full disk, a folder name gone bad: this move only
            errors.append(e)
    for directory, members in into.items():
        try:
            fsync_dir(directory)
        except OSError as e:
            for i in members:
                errors[i] = e
    return errors


class DeliveryWorker(jobs.JobLoop):
    def __init__(
        self,
        engine: AsyncEngine,
        accounts: AccountStore,
        recorder: EventRecorder,
        identity: ProviderIdentity,
        originals: Path,
        quota: QuotaWarner,
        workers: WorkerPool,
        node: jobs.Node,
    ) -> None:
        super().__init__()
        self.node = node
        self.quota = quota
        self.engine = engine
        self.originals = originals
        self.accounts = accounts
        self.recorder = recorder
        self.ledger: Ledger = recorder.ledger
        self.identity = identity
        # Jobs wait mostly on fsync and on worker processes, so they overlap well: 16 at once
        # (and their moves and ledger commits grouped) delivered 8 % more messages a second under
        # bench/submission.py's load than 8 did; 32 no more than 16.
        self._slots = asyncio.Semaphore(_CONCURRENT_JOBS)
        self.workers = workers
        self._moving = ThreadPoolExecutor(_MOVING_THREADS, thread_name_prefix="kepmta-moving")
        self._publisher = Publisher(self._moving)
        # Evidence about a peer's sender leaves through the relay worker: woken after each batch.
        self.wake_relay: Callable[[], None] | None = None
        # Told, inside the transaction that records a delivery, of the message, recipient and
        # sender: the notices of kepmta.notify are made with the delivery, sent apart from it.
        self.on_delivered: Callable[[Writes, str, str, str], None] | None = None
        # Outage failures (kepmta.outage) so far, and whether jobs wait since the last one.
        self._outages = 0
        self._after_outage = False

    async def run_once(self) -> int:
        """Do every job that is due, several at a time; returns how many were attempted."""
        batch = await jobs.due(self.engine, _KINDS, self.node)
        outages = self._outages
        # Every attempt runs to its end before a failure to record one is raised: an attempt
        # still running would be started again beside itself by the next look at the queue.
        results = await asyncio.gather(*(self._attempt(job) for job in batch), return_exceptions=True)
        if batch and self.wake_relay is not None:
            self.wake_relay()
        filed = {r for r in results if isinstance(r, str)}
        # Once per mailbox that grew, not once per message filed into it.
        for address in sorted(filed):
            try:
                await self.quota.check(address)
            except Exception as e:  # a warning that cannot be sent must not stop delivery
                # Nor is it lost: the next message filed into the mailbox checks again.
                if (found := outage(e)) is not None:
                    log.error("quota warning for %s: %s: %s", address, found.what, e)
                else:
                    log.exception("quota warning for %s failed", address)
        if self._outages > outages:
            self._after_outage = True
        elif filed and self._after_outage:
            # Space or the database is back: what failed meanwhile goes now, not at its back-off
            # (up to 30 minutes away), without an operator's `kepmta queue retry`.
            self._after_outage = False
            await jobs.bring_forward(self.engine, _KINDS)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(batch)

    async def _attempt(self, job: jobs.Job) -> str | None:
        """Do `job`; returns the address whose mailbox it filed a message into, if it did."""
        logs.bind(message_id=job.message_id)  # a task of its own (run_once's gather)
        async with self._slots:
            try:
                if job.kind == jobs.DELIVER:
                    return await self._deliver(job)
                if job.kind == jobs.FILE_RECEIVED:
                    return await self._file_received(job)
                return await self._receipt(job)
            except AwaitingTimestamp as e:
                log.info("job %d: %s", job.id, e)
                await jobs.retry_later(self.engine, job, str(e))
            except Exception as e:
                found = outage(e)
                if found is None:
                    log.exception("job %d (%s of %s) failed; will retry", job.id, job.kind, job.message_id)
                else:
                    self._outages += 1
                    log.error(
                        "job %d (%s of %s): %s; will retry: %s",
                        job.id,
                        job.kind,
                        job.message_id,
                        found.what,
                        e,
                    )
                await jobs.retry_later(self.engine, job, f"{type(e).__name__}: {e}")
            return None

    async def facts(self, message_id: str) -> tuple[MessageFacts, Path | None]:
        """The message's facts and its stored original (a peer's dispatch, for relayed mail)."""
        known = self.recorder.known.get(message_id)
        if known is None:
            async with self.engine.connect() as conn:
                facts = await load_facts(conn, message_id)
                spool = (
                    await conn.execute(select(messages.c.spool_path).where(messages.c.id == message_id))
                ).scalar()
            if facts is None:
                raise DeliveryError(f"message {message_id} is not in the database")
            known = (facts, spool)
            self.recorder.known.put(facts, spool)
        facts, spool = known
        return facts, self.originals / spool if spool else None

    async def acceptance(self, message_id: str) -> tuple[str, bytes, bytes]:
        """Evidence id, XML and DER of the time-stamped SubmissionAcceptance: a dispatch carries
        nothing less."""
        known = self.recorder.committed.acceptance(message_id)
        if known is not None:
            return known.evidence.evidence_id, known.xml, known.der
        for record in await self.ledger.for_message(message_id):
            if record.event == Event.SUBMISSION_ACCEPTANCE.value and record.xml is not None:
                if not record.stamped:
                    # kepmta.events.StampWorker makes this job due again once the TSA answers.
                    raise AwaitingTimestamp(f"the acceptance of {message_id} waits for its time-stamp")
                return record.evidence_id, record.xml, record.der
        raise DeliveryError(f"message {message_id} has no SubmissionAcceptance evidence")

    @staticmethod
    def _may_be_filed(job: jobs.Job) -> bool:
        """Whether an earlier attempt at `job` may have filed its message: one that failed, or one
        begun by a node (this one, or another) killed before it could record so."""
        return job.attempts > 0 or job.begun

    async def _file(
        self, box: Maildir, folder: str, base: str, job: jobs.Job, write: Callable[[Path], Awaitable[None]]
    ) -> None:
        """Have a worker process write the message at its tmp/ path, then move it into `folder`."""
        if self._may_be_filed(job) and await asyncio.to_thread(box.find, folder, base) is not None:
            return  # an earlier attempt got the file in before it could record so
        await write(box.tmp_path(folder, base))
        await self._publisher.publish(box, folder, base)

    def dispatch_info(self, facts: MessageFacts, acceptance_id: str) -> DispatchInfo:
        ident = self.identity
        return DispatchInfo(
            provider_message_id=facts.message_id,
            sender=facts.sender,
            to=(),  # the worker process reads To and Cc from the original
            cc=(),
            subject=facts.subject,
            ua_message_id=f"<{facts.ua_message_id}>" if facts.ua_message_id else None,
            evidence_id=acceptance_id,
            event_uri=Event.SUBMISSION_ACCEPTANCE.uri,
            reason_uri=Reason.RA01.uri,
            policy_ids=ident.policy_ids,
            service_address=ident.service_address,
            message_type=ident.message_type,
            submission_time=facts.submitted_at,
        )

    async def _deliver(self, job: jobs.Job) -> str:
        position = int(job.payload["recipient"])
        address = str(job.payload["address"])
        facts, original = await self.facts(job.message_id)
        if original is None:
            raise DeliveryError(f"message {job.message_id} has no stored original")
        box = self.accounts.maildir(address)
        base = Maildir.unique_name(f"{_token(job.message_id)}-d{job.id}")
        if job.payload.get("relayed"):
            source = original

            async def write(tmp: Path) -> None:
                # The peer's dispatch, byte for byte: its provider signature and evidence stay
                # verifiable in the recipient's mailbox.
                await asyncio.get_running_loop().run_in_executor(self._moving, _copy_synced, source, tmp)

        else:
            acceptance_id, acceptance_xml, acceptance_der = await self.acceptance(job.message_id)
            info = self.dispatch_info(facts, acceptance_id)
            event = Event.SUBMISSION_ACCEPTANCE.value

            async def write(tmp: Path) -> None:
                await self.workers.dispatch(tmp, original, info, acceptance_xml, acceptance_der, event)

        await self._file(box, INBOX, base, job, write)
        # EN 319 522-2: ContentConsignment, once the dispatch is in the recipient's mailbox
        signed = await self.recorder.sign(facts, Reason.RD01, Reason.RD01.label, recipient=position)

        def unit(w: Writes) -> None:
            self.recorder.commit(w, signed)
            jobs.complete(w, job)
            if self.on_delivered is not None:
                self.on_delivered(w, job.message_id, address, facts.sender)

        await self.ledger.transact(unit)
        metrics.delivered(facts.submitted_at)
        log.info("delivered %s to %s", job.message_id, address)
        return address

    async def evidence(self, seq: int) -> tuple[Evidence, bytes, bytes]:
        """The evidence at ledger `seq`, as its XML states it, with that XML and its DER."""
        known = self.recorder.committed.get(seq)
        if known is not None:
            # The XML states event times to the second (kepmta.evidence.xml).
            ev = known.evidence
            return replace(ev, event_time=ev.event_time.replace(microsecond=0)), known.xml, known.der
        record = await self.ledger.get(seq)
        if record.xml is None:
            raise DeliveryError(f"ledger record {record.seq} is not an evidence")
        return from_xml(record.xml), record.xml, record.der

    def receipt_info(self, evidence: Evidence, facts: MessageFacts) -> ReceiptInfo:
        ident = self.identity
        recipient = evidence.recipient
        return ReceiptInfo(
            event_name=evidence.event.value,
            evidence_id=evidence.evidence_id,
            event_uri=evidence.event.uri,
            reason_uri=evidence.reason.uri,
            reason_code=evidence.reason.value,
            details=evidence.details,
            provider_message_id=facts.message_id,
            ua_message_id=f"<{facts.ua_message_id}>" if facts.ua_message_id else None,
            sender=facts.sender,
            recipients=(recipient.address,) if recipient else facts.recipients,
            subject=facts.subject,
            event_time=evidence.event_time,
            service_address=ident.service_address,
            policy_ids=ident.policy_ids,
            digest_b64=base64.b64encode(evidence.digest_sha256).decode() if evidence.digest_sha256 else None,
            message_type=ident.message_type,
        )

    async def _receipt(self, job: jobs.Job) -> str:
        seq = int(job.payload["seq"])
        evidence, xml, der = await self.evidence(seq)
        facts, _ = await self.facts(job.message_id)
        info = self.receipt_info(evidence, facts)
        box = self.accounts.maildir(facts.sender)
        base = Maildir.unique_name(f"{_token(job.message_id)}-e{seq}")

        async def write(tmp: Path) -> None:
            await self.workers.receipt(tmp, info, xml, der)

        await self._file(box, self.identity.evidence_folder, base, job, write)
        await self._complete(job)
        return facts.sender

    async def _complete(self, job: jobs.Job) -> None:
        def unit(w: Writes) -> None:
            jobs.complete(w, job)

        await self.ledger.transact(unit)

    async def _file_received(self, job: jobs.Job) -> str:
        """A peer's receipt for one of our senders, as the peer sent it, into the evidence folder."""
        address = str(job.payload["address"])
        source = self.originals / str(job.payload["file"])
        box = self.accounts.maildir(address)
        base = Maildir.unique_name(f"{_token(job.message_id)}-r{job.id}")

        async def write(tmp: Path) -> None:
            await asyncio.get_running_loop().run_in_executor(self._moving, _copy_synced, source, tmp)

        await self._file(box, self.identity.evidence_folder, base, job, write)
        await self._complete(job)
        return address
