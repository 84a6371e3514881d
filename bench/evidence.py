"""Evidence created and verified per second, on one core.

Created: EN 319 522-3 XML signed as CAdES-B-T by `EvidenceSigner` with the built-in TSA (two
ECDSA P-256 signatures and the CMS assembly), then appended to a SQLite ledger, one transaction
each (with fsync, as a 250 requires). Verified: `verify_evidence` on each of them (signature,
signingCertificateV2, chain, time-stamp token and its chain, XML). Audited: `kepmta evidence
audit`'s walk over the whole ledger. The event loop and its worker thread share one core
(`os.sched_setaffinity`).

    .venv/bin/python bench/evidence.py [--count 500]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from kepmta import pki
from kepmta.db.engine import open_engine
from kepmta.db.schema import messages
from kepmta.evidence.checkpoint import audit
from kepmta.evidence.ledger import Ledger, Writes, evidence_record
from kepmta.evidence.model import Event, Evidence, Party, Reason
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.tsa import BuiltinTsa
from kepmta.evidence.verify import verify_evidence

MESSAGE = "20260101T000000Z.bench@kep.test"


def _evidence(i: int) -> Evidence:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return Evidence(
        evidence_id=f"bench-{i}@kep.test",
        event=Event.CONTENT_CONSIGNMENT,
        reason=Reason.RD01,
        details=Reason.RD01.label,
        event_time=now,
        issuer_name="kepmta bench",
        issuer_domain="kep.test",
        policy_ids=("urn:oid:1.3.6.1.4.1.99999.2.1",),
        sender=Party("ali.yilmaz@kep.test", "Ali Yılmaz"),
        sender_auth_time=now,
        sender_auth_method="SMTP AUTH over TLS",
        recipients=(Party("ayse.kaya@kep.test", "Ayşe Kaya"),),
        refers_to_recipient=1,
        message_id=MESSAGE,
        ua_message_id="bench@client.test",
        submission_time=now,
        digest_sha256=bytes(32),
        subject="Bench",
    )


async def run(count: int, folder: Path) -> None:
    ca = pki.issue("Bench Provider CA", pki.Role.CA)
    signer = EvidenceSigner(
        pki.issue("Bench Transaction", pki.Role.EVIDENCE, ca),
        [ca.cert],
        BuiltinTsa(pki.issue("TSA", pki.Role.TSA, ca)),
    )
    engine = await open_engine(f"sqlite+aiosqlite:///{folder / 'bench.db'}")
    async with engine.begin() as conn:
        await conn.execute(
            insert(messages).values(
                id=MESSAGE,
                sender="ali.yilmaz@kep.test",
                subject="Bench",
                submitted_at=dt.datetime.now(dt.UTC),
            )
        )
    ledger = Ledger(engine)
    ders = []
    start = time.perf_counter()
    for i in range(count):
        signed = await signer.sign(_evidence(i))
        await ledger.transact(functools.partial(Writes.append, new=evidence_record(signed)))
        ders.append(signed.der)
    made = time.perf_counter() - start

    start = time.perf_counter()
    for der in ders:
        assert verify_evidence(der, [ca.cert], [ca.cert]).ok
    checked = time.perf_counter() - start

    start = time.perf_counter()
    result = await audit(ledger, [ca.cert], [ca.cert])
    audited = time.perf_counter() - start
    assert result.ok
    await engine.dispose()

    print(f"evidence created (signed, time-stamped, in the ledger): {count / made:8.1f} /s")
    print(f"evidence verified (every check):                        {count / checked:8.1f} /s")
    print(f"ledger audited (chain and every record):                {count / audited:8.1f} records/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(args.count, Path(folder)))


if __name__ == "__main__":
    main()
