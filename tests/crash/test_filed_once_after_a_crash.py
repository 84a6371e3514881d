"""A job that filed its message just before a crash, and could not record so, files nothing more
after the restart (kepmta.delivery): found by tests/crash/test_kill_and_restart.py as a dispatch
twice in a recipient's Maildir, here made certain."""

from __future__ import annotations

import re
import sqlite3
import uuid
from pathlib import Path

from crash_fixtures import folder, pending_jobs
from kepclient import EVIDENCE_FOLDER, DevServer, imap, receipts, send_as, signed_by, wait_for


def test_a_receipt_filed_just_before_a_crash_is_not_filed_again(tmp_path: Path) -> None:
    """The state a SIGKILL leaves between filing a receipt and recording its job done: the job
    pending with no attempt counted, its file already in the folder (moved to cur/ by a reader)."""
    srv = DevServer(tmp_path / "data").start()
    try:
        to = srv.account(1)["address"]
        subj = f"crash-once-{uuid.uuid4().hex[:8]}"
        stage, _, reply = send_as(
            srv, srv.account(0), srv.account(0)["address"], [to], signed_by(srv, 0, [to], subj)
        )
        accepted = re.search(r"accepted as <([^>]+)>", reply)
        assert stage == "done" and accepted, reply
        m = imap(srv, srv.account(0))
        assert wait_for(lambda: receipts(m, subj, "ContentConsignment"))
        m.select(f'"{EVIDENCE_FOLDER}"')  # read-write: new/ moves to cur/ (RFC 3501 \Recent)
        m.logout()
        srv.stop()
        with sqlite3.connect(tmp_path / "data" / "kepmta.db") as db:
            changed = db.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0 WHERE kind = 'receipt' AND message_id = ?",
                (accepted.group(1),),
            ).rowcount
        assert changed == 2  # SubmissionAcceptance and ContentConsignment
        srv.start()
        assert wait_for(lambda: not pending_jobs(tmp_path / "data"), 120)
        kept = folder(srv, 0, EVIDENCE_FOLDER, "REM-EVIDENCE-ID")
        # As files, not only as IMAP lists them: a second file under the same base name is one
        # message to our IMAP index, and two to Dovecot or any other Maildir reader.
        assert (len(kept.messages), kept.files_on_disk) == (2, 2)
    finally:
        srv.stop()
