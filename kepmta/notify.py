"""Notices that a KEP reached a mailbox (KEP.md "notifications"): an SMS through the operator's
command or webhook, and an e-mail to the holder's ordinary address through a smarthost.

Each is a job (kepmta.queue.jobs, kind `notify`) committed with the delivery that causes it, and
done by its own worker: a notice that fails, or hangs until its timeout, is retried with back-off
and logged, and never delays or blocks a delivery. A notice names the sender and the KEP address it
reached, never the content: no subject, no body (the content is the holder's, read over IMAP).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import re
import ssl
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta import addresses
from kepmta.accounts import AccountError, AccountStore
from kepmta.config import NotifySettings, Smarthost
from kepmta.db.runner import runner
from kepmta.db.schema import notify_contacts
from kepmta.evidence.ledger import Ledger, Writes
from kepmta.queue import jobs

log = logging.getLogger(__name__)

SMS = "sms"
EMAIL = "email"
# E.164 (ITU-T E.164 §6): at most 15 digits, the country code first; "+" optional.
_PHONE = re.compile(r"\+?[1-9][0-9]{6,14}")
# Threads that wait on webhooks: their own, so a gateway that hangs holds none of the threads that
# password checks and mailbox sizes run on (asyncio's default executor).
_POSTING_THREADS = 4
# An ordinary address, as an SMTP client sends it in RCPT TO (RFC 5321 §4.1.2), without spaces.
_EMAIL = re.compile(r"[^\s@<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z]{2,63}")


@dataclass(frozen=True)
class Contact:
    """Where `address` is told of new KEP: a mobile number, an ordinary e-mail address, or both."""

    address: str
    phone: str | None
    email: str | None


class NoticeFailed(Exception):
    """One attempt at a notice failed; the message says how, for the job's last error and the log."""


class Contacts:
    """The holders' notification contacts (table notify_contacts); no row, no notices."""

    def __init__(self, store: AccountStore) -> None:
        self.store = store
        self.db = runner(store.engine)

    async def set(self, address: str, *, phone: str | None, email: str | None) -> Contact:
        """Register `phone` and `email` for `address`; None for both takes it out of notices."""
        account = await self.store.require(address)
        if phone is not None and not _PHONE.fullmatch(phone):
            raise AccountError(f"{phone!r} is not a mobile number in international form (+905321234567)")
        if email is not None and not _EMAIL.fullmatch(email):
            raise AccountError(f"{email!r} is not an e-mail address")
        contact = Contact(account.address, phone, email)

        def change(conn: Connection) -> None:
            conn.execute(delete(notify_contacts).where(notify_contacts.c.address == account.address))
            if phone is not None or email is not None:
                now = dt.datetime.now(dt.UTC)
                row = {"address": account.address, "phone": phone, "email": email, "changed_at": now}
                conn.execute(insert(notify_contacts).values(**row))

        await self.db.write(change)
        return contact

    async def get(self, address: str) -> Contact | None:
        query = select(notify_contacts).where(notify_contacts.c.address == address)
        row = await self.db.read(lambda conn: conn.execute(query).first())
        return Contact(row.address, row.phone, row.email) if row is not None else None


def sms_text(sender: str, recipient: str) -> str:
    """The SMS: who sent, to which KEP address; short, and nothing of the content."""
    return f"KEP: {recipient} adresinize {sender} adresinden yeni bir KEP iletisi ulaştı."


def email_notice(sender: str, recipient: str, at: dt.datetime, smarthost: Smarthost, to: str) -> EmailMessage:
    """The e-mail notice, in Turkish and English: who sent, to which KEP address, when."""
    when = at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    msg = EmailMessage()
    msg["From"] = smarthost.sender
    msg["To"] = to
    msg["Subject"] = "Yeni KEP iletisi / New KEP message"
    msg["Date"] = email.utils.format_datetime(at)
    msg["Message-ID"] = email.utils.make_msgid(domain=smarthost.sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no auto-reply to this
    msg.set_content(
        f"{recipient} KEP adresinize {sender} adresinden yeni bir KEP iletisi ulaştı ({when}).\n"
        "İletiyi KEP hesabınıza bağlı e-posta programıyla okuyabilirsiniz.\n\n"
        f"A new KEP message from {sender} reached your KEP address {recipient} ({when}).\n"
        "Read it with the mail program connected to your KEP account.\n"
    )
    return msg


class NotifyWorker(jobs.JobLoop):
    """Makes the notices a delivery asks for, and sends those due, all of a batch at once, each
    within the configured timeout."""

    def __init__(
        self,
        engine: AsyncEngine,
        ledger: Ledger,
        contacts: Contacts,
        settings: NotifySettings,
        node: jobs.Node,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.ledger = ledger
        self.contacts = contacts
        self.settings = settings
        self.node = node
        self._posting = ThreadPoolExecutor(_POSTING_THREADS, thread_name_prefix="kepmta-notify")
        channels = []
        if settings.sms_command or settings.sms_webhook is not None:
            channels.append(SMS)
        if settings.smarthost is not None:
            channels.append(EMAIL)
        self.channels = tuple(channels)

    def delivered(self, w: Writes, message_id: str, recipient: str, sender: str) -> None:
        """In the delivery's transaction: `message_id` from `sender` is in `recipient`'s mailbox,
        so one job per channel is due now. Whether the holder registered a number or an address is
        read by the job, so a delivery costs no more than these rows."""
        at = dt.datetime.now(dt.UTC).isoformat()
        for channel in self.channels:
            payload = {"channel": channel, "address": recipient, "sender": sender, "at": at}
            jobs.enqueue(w, jobs.NOTIFY, message_id, payload)
        w.after_commit(self.wake)

    async def run_once(self) -> int:
        batch = await jobs.due(self.engine, (jobs.NOTIFY,), self.node)
        await asyncio.gather(*(self._attempt(job) for job in batch))
        return len(batch)

    async def _attempt(self, job: jobs.Job) -> None:
        channel, address = str(job.payload["channel"]), str(job.payload["address"])
        try:
            await asyncio.wait_for(self._send(job), self.settings.timeout)
        except Exception as e:
            error = "no answer within the timeout" if isinstance(e, TimeoutError) else str(e) or repr(e)
            schedule = self.settings.retry_schedule
            if job.attempts >= len(schedule):
                log.error(
                    "%s notice to %s for %s given up after %d attempts: %s",
                    channel,
                    address,
                    job.message_id,
                    job.attempts + 1,
                    error,
                )
                await self.ledger.transact(lambda w: jobs.fail(w, job, error))
                return
            log.warning(
                "%s notice to %s for %s failed; will retry: %s", channel, address, job.message_id, error
            )
            await jobs.retry_later(self.engine, job, error, schedule)
            return
        await self.ledger.transact(lambda w: jobs.complete(w, job))

    async def _send(self, job: jobs.Job) -> None:
        channel, address = str(job.payload["channel"]), str(job.payload["address"])
        sender = str(job.payload["sender"])
        contact = await self.contacts.get(str(addresses.parse(address)))
        if channel == SMS and contact is not None and contact.phone is not None:
            await self._sms(contact.phone, sms_text(sender, address), address, sender, job.message_id)
            log.info("SMS notice to %s for %s sent", address, job.message_id)
        elif channel == EMAIL and contact is not None and contact.email is not None:
            assert self.settings.smarthost is not None  # a job of this channel is made only with one
            at = dt.datetime.fromisoformat(str(job.payload["at"]))
            notice = email_notice(sender, address, at, self.settings.smarthost, contact.email)
            await self._email(notice)
            log.info("e-mail notice to %s for %s sent", address, job.message_id)

    async def _sms(self, phone: str, text: str, address: str, sender: str, message_id: str) -> None:
        if self.settings.sms_command:
            await self._command(phone, text)
        elif self.settings.sms_webhook is not None:
            body = {"to": phone, "text": text, "account": address, "sender": sender, "message_id": message_id}
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._posting, self._post, self.settings.sms_webhook, body)

    async def _command(self, phone: str, text: str) -> None:
        argv = [arg.replace("{phone}", phone).replace("{text}", text) for arg in self.settings.sms_command]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise NoticeFailed(f"cannot run {argv[0]}: {e}") from None
        try:
            _, err = await proc.communicate(text.encode() + b"\n")
        except asyncio.CancelledError:
            # The timeout ran out: the command is not left running beside the next attempt.
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            said = err.decode(errors="replace").strip()[-300:]
            raise NoticeFailed(f"{argv[0]} exited with {proc.returncode}: {said}")

    def _post(self, url: str, body: dict[str, str]) -> None:
        """POST `body` as JSON; a 2xx answer is success. Runs in a thread, within the timeout."""
        request = urllib.request.Request(
            url,
            data=json.dumps(body, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json; charset=utf-8"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as answer:
                answer.read(65536)
        except urllib.error.HTTPError as e:
            raise NoticeFailed(f"the webhook answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise NoticeFailed(f"the webhook could not be reached: {e}") from None

    async def _email(self, notice: EmailMessage) -> None:
        host = self.settings.smarthost
        assert host is not None
        context = ssl.create_default_context(cafile=str(host.ca) if host.ca is not None else None)
        password = host.password_file.read_text().strip() if host.password_file is not None else None
        try:
            await aiosmtplib.send(
                notice,
                hostname=host.host,
                port=host.port,
                use_tls=host.security == "tls",
                start_tls=host.security == "starttls",
                tls_context=context if host.security != "none" else None,
                username=host.username,
                password=password,
                timeout=self.settings.timeout,
            )
        except aiosmtplib.SMTPException as e:
            raise NoticeFailed(f"the smarthost refused the notice: {e}") from None
