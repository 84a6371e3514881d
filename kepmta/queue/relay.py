"""Relaying to peer providers: the durable jobs behind a message for another KEP provider.

- `relay`: one SMTP transaction per message and peer domain, all of that peer's recipients, the
  DKIM-signed REM dispatch over mutual TLS (kepmta.queue.peer_client), retried on the policy's
  schedule while the peer is unreachable or answers 4xx.
- `relay-wait`: the timers (KEP.md, EN 319 532-4). The peer's RelayAcceptance or RelayRejection
  comes back as a receipt (kepmta.inbound); a recipient still without one at `warn_after` gets
  its sender a warning notice, at `fail_after` our RelayFailure (RB09). After a permanent refusal
  the peer's own RelayRejection is awaited `refusal_wait`, then RelayFailure names its reply.
- `peer-receipt`: our evidence for a peer's sender, as a DKIM-signed REM receipt to that peer.

Nothing is dropped silently: every end of a job is evidence, or a failed job with its reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import Sequence
from typing import BinaryIO

from kepmta import logs
from kepmta.config import RelayPolicy, RelaySettings
from kepmta.delivery import AwaitingTimestamp, DeliveryWorker
from kepmta.events import MessageFacts, utcnow
from kepmta.evidence.ledger import Kind, Writes
from kepmta.evidence.model import Event, Provider, Reason
from kepmta.evidence.xml import from_xml
from kepmta.live import Live
from kepmta.maildir import INBOX, Maildir
from kepmta.notices import notice_message
from kepmta.peers import Peer, PeerRegistry
from kepmta.queue import jobs
from kepmta.queue.peer_client import PeerUnavailable, client_context, hand_over
from kepmta.workers import WorkerPool

log = logging.getLogger(__name__)

# Relay jobs wait on the network (TLS, the peer's checks) far more than on this process.
_CONCURRENT_JOBS = 16
# The peer's answers that settle a recipient's relay, and ours.
_PEER_RELAY_EVENTS = (Event.RELAY_ACCEPTANCE.value, Event.RELAY_REJECTION.value)


def provider_of(peer: Peer) -> Provider:
    """The peer as ExternalERDSDetails names it (EN 319 522-3 M05)."""
    return Provider(peer.name, peer.domains[0])


def _recipients(job: jobs.Job) -> list[tuple[int, str]]:
    return [(int(p), str(a)) for p, a in job.payload["recipients"]]


def _failure_reason(reply: str) -> Reason:
    # RFC 3463 X.1.1: the peer says the mailbox does not exist.
    return Reason.RB10 if reply[4:9] == "5.1.1" else Reason.RB07


class RelayWorker(jobs.JobLoop):
    def __init__(
        self,
        delivery: DeliveryWorker,
        registry: PeerRegistry,
        relay: RelaySettings | None,
        live: Live,
        hostname: str,
        workers: WorkerPool,
    ) -> None:
        super().__init__()
        self.delivery = delivery
        self.recorder = delivery.recorder
        self.ledger = delivery.ledger
        self.engine = delivery.engine
        self.node = delivery.node
        self.registry = registry
        self.relay = relay
        self.live = live
        self.hostname = hostname
        self.workers = workers
        self._slots = asyncio.Semaphore(_CONCURRENT_JOBS)

    @property
    def policy(self) -> RelayPolicy:
        """The relay timers of the policy in force, read for each attempt (kepmta.live)."""
        return self.live.policy.relay

    async def run_once(self) -> int:
        batch = await jobs.due(self.engine, (jobs.RELAY, jobs.RELAY_WAIT, jobs.PEER_RECEIPT), self.node)
        # Every attempt runs to its end before a failure to record one is raised (DeliveryWorker).
        results = await asyncio.gather(*(self._attempt(job) for job in batch), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(batch)

    async def _attempt(self, job: jobs.Job) -> None:
        logs.bind(message_id=job.message_id)  # a task of its own (run_once's gather)
        async with self._slots:
            try:
                if job.kind == jobs.RELAY:
                    await self._relay(job)
                elif job.kind == jobs.RELAY_WAIT:
                    await self._wait(job)
                else:
                    await self._peer_receipt(job)
            except (PeerUnavailable, AwaitingTimestamp) as e:
                log.info("job %d (%s of %s): %s; will retry", job.id, job.kind, job.message_id, e)
                await jobs.retry_later(self.engine, job, str(e), self.policy.retry_schedule)
            except Exception as e:
                log.exception("job %d (%s of %s) failed; will retry", job.id, job.kind, job.message_id)
                await jobs.retry_later(
                    self.engine, job, f"{type(e).__name__}: {e}", self.policy.retry_schedule
                )

    def _endpoint(self, peer: Peer) -> RelaySettings:
        if peer.host is None:
            raise PeerUnavailable(f"{peer.name} has no relay endpoint in the peer registry")
        if self.relay is None:
            raise PeerUnavailable("kepmta.toml has no [relay] identity (client certificate, DKIM keys)")
        return self.relay

    # --- outbound dispatches ------------------------------------------------------------------------

    async def _relay(self, job: jobs.Job) -> None:
        domain = str(job.payload["domain"])
        rcpts = _recipients(job)
        facts, original = await self.delivery.facts(job.message_id)
        if utcnow() >= facts.submitted_at + dt.timedelta(seconds=self.policy.fail_after):
            # Past the last moment: the relay-wait job records RelayFailure, nothing goes out late.
            await self._complete(job)
            return
        peer = self.registry.current.for_domain(domain)
        if peer is None:
            # EN 319 522-2 RB08: the registry no longer names a provider for this domain.
            details = f"no KEP provider is registered for {domain}"
            await self._fail(job, facts, [(p, Reason.RB08, details) for p, _ in rcpts], None)
            return
        relay = self._endpoint(peer)
        if original is None:
            raise RuntimeError(f"message {job.message_id} has no stored original")
        # The peer may have decided already (a dispatch that reached it another way, a resend).
        answered = await self.answered(job.message_id)
        rcpts = [(p, a) for p, a in rcpts if a not in answered]
        if not rcpts:
            await self._complete(job)
            return
        acceptance_id, xml, der = await self.delivery.acceptance(job.message_id)
        info = self.delivery.dispatch_info(facts, acceptance_id)
        raw = await self.workers.relay_dispatch(original, info, xml, der, Event.SUBMISSION_ACCEPTANCE.value)
        addresses = [a for _, a in rcpts]
        handover = await hand_over(
            peer, client_context(relay, peer), self.hostname, facts.sender, addresses, raw
        )
        log.info(
            "relayed %s to %s: %d accepted, %d refused, %d deferred",
            job.message_id,
            peer.name,
            len(handover.accepted),
            len(handover.refused),
            len(handover.deferred),
        )
        now = utcnow()

        def unit(w: Writes) -> None:
            jobs.complete(w, job)
            refused: list[list[int | str]] = [[p, a] for p, a in rcpts if a in handover.refused]
            if refused:
                replies = {a: handover.refused[a] for p, a in rcpts if a in handover.refused}
                at = now + dt.timedelta(seconds=self.policy.refusal_wait)
                payload = {"domain": domain, "recipients": refused, "stage": "refused", "replies": replies}
                jobs.enqueue(w, jobs.RELAY_WAIT, job.message_id, payload, at)
            deferred: list[list[int | str]] = [[p, a] for p, a in rcpts if a in handover.deferred]
            if deferred:
                at = now + dt.timedelta(seconds=self.policy.retry_schedule[0])
                jobs.enqueue(w, jobs.RELAY, job.message_id, {"domain": domain, "recipients": deferred}, at)

        await self.ledger.transact(unit)

    # --- timers ---------------------------------------------------------------------------------------

    async def answered(self, message_id: str) -> set[str]:
        """Recipients whose relay is settled: the peer's RelayAcceptance or RelayRejection is
        kept, or we recorded RelayFailure."""
        settled: set[str] = set()
        for record in await self.ledger.for_message(message_id):
            if record.xml is None:
                continue
            peer_answer = record.kind == Kind.RECEIVED and record.event in _PEER_RELAY_EVENTS
            ours = record.kind != Kind.RECEIVED and record.event == Event.RELAY_FAILURE.value
            if peer_answer or ours:
                recipient = from_xml(record.xml).recipient
                if recipient is not None:
                    settled.add(recipient.address)
        return settled

    async def _wait(self, job: jobs.Job) -> None:
        stage = str(job.payload["stage"])
        domain = str(job.payload["domain"])
        answered = await self.answered(job.message_id)
        missing = [(p, a) for p, a in _recipients(job) if a not in answered]
        if not missing:
            await self._complete(job)
            return
        facts, _ = await self.delivery.facts(job.message_id)
        peer = self.registry.current.for_domain(domain)
        name = peer.name if peer else domain
        if stage == "warn":
            await self._warn(facts, name, [a for _, a in missing])
            await self._complete(job)
            return
        provider = provider_of(peer) if peer else None
        if stage == "refused":
            replies: dict[str, str] = job.payload["replies"]
            failures = [
                (p, _failure_reason(replies[a]), f"{name} refused the message without evidence: {replies[a]}")
                for p, a in missing
            ]
        elif stage == "dropped":
            # `kepmta queue drop`: the operator ended the relay (EN 319 522-2 RB07).
            note = str(job.payload.get("note") or jobs.DROPPED)
            failures = [(p, Reason.RB07, f"relay to {name} ended: {note}") for p, _ in missing]
        else:
            hours = self.policy.fail_after / 3600
            failures = [
                (p, Reason.RB09, f"no relay evidence from {name} within {hours:g} h") for p, _ in missing
            ]
        await self._fail(job, facts, failures, provider)

    async def _warn(self, facts: MessageFacts, peer_name: str, missing: Sequence[str]) -> None:
        hours = self.policy.warn_after / 3600
        who = ", ".join(missing)
        raw = notice_message(
            facts.sender,
            self.delivery.identity.service_address,
            f"KEP uyarısı / warning: {facts.subject}",
            f"<{facts.message_id}> iletiniz {hours:g} saattir {peer_name} tarafından alınmadı "
            f"({who}). Deneme sürüyor; alınamazsa RelayFailure kanıtı gönderilecek.\r\n",
            f"Your message <{facts.message_id}> has not been taken by {peer_name} for {hours:g} h "
            f"({who}). Relaying goes on; if it fails, you will receive RelayFailure evidence.\r\n",
            "relay-warning",
        )
        box = self.delivery.accounts.maildir(facts.sender)
        base = Maildir.unique_name(f"relay-warning-{secrets.token_hex(6)}")

        def write(out: BinaryIO) -> None:
            out.write(raw)

        await asyncio.to_thread(box.deliver, INBOX, base, write)
        log.warning(
            "relay of %s to %s: no answer for %g h; sender warned", facts.message_id, peer_name, hours
        )

    async def _fail(
        self,
        job: jobs.Job,
        facts: MessageFacts,
        failures: Sequence[tuple[int, Reason, str]],
        provider: Provider | None,
    ) -> None:
        """RelayFailure for each (recipient position, reason, details), committed with the end of
        `job`."""
        signed = [
            await self.recorder.sign(facts, reason, details, recipient=position, external=provider)
            for position, reason, details in failures
        ]

        def unit(w: Writes) -> None:
            for evidence in signed:
                self.recorder.commit(w, evidence)
            jobs.complete(w, job)

        await self.ledger.transact(unit)
        self.delivery.wake()
        for position, reason, details in failures:
            log.warning(
                "relay of %s to recipient %d failed (%s): %s",
                facts.message_id,
                position,
                reason.value,
                details,
            )

    # --- our evidence for a peer's sender -----------------------------------------------------------

    async def _peer_receipt(self, job: jobs.Job) -> None:
        evidence, xml, der = await self.delivery.evidence(int(job.payload["seq"]))
        facts, _ = await self.delivery.facts(job.message_id)
        domain = facts.sender.rpartition("@")[2]
        peer = self.registry.current.for_domain(domain)
        if peer is None:
            error = f"no peer provider is registered for {domain}: receipt not sent"
            log.error("job %d: %s", job.id, error)
            await self._end(job, error)
            return
        relay = self._endpoint(peer)
        raw = await self.workers.relay_receipt(self.delivery.receipt_info(evidence, facts), xml, der)
        service = self.delivery.identity.service_address
        handover = await hand_over(
            peer, client_context(relay, peer), self.hostname, service, [facts.sender], raw
        )
        if handover.deferred:
            raise PeerUnavailable(f"{peer.name} deferred the receipt: {handover.deferred[facts.sender]}")
        if handover.refused:
            error = (
                f"{peer.name} refused the {evidence.event.value} receipt: {handover.refused[facts.sender]}"
            )
            log.error("job %d: %s", job.id, error)
            await self._end(job, error)
            return
        await self._complete(job)

    async def _complete(self, job: jobs.Job) -> None:
        def unit(w: Writes) -> None:
            jobs.complete(w, job)

        await self.ledger.transact(unit)

    async def _end(self, job: jobs.Job, error: str) -> None:
        def unit(w: Writes) -> None:
            jobs.fail(w, job, error)

        await self.ledger.transact(unit)
