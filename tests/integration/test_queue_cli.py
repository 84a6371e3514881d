"""`kepmta queue …` as an operator uses it, on a real development folder and its SQLite database,
with the jobs written into it directly as the server writes them."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kepclient import KEPMTA
from sqlalchemy import Engine, create_engine, insert, select
from sqlalchemy.engine import make_url

from kepmta import config, devinit
from kepmta.config import Ports
from kepmta.db import utc
from kepmta.db.migrate import upgrade_on
from kepmta.db.schema import jobs, messages

MESSAGE = "20250301T090000Z.00112233aabbccdd@kep.test"
SENDER = "ayse.kaya@kep.test"
SUBJECT = "Kira sözleşmesi"
SUBMITTED = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
FUTURE = dt.datetime(2099, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
PAST = dt.datetime(2025, 3, 1, 9, 5, tzinfo=dt.UTC)
RECIPIENTS = [[1, "ali.veli@other.test"], [3, "can.er@other.test"]]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    devinit.create_identity(folder, Ports(1, 2, 3, 4))
    return folder


@pytest.fixture
def db(data: Path) -> Iterator[Engine]:
    url = config.load(data / devinit.CONFIG_NAME).database_url
    engine = create_engine(make_url(url).set(drivername="sqlite"))
    with engine.begin() as conn:
        upgrade_on(conn)  # as the server makes its database: the migrations
    with engine.begin() as conn:
        conn.execute(
            insert(messages).values(id=MESSAGE, sender=SENDER, subject=SUBJECT, submitted_at=SUBMITTED)
        )
    yield engine
    engine.dispose()


def add_job(
    db: Engine,
    kind: str,
    payload: dict[str, Any],
    *,
    state: str = "pending",
    attempts: int = 0,
    next_at: dt.datetime = FUTURE,
    error: str | None = None,
) -> int:
    row = {
        "kind": kind,
        "message_id": MESSAGE,
        "payload": payload,
        "state": state,
        "attempts": attempts,
        "next_at": next_at,
        "last_error": error,
    }
    with db.begin() as conn:
        made = conn.execute(insert(jobs).values(**row)).inserted_primary_key
    assert made is not None
    return int(made[0])


def job_row(db: Engine, job_id: int) -> Any:
    with db.connect() as conn:
        return conn.execute(select(jobs).where(jobs.c.id == job_id)).one()


def queue_cli(data: Path, *args: str, columns: int = 200) -> tuple[int, str, str]:
    r = subprocess.run(
        [*KEPMTA, "queue", *args, "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": str(columns)},
    )
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def refused(data: Path, *args: str) -> str:
    code, out, err = queue_cli(data, *args)
    assert code == 1 and not out, (code, out, err)
    assert err.startswith("kepmta: ") and "\n" not in err, err
    return err


def listed(data: Path, *args: str) -> list[dict[str, Any]]:
    code, out, err = queue_cli(data, "list", "--json", *args)
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def test_an_empty_queue_says_so(data: Path, db: Engine) -> None:
    code, out, _ = queue_cli(data, "list")
    assert code == 0 and out == "The queue has no pending jobs."
    add_job(db, "deliver", {"recipient": 1, "address": "can.er@kep.test"}, state="done")
    assert queue_cli(data, "list")[1] == "The queue has no pending jobs."
    assert queue_cli(data, "list", "--kind", "relay", "--all")[1] == "The queue has no jobs of kind relay."


def test_list_shows_pending_jobs_oldest_first_with_what_they_are_for(data: Path, db: Engine) -> None:
    deliver = add_job(
        db,
        "deliver",
        {"recipient": 2, "address": "can.er@kep.test"},
        attempts=2,
        next_at=PAST,
        error="disk full",
    )
    relay = add_job(
        db,
        "relay",
        {"domain": "other.test", "recipients": RECIPIENTS},
        attempts=4,
        error="other.test:25 refused the connection " + "x" * 300,
    )
    receipt = add_job(db, "receipt", {"seq": 17}, next_at=PAST)
    done = add_job(db, "peer-receipt", {"seq": 18}, state="done")
    failed = add_job(db, "peer-receipt", {"seq": 19}, state="failed", error="no peer for other.test")

    code, out, err = queue_cli(data, "list", columns=220)
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split() == [
        "ID", "KIND", "STATE", "MESSAGE", "SENDER", "FOR", "TRIES", "NEXT", "(UTC)", "LAST", "ERROR"
    ]  # fmt: skip
    assert [int(line.split()[0]) for line in lines] == [deliver, relay, receipt]
    first, second, third = lines
    assert "can.er@kep.test" in first and "disk full" in first and MESSAGE in first and SENDER in first
    assert first.split()[6] == "2" and " due " in first
    assert "other.test: ali.veli@other.test, can.er@other.test" in second
    assert "2099-01-02 03:04:05" in second and " due " not in second
    # the long error is cut so the line fits the terminal
    assert second.endswith("…") and len(second) == 220
    assert "evidence #17" in third
    assert all(len(line) <= 220 for line in lines)

    code, out, err = queue_cli(data, "list", "--all")
    assert code == 0, err
    ids = [int(line.split()[0]) for line in out.splitlines()[1:]]
    assert ids == [deliver, relay, receipt, done, failed]
    assert "no peer for other.test" in out and "evidence #19" in out

    assert [r["id"] for r in listed(data, "--kind", "relay")] == [relay]
    assert [r["id"] for r in listed(data, "--all", "--kind", "peer-receipt")] == [done, failed]


def test_show_gives_every_field_the_payload_and_the_message(data: Path, db: Engine) -> None:
    wait = add_job(db, "relay-wait", {"domain": "other.test", "recipients": RECIPIENTS, "stage": "fail"})
    code, out, err = queue_cli(data, "show", str(wait))
    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines() if line[:1].strip() and " " in line)
    assert fields["job"] == str(wait) and fields["kind"] == "relay-wait" and fields["state"] == "pending"
    assert fields["sender"] == SENDER and fields["subject"] == SUBJECT and fields["message"] == MESSAGE
    assert fields["submitted"].strip() == "2025-03-01 09:00:00 UTC"
    assert "next attempt  2099-01-02 03:04:05 UTC\n" in out
    # the payload, pretty-printed and indented under its heading
    payload = out.split("\npayload\n", 1)[1]
    assert json.loads(payload) == {"domain": "other.test", "recipients": RECIPIENTS, "stage": "fail"}
    assert (
        '\n    "stage": "fail"' in payload
        and '\n    "recipients": [[1, "ali.veli@other.test"], [3' in payload
    )


def test_json_round_trip(data: Path, db: Engine) -> None:
    payload = {"domain": "other.test", "recipients": RECIPIENTS}
    relay = add_job(db, "relay", payload, attempts=3, error="4.4.1 timeout")
    (row,) = listed(data)
    assert row == {
        "id": relay,
        "kind": "relay",
        "state": "pending",
        "message_id": MESSAGE,
        "payload": payload,
        "attempts": 3,
        "next_at": FUTURE.isoformat(),
        "last_error": "4.4.1 timeout",
        "sender": SENDER,
        "subject": SUBJECT,
        "submitted_at": SUBMITTED.isoformat(),
    }
    code, out, err = queue_cli(data, "show", str(relay), "--json")
    assert code == 0, err
    assert json.loads(out) == row


def test_retry_makes_a_pending_job_due_and_a_failed_one_pending(data: Path, db: Engine) -> None:
    relay = add_job(db, "relay", {"domain": "other.test", "recipients": RECIPIENTS}, attempts=5, error="busy")
    failed = add_job(db, "peer-receipt", {"seq": 4}, state="failed", attempts=1, error="no peer")
    before = dt.datetime.now(dt.UTC)

    code, out, err = queue_cli(data, "retry", str(relay))
    assert code == 0, err
    assert f"Job {relay}" in out and "due now" in out
    row = job_row(db, relay)
    assert row.state == "pending" and row.attempts == 5 and row.last_error == "busy"
    assert before <= utc(row.next_at) <= dt.datetime.now(dt.UTC)
    assert queue_cli(data, "show", str(relay))[1].count(" UTC (due)\n") == 1

    code, out, err = queue_cli(data, "retry", str(failed))
    assert code == 0, err
    assert "was failed (no peer)" in out
    row = job_row(db, failed)
    assert row.state == "pending" and row.attempts == 1 and utc(row.next_at) <= dt.datetime.now(dt.UTC)
    assert [r["next_at"] <= dt.datetime.now(dt.UTC).isoformat() for r in listed(data)] == [True, True]
    assert " due " in queue_cli(data, "list")[1].splitlines()[1]


def test_retry_of_a_done_job_or_an_unfired_timer_is_refused(data: Path, db: Engine) -> None:
    done = add_job(db, "deliver", {"recipient": 1, "address": "can.er@kep.test"}, state="done")
    err = refused(data, "retry", str(done))
    assert f"job {done} is done" in err
    assert job_row(db, done).state == "done" and utc(job_row(db, done).next_at) == FUTURE

    timer = add_job(db, "relay-wait", {"domain": "other.test", "recipients": RECIPIENTS, "stage": "fail"})
    err = refused(data, "retry", str(timer))
    assert "relay timer" in err and "2099-01-02 03:04:05" in err
    assert utc(job_row(db, timer).next_at) == FUTURE


def test_retry_all(data: Path, db: Engine) -> None:
    waiting = add_job(db, "deliver", {"recipient": 1, "address": "can.er@kep.test"}, attempts=2)
    failed = add_job(db, "peer-receipt", {"seq": 4}, state="failed", error="no peer")
    done = add_job(db, "receipt", {"seq": 5}, state="done")
    timer = add_job(db, "relay-wait", {"domain": "other.test", "recipients": RECIPIENTS, "stage": "warn"})
    # a timer that already fired and failed once is a retry like any other
    backing_off = add_job(
        db, "relay-wait", {"domain": "other.test", "recipients": RECIPIENTS, "stage": "warn"}, attempts=1
    )
    code, out, err = queue_cli(data, "retry", "--all")
    assert code == 0, err
    assert "1 failed job(s) pending again and 2 pending job(s) brought forward" in out
    assert "1 relay timer(s) left" in out
    now = dt.datetime.now(dt.UTC)
    for due in (waiting, failed, backing_off):
        assert job_row(db, due).state == "pending" and utc(job_row(db, due).next_at) <= now
    assert job_row(db, waiting).attempts == 2
    assert job_row(db, done).state == "done"
    assert utc(job_row(db, timer).next_at) == FUTURE
    code, out, err = queue_cli(data, "retry", "--all")
    assert code == 0 and out.startswith("No job was waiting for a retry"), err


def test_drop_turns_a_relay_into_relay_failure_in_one_step(data: Path, db: Engine) -> None:
    relay = add_job(db, "relay", {"domain": "other.test", "recipients": RECIPIENTS}, attempts=7, error="down")
    before = dt.datetime.now(dt.UTC)
    code, out, err = queue_cli(data, "drop", str(relay), "--note", "other.test closed for good")
    assert code == 0, err
    assert "RelayFailure (RB07)" in out and "2 recipient(s)" in out and SENDER in out

    ended = job_row(db, relay)
    assert ended.state == "done" and ended.last_error == "dropped by the operator"
    waits = listed(data, "--kind", "relay-wait")
    assert len(waits) == 1
    (made,) = waits
    assert made["state"] == "pending" and made["attempts"] == 0 and made["message_id"] == MESSAGE
    assert made["payload"] == {
        "domain": "other.test",
        "recipients": RECIPIENTS,
        "stage": "dropped",
        "note": "other.test closed for good",
    }
    assert before <= dt.datetime.fromisoformat(made["next_at"]) <= dt.datetime.now(dt.UTC)
    assert f"Job {made['id']}" in out
    # the relay is no longer pending, so it cannot be dropped twice
    assert "is done" in refused(data, "drop", str(relay))
    assert len(listed(data, "--all", "--kind", "relay-wait")) == 1


def test_drop_without_note_and_of_other_kinds(data: Path, db: Engine) -> None:
    relay = add_job(db, "relay", {"domain": "other.test", "recipients": RECIPIENTS[:1]})
    assert queue_cli(data, "drop", str(relay))[0] == 0
    (made,) = listed(data, "--kind", "relay-wait")
    assert made["payload"]["note"] == "dropped by the operator"

    deliver = add_job(db, "deliver", {"recipient": 1, "address": "can.er@kep.test"})
    err = refused(data, "drop", str(deliver))
    assert "deliver job" in err and "only a relay can be dropped" in err
    assert job_row(db, deliver).state == "pending"
    timer = add_job(db, "relay-wait", {"domain": "other.test", "recipients": RECIPIENTS, "stage": "fail"})
    assert "relay timer ends by itself" in refused(data, "drop", str(timer))
    assert [r["id"] for r in listed(data)] == [made["id"], deliver, timer]


def test_unknown_job(data: Path, db: Engine) -> None:
    for args in (("show", "999"), ("retry", "999"), ("drop", "999")):
        assert refused(data, *args) == "kepmta: there is no job 999 in the queue"
    code, _, err = queue_cli(data, "show", "abc")
    assert code == 2 and "not a job id" in err
