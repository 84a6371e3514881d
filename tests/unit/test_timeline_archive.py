"""`kepmta evidence show` and `report` on renewed evidence, on the clock-shifted PKI of
test_archive: a 2019 evidence verifies through its newest evidence record, and one never renewed
still does not."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_archive import World, shift_clock
from test_bundle_archive import _renewed_message

from kepmta import devinit
from kepmta.cli import main
from kepmta.cli.evidence_people import _as_json
from kepmta.config import Ports
from kepmta.db.engine import open_engine
from kepmta.evidence import timeline
from kepmta.evidence.ledger import Kind
from kepmta.evidence.verify import TIMESTAMP


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], None]:
    return lambda when: shift_clock(monkeypatch, when)


async def _message(w: World, clock: Callable[[dt.datetime], None], folder: Path) -> timeline.MessageEvidence:
    engine = await open_engine(f"sqlite+aiosqlite:///{folder / 'kepmta.db'}")
    try:
        return await _renewed_message(w, clock, engine)
    finally:
        await engine.dispose()


async def test_show_reports_renewed_old_evidence_as_verified(
    clock: Callable[[dt.datetime], None], tmp_path: Path
) -> None:
    w = World()
    message = await _message(w, clock, tmp_path)
    checked = timeline.check(message, [w.provider_ca.cert], [w.tsa_ca.cert])
    shown = _as_json(message, checked)
    assert [e["verified"] for e in shown["events"]] == [True, True]
    for event in shown["events"]:
        assert event["renewal"].startswith("renewed, chain 1 SHA-256, 2 archive time-stamp(s) at 2020-03-01")
        assert "chain 2 SHA-512 (hash-tree renewal)" in event["renewal"]
    text = timeline.render(message, checked)
    assert f"All {len(checked)} evidence verified." in text
    assert "renewed, chain 1 SHA-256" in text and "SHA-512" in text


async def test_show_still_refuses_old_evidence_never_renewed(
    clock: Callable[[dt.datetime], None], tmp_path: Path
) -> None:
    w = World()
    message = await _message(w, clock, tmp_path)
    bare = dataclasses.replace(
        message, records=tuple(r for r in message.records if r.kind is not Kind.ARCHIVE)
    )
    checked = timeline.check(bare, [w.provider_ca.cert], [w.tsa_ca.cert])
    shown = _as_json(bare, checked)
    assert [e["verified"] for e in shown["events"]] == [False, False]
    assert [e["renewal"] for e in shown["events"]] == [None, None]
    for c in checked:
        assert "kepmta evidence renew" in c.report.check(TIMESTAMP).detail
    assert "kepmta evidence renew" in timeline.render(bare, checked)


def _pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_the_ers_command_writes_a_record_that_verify_accepts(
    clock: Callable[[dt.datetime], None], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = World()
    data = tmp_path / "data"
    devinit.create_identity(data, Ports(1, 2, 3, 4))
    # The command runs its own event loop, as from a shell: the ledger is made before, in another.
    message = asyncio.run(_message(w, clock, data))
    entry = message.entries[1]
    ers, p7m = tmp_path / "out.ers", tmp_path / "out.p7m"
    code = main(
        [
            "evidence",
            "ers",
            f"<{entry.evidence.evidence_id}>",
            "-o",
            str(ers),
            "--p7m",
            str(p7m),
            "--data",
            str(data),
        ]
    )
    assert code == 0, capsys.readouterr()
    newest = [
        r for r in message.records if r.kind is Kind.ARCHIVE and r.evidence_id == entry.evidence.evidence_id
    ]
    assert ers.read_bytes() == newest[-1].der
    assert p7m.read_bytes() == entry.der
    ca, tsa_ca = _pem(tmp_path / "ca.pem", w.provider_ca.cert), _pem(tmp_path / "tsa.pem", w.tsa_ca.cert)
    capsys.readouterr()
    verify = ["evidence", "verify", str(p7m), "--ca", str(ca), "--tsa-ca", str(tsa_ca)]
    assert main([*verify, "--ers", str(ers)]) == 0
    assert "Result: VALID" in capsys.readouterr().out
    assert main(verify) == 1  # the 2019 time-stamp alone no longer speaks
    # Unknown evidence, and evidence never renewed, are errors that say so.
    assert main(["evidence", "ers", "nobody@x", "-o", str(ers), "--data", str(data)]) != 0
    assert "no evidence with the id nobody@x" in capsys.readouterr().err
