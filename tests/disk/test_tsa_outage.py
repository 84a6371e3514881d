"""An external time-stamp authority ([tsa] in kepmta.toml) that accepts connections and never
answers, or answers with something that is no TimeStampResp.

A submission is still answered 250 within the configured timeout: its SubmissionAcceptance is
signed and committed as CAdES-B-B with a durable time-stamp job (kepmta.events), and nothing that
would carry it (a dispatch, a receipt) goes out before it is time-stamped. When the TSA answers
again, every evidence gets its time-stamp once, every message is delivered once, every receipt
filed once, and the ledger audit is clean.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from crash.crash_fixtures import Load, audit, drain, problems
from disk_fixtures import Tsa, jobs, next_try, submit
from kepclient import DevServer, wait_for

from kepmta.events import TIMESTAMP_JOB
from kepmta.queue.jobs import DELIVER, RECEIPT


def test_a_hanging_or_babbling_tsa_delays_evidence_and_loses_nothing(tmp_path: Path) -> None:
    srv = DevServer(tmp_path / "data").start()
    srv.stop()
    tsa = Tsa(tmp_path / "data" / "pki")
    tsa.configure(srv)
    load = Load(srv, 0)
    try:
        srv.start()
        for n, mode in enumerate(("hang", "garbage", "hang")):
            tsa.set(mode)
            assert submit(srv, load, n % 2, [1, 2] if n % 2 == 0 else [0, 2], f"{mode} {n}")[0] == 250
        # Each acceptance waits for its time-stamp, and tried at least twice, the next try is half a
        # minute away (kepmta.queue.jobs back-off).
        assert wait_for(lambda: [a >= 2 for _, _, a, _ in jobs(srv, TIMESTAMP_JOB)] == [True] * 3, 90)
        assert not [j for j in jobs(srv, DELIVER) if j[1] == "done"]
        assert not jobs(srv, RECEIPT)  # made only once the evidence is time-stamped
        due = next_try(srv, TIMESTAMP_JOB)
        tsa.set("ok")
        # The first evidence the TSA stamps again shows it is back: what waited goes now, not at
        # its back-off.
        assert submit(srv, load, 0, [1], "back")[0] == 250
        assert wait_for(lambda: all(state == "done" for _, state, _, _ in jobs(srv, TIMESTAMP_JOB)), 60)
        assert dt.datetime.now(dt.UTC) < due, "the time-stamps waited for their back-off"
        drain(tmp_path / "data", 120)
        found = problems(srv, load)
        assert not found, "\n".join(found)
        assert (failed := audit(srv)) is None, failed
    finally:
        srv.stop()
        tsa.close()
