"""kepmta.notify: the notices a delivery asks for, sent by their own worker through the SMS command
hook; retried with back-off, given up after the schedule, never naming the content."""

from __future__ import annotations

import datetime as dt
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta import config, devinit
from kepmta.accounts import AccountError, AccountState, AccountStore
from kepmta.config import ConfigError, NotifySettings, Ports
from kepmta.db.engine import open_engine
from kepmta.db.runner import close
from kepmta.db.schema import jobs as jobs_table
from kepmta.events import MessageFacts, save_facts
from kepmta.evidence.ledger import Ledger, Writes
from kepmta.notify import Contacts, NotifyWorker
from kepmta.queue import jobs

SENDER = "gonderen.kisi@kep.test"
SUBJECT = "Gizli ihtarname konusu"
PHONE = "+905321234567"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_engine(database_url)
    yield eng
    await close(eng)


@pytest.fixture
async def contacts(engine: AsyncEngine, tmp_path: Path) -> Contacts:
    store = AccountStore(engine, tmp_path / "mail", domain="kep.test", default_quota=10**6)
    await store.add_person("Ayşe", "Kaya", password="uzun-parola", state=AccountState.ACTIVE)
    return Contacts(store)


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def worker(engine: AsyncEngine, contacts: Contacts, settings: NotifySettings) -> NotifyWorker:
    return NotifyWorker(
        engine, Ledger(engine), contacts, settings, jobs.Node("test", dt.timedelta(minutes=1))
    )


async def delivered(w: NotifyWorker, message_id: str, recipient: str = "ayse.kaya@kep.test") -> None:
    """As DeliveryWorker does: the message's row, then the notices, in one transaction."""
    now = dt.datetime.now(dt.UTC)
    facts = MessageFacts(message_id, SENDER, (recipient,), SUBJECT, None, now, now, None)

    def unit(tx: Writes) -> None:
        save_facts(tx, facts)
        w.delivered(tx, message_id, recipient, SENDER)

    await w.ledger.transact(unit)


async def job_states(engine: AsyncEngine) -> list[tuple[str, int, str | None]]:
    query = select(jobs_table.c.state, jobs_table.c.attempts, jobs_table.c.last_error).where(
        jobs_table.c.kind == jobs.NOTIFY
    )
    async with engine.connect() as conn:
        return [(r.state, r.attempts, r.last_error) for r in await conn.execute(query)]


async def test_the_command_hook_gets_the_sender_and_never_the_content(
    engine: AsyncEngine, contacts: Contacts, tmp_path: Path
) -> None:
    out = tmp_path / "sms.txt"
    hook = script(tmp_path, "sms", f'printf "%s|%s|" "$1" "$2" >> {out}\ncat >> {out}\n')
    await contacts.set("ayse.kaya@kep.test", phone=PHONE, email=None)
    w = worker(engine, contacts, NotifySettings(sms_command=(str(hook), "{phone}", "{text}")))
    await delivered(w, "m1@kep.test")
    assert await w.run_once() == 1
    phone, argument, stdin = out.read_text().split("|")
    assert phone == PHONE
    assert argument == stdin.rstrip("\n")  # the text as an argument and on standard input
    assert SENDER in argument and "ayse.kaya@kep.test" in argument
    assert SUBJECT not in argument and "ihtar" not in argument
    assert await job_states(engine) == [("done", 0, None)]


async def test_a_failure_is_retried_and_logged(
    engine: AsyncEngine, contacts: Contacts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, tried = tmp_path / "sms.txt", tmp_path / "tried"
    # Fails the first time (the gateway is down), then sends.
    hook = script(
        tmp_path,
        "sms",
        f'if [ ! -e {tried} ]; then touch {tried}; echo "gateway down" >&2; exit 3; fi\ncat >> {out}\n',
    )
    await contacts.set("ayse.kaya@kep.test", phone=PHONE, email=None)
    w = worker(engine, contacts, NotifySettings(sms_command=(str(hook),), retry_schedule=(600,)))
    await delivered(w, "m2@kep.test")
    await w.run_once()
    [(state, attempts, error)] = await job_states(engine)
    assert (state, attempts) == ("pending", 1)
    assert error is not None and "exited with 3" in error and "gateway down" in error
    assert "will retry" in caplog.text
    assert not out.exists()
    assert await w.run_once() == 0  # not due before its back-off
    await jobs.bring_forward(engine, (jobs.NOTIFY,))
    assert await w.run_once() == 1
    assert SENDER in out.read_text()
    assert [s for s, _, _ in await job_states(engine)] == ["done"]


async def test_given_up_after_the_schedule(engine: AsyncEngine, contacts: Contacts, tmp_path: Path) -> None:
    hook = script(tmp_path, "sms", "exit 1\n")
    await contacts.set("ayse.kaya@kep.test", phone=PHONE, email=None)
    w = worker(engine, contacts, NotifySettings(sms_command=(str(hook),), retry_schedule=(600,)))
    await delivered(w, "m3@kep.test")
    await w.run_once()
    await jobs.bring_forward(engine, (jobs.NOTIFY,))
    await w.run_once()
    [(state, attempts, error)] = await job_states(engine)
    assert state == "failed" and attempts == 1 and error is not None and "exited with 1" in error


async def test_a_command_past_its_timeout_is_ended_and_retried(
    engine: AsyncEngine, contacts: Contacts, tmp_path: Path
) -> None:
    pid = tmp_path / "pid"
    hook = script(tmp_path, "sms", f"echo $$ > {pid}\nexec sleep 600\n")
    await contacts.set("ayse.kaya@kep.test", phone=PHONE, email=None)
    w = worker(engine, contacts, NotifySettings(sms_command=(str(hook),), timeout=1))
    await delivered(w, "m4@kep.test")
    await w.run_once()
    [(state, attempts, error)] = await job_states(engine)
    assert (state, attempts, error) == ("pending", 1, "no answer within the timeout")
    assert not Path(f"/proc/{pid.read_text().strip()}").exists()  # killed, not left running


async def test_no_registered_contact_no_notice(
    engine: AsyncEngine, contacts: Contacts, tmp_path: Path
) -> None:
    out = tmp_path / "sms.txt"
    hook = script(tmp_path, "sms", f"cat >> {out}\n")
    await contacts.set("ayse.kaya@kep.test", phone=None, email="ayse@example.org")
    w = worker(engine, contacts, NotifySettings(sms_command=(str(hook),)))
    await delivered(w, "m5@kep.test")
    await w.run_once()
    assert not out.exists()
    assert await job_states(engine) == [("done", 0, None)]


async def test_contacts_are_checked(contacts: Contacts) -> None:
    for phone, mail in (("05321234567x", None), (None, "not an address"), ("+0", None)):
        with pytest.raises(AccountError):
            await contacts.set("ayse.kaya@kep.test", phone=phone, email=mail)
    with pytest.raises(AccountError):
        await contacts.set("yok@kep.test", phone=PHONE, email=None)
    await contacts.set("AYSE.KAYA@kep.test", phone=PHONE, email="ayse@example.org")
    got = await contacts.get("ayse.kaya@kep.test")
    assert got is not None and (got.phone, got.email) == (PHONE, "ayse@example.org")
    await contacts.set("ayse.kaya@kep.test", phone=None, email=None)
    assert await contacts.get("ayse.kaya@kep.test") is None


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    devinit.create_identity(tmp_path / "d", Ports(1, 2, 3, 4))
    return tmp_path / "d" / devinit.CONFIG_NAME


def test_the_notify_table_is_read(conf: Path) -> None:
    assert config.load(conf).notify is None
    conf.write_text(
        conf.read_text()
        + '\n[notify]\nsms_command = ["/bin/sms", "{phone}"]\nretry_schedule = [5, 50]\n'
        + '[notify.smarthost]\nhost = "smtp.example.org"\nport = 465\nsecurity = "tls"\n'
        + 'sender = "b@example.org"\n'
    )
    got = config.load(conf).notify
    assert got is not None and got.sms_command == ("/bin/sms", "{phone}") and got.retry_schedule == (5, 50)
    assert got.smarthost is not None and (got.smarthost.port, got.smarthost.security) == (465, "tls")
    assert got.timeout == 10 and got.sms_webhook is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('sms_command = ["x"]\nsms_webhook = "http://h/"', "sms_command or sms_webhook, not both"),
        ('sms_webhook = "ftp://h/"', "notify.sms_webhook must be an http"),
        ("retry_schedule = []", "notify.retry_schedule must be a list"),
        (
            '[notify.smarthost]\nhost = "h"\nport = 25\nsender = "s@h.org"\nsecurity = "ssl"',
            "security must be",
        ),
        ("sms = 1", "notify.sms is not a known key"),
    ],
)
def test_notify_mistakes_name_the_key(conf: Path, table: str, message: str) -> None:
    conf.write_text(conf.read_text() + "\n[notify]\n" + table + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(conf)
