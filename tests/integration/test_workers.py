"""The worker processes (kepmta.workers): real spawned processes, real files, real signatures.

A worker that dies or is abandoned mid-request is replaced, and no caller ever receives the answer
meant for another; a task that fails inside a worker fails only its own call. Through a real
server: a submission whose check could not run is answered 451, never accepted or refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kepclient import DevServer, parent, send_as, signed_by, wait_for, worker_processes

from kepmta import config, devinit
from kepmta.rem.receipt import ReceiptInfo
from kepmta.workers import Forker, WorkerError, WorkerPool


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> config.Settings:
    data = tmp_path_factory.mktemp("workers") / "data"
    data.mkdir()
    devinit.create_identity(data, devinit.choose_ports(None))
    return config.load(data / devinit.CONFIG_NAME)


@pytest.fixture
async def pool(settings: config.Settings) -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(settings, workers=1)
    yield workers
    await workers.close()


def _info(subject: str) -> ReceiptInfo:
    return ReceiptInfo(
        event_name="SubmissionAcceptance",
        evidence_id="ev1@kep.test",
        event_uri="http://uri.etsi.org/19522/Event/SubmissionAcceptance",
        reason_uri="http://uri.etsi.org/19522/EventReason/Accepted",
        reason_code="RA01",
        details="accepted",
        provider_message_id="m1@kep.test",
        ua_message_id=None,
        sender="ali.yilmaz@kep.test",
        recipients=("ayse.kaya@kep.test",),
        subject=subject,
        event_time=dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC),
        service_address="rem-service@kep.test",
        policy_ids=("urn:kepmta:policy:kep-tr:v1",),
        digest_b64=None,
        message_type="standart",
    )


def _workers(pool: WorkerPool) -> set[int]:
    return {w.pid for w in pool._all}


async def test_a_receipt_is_written_and_synced_by_a_worker(pool: WorkerPool, tmp_path: Path) -> None:
    target = tmp_path / "receipt.eml"
    await pool.receipt(target, _info("Sözleşme"), b"<xml/>", b"\x30\x00")
    raw = target.read_bytes()
    assert b"Subject: REM SubmissionAcceptance: =?utf-8?" in raw
    assert b"application/pkcs7-signature" in raw  # signed with the key the worker loaded itself


async def test_a_failing_task_fails_its_call_only(pool: WorkerPool, tmp_path: Path) -> None:
    with pytest.raises(WorkerError, match="FileNotFoundError"):
        await pool.receipt(tmp_path / "no-such-dir" / "r.eml", _info("x"), b"<xml/>", b"\x30\x00")
    before = _workers(pool)
    await pool.receipt(tmp_path / "r.eml", _info("x"), b"<xml/>", b"\x30\x00")
    assert _workers(pool) == before  # the same worker answered the next call


async def test_a_dead_worker_is_replaced(pool: WorkerPool, tmp_path: Path) -> None:
    await pool.receipt(tmp_path / "first.eml", _info("first"), b"<xml/>", b"\x30\x00")
    [dead] = _workers(pool)
    os.kill(dead, signal.SIGKILL)
    with pytest.raises(WorkerError, match="stopped"):
        await pool.receipt(tmp_path / "lost.eml", _info("lost"), b"<xml/>", b"\x30\x00")
    await pool.receipt(tmp_path / "second.eml", _info("second"), b"<xml/>", b"\x30\x00")
    assert dead not in _workers(pool) and len(_workers(pool)) == 1
    assert b"second" in (tmp_path / "second.eml").read_bytes()


async def test_an_abandoned_request_never_answers_the_next_caller(pool: WorkerPool, tmp_path: Path) -> None:
    await pool.receipt(tmp_path / "warm.eml", _info("warm"), b"<xml/>", b"\x30\x00")
    [first] = _workers(pool)
    call = asyncio.create_task(pool.receipt(tmp_path / "a.eml", _info("a"), b"<xml/>", b"\x30\x00"))
    await asyncio.sleep(0)  # the request is on its way to the worker
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await pool.receipt(tmp_path / "b.eml", _info("b"), b"<xml/>", b"\x30\x00")
    assert first not in _workers(pool)  # its answer to the abandoned call was never read
    assert b"REM SubmissionAcceptance: b" in (tmp_path / "b.eml").read_bytes()


def test_dead_workers_mean_try_again_later_not_a_lost_message(srv: DevServer) -> None:
    ali, ayse = srv.account(0), srv.account(1)
    first = signed_by(srv, 0, [ayse["address"]], "before the workers die")
    assert send_as(srv, ali, ali["address"], [ayse["address"]], first)[:2] == ("done", 250)
    inbox = Path(srv.info["data"]) / "mail" / "kep.test" / "ayse.kaya" / "new"  # type: ignore[index]
    wait_for(lambda: len(list(inbox.iterdir())) == 1)  # delivered: the filing workers run too
    children = worker_processes(srv)
    assert len(children) == 4  # two pools of two
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    answers = []
    while True:  # each dead worker fails the one request it is given, then is replaced
        msg = signed_by(srv, 0, [ayse["address"]], f"after the workers died {len(answers)}")
        stage, code, text = send_as(srv, ali, ali["address"], [ayse["address"]], msg)
        answers.append((stage, code))
        if code == 250:
            break
        assert (stage, code) == ("DATA", 451) and "4.3.0" in text, text
        assert len(answers) <= 2, answers
    assert answers[0] == ("DATA", 451)  # the first check went to a dead worker
    # Filing workers died too: the delivery is retried and still arrives.
    wait_for(lambda: len(list(inbox.iterdir())) >= 2, timeout=60)


async def test_a_started_pool_has_its_workers_ready(settings: config.Settings) -> None:
    pool = WorkerPool(settings, workers=2)
    try:
        await pool.start()
        assert len(_workers(pool)) == 2
        assert all(w.started for w in pool._all)
    finally:
        await pool.close()


def test_a_server_has_its_workers_ready_before_the_first_message(tmp_path: Path) -> None:
    # Started before the listeners open, so a worker's key loading is not taken from the first
    # sessions: when the ports answer, every worker has answered that it is ready (it writes nothing
    # before that, and a forked child's I/O counts start at zero: proc(5) /proc/PID/io). That
    # `start` waits for the answers is test_a_started_pool_has_its_workers_ready's to show: here
    # the rest of the server's start-up takes long enough for them anyway (checked with the wait
    # taken out).
    srv = DevServer(tmp_path / "data").start()
    try:
        workers = worker_processes(srv)
        assert len(workers) == 4
        for pid in workers:
            written = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
            assert int(written["wchar"]) > 0, f"worker {pid} had not answered when the server listened"
    finally:
        srv.stop()


async def test_workers_are_forked_from_one_process_that_imported_kepmta_once(
    settings: config.Settings,
) -> None:
    forker = Forker()
    pools = [WorkerPool(settings, workers=2, forker=forker) for _ in range(2)]
    try:
        for pool in pools:
            await pool.start()
        parents = {parent(pid) for pid in (*_workers(pools[0]), *_workers(pools[1]))}
        assert len(parents) == 1 and parents != {os.getpid()}
        [forker_pid] = parents
        assert b"kepmta.workers" in Path(f"/proc/{forker_pid}/cmdline").read_bytes()
        # The forker reaps its children: a worker killed leaves no zombie behind.
        [victim, *_] = _workers(pools[0])
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{victim}").exists())
    finally:
        for pool in pools:
            await pool.close()
        await forker.close()
    # With its input closed the forker ends, and each worker with its own.
    assert not Path(f"/proc/{forker_pid}").exists()


async def test_a_dead_forker_is_started_again(settings: config.Settings) -> None:
    pool = WorkerPool(settings, workers=1)
    try:
        await pool.start()
        [first] = _workers(pool)
        os.kill(parent(first), signal.SIGKILL)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(WorkerError):
            await pool.receipt(Path("/nonexistent/tmp/x"), _info("x"), b"<x/>", b"")
        [second] = _workers(pool)
        assert second != first and b"kepmta.workers" in Path(f"/proc/{second}/cmdline").read_bytes()
    finally:
        await pool.close()
