"""Renewal with RFC 4998 evidence records, on a clock-shifted PKI: evidence made in 2019 by
certificates long expired still verifies through its chain of archive time-stamps, and nothing else
does."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from evidence_fixtures import sample_evidence
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

import kepmta.evidence.tsa
import kepmta.smime.cms
from kepmta import pki
from kepmta.db.engine import open_engine
from kepmta.db.schema import messages
from kepmta.evidence import archive
from kepmta.evidence.checkpoint import audit
from kepmta.evidence.ledger import Kind, Ledger
from kepmta.evidence.revocation import crl_der
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.tsa import BuiltinTsa
from kepmta.evidence.verify import ARCHIVE, CHAIN, REVOCATION, TIMESTAMP, Report, verify_evidence


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


NOW = dt.datetime.now(dt.UTC)
SIGNED_AT = utc(2019, 6, 1, 12)


class World:
    """A provider and a TSA CA whose end-entity certificates lived and died in the past."""

    def __init__(self, revoked: bool = False) -> None:
        self.provider_ca = pki.issue(
            "Old Provider CA", pki.Role.CA, not_before=utc(2015, 1, 1), not_after=utc(2045, 1, 1)
        )
        self.signer = pki.issue(
            "Old Transaction Certificate", pki.Role.EVIDENCE, self.provider_ca,
            not_before=utc(2019, 1, 1), not_after=utc(2020, 1, 1),
        )  # fmt: skip
        self.tsa_ca = pki.issue(
            "Old TSA CA", pki.Role.CA, not_before=utc(2015, 1, 1), not_after=utc(2045, 1, 1)
        )
        self.tsa1 = self._tsa("TSA 2019", utc(2019, 1, 1), utc(2020, 6, 1))
        self.tsa2 = self._tsa("TSA 2020", utc(2020, 1, 1), utc(2021, 1, 1))
        self.tsa3 = self._tsa("TSA now", utc(2020, 11, 1), NOW + dt.timedelta(days=5 * 365))
        listed = ((self.signer.cert.serial_number, utc(2019, 5, 15)),) if revoked else ()
        self.crl = pki.issue_crl(
            self.provider_ca, listed, this_update=utc(2019, 5, 1), next_update=utc(2019, 7, 1)
        )

    def _tsa(self, name: str, start: dt.datetime, end: dt.datetime) -> BuiltinTsa:
        pair = pki.issue(name, pki.Role.TSA, self.tsa_ca, not_before=start, not_after=end)
        return BuiltinTsa(pair, [self.tsa_ca.cert])

    def verify(self, der: bytes, er: bytes | None) -> Report:
        return verify_evidence(der, [self.provider_ca.cert], [self.tsa_ca.cert], evidence_record=er)

    def certs(self) -> tuple[bytes, ...]:
        return archive.der_certs([self.signer.cert, self.provider_ca.cert, self.tsa_ca.cert])


@pytest.fixture
def at(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], None]:
    """Set the clock the signer and the TSA read (the clock-shifted world of the test PKI)."""

    def move(when: dt.datetime) -> None:
        class Shifted(dt.datetime):
            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> Shifted:  # type: ignore[override]
                return cls.fromtimestamp(when.timestamp(), tz)

        monkeypatch.setattr(kepmta.evidence.tsa, "datetime", Shifted)
        monkeypatch.setattr(kepmta.smime.cms, "datetime", Shifted)

    return move


def _failed(report: Report) -> set[str]:
    return {c.name for c in report.checks if not c.ok}


async def _old_evidence(w: World, at: Callable[[dt.datetime], None]) -> bytes:
    at(SIGNED_AT)
    signer = EvidenceSigner(w.signer, [w.provider_ca.cert], w.tsa1)
    return (await signer.sign(sample_evidence(event_time=SIGNED_AT))).der


async def _renewed(
    w: World, at: Callable[[dt.datetime], None], der: bytes, first: dt.datetime
) -> archive.EvidenceRecord:
    at(first)
    [er1] = await archive.stamp_batch([(None, der, w.certs(), (crl_der(w.crl),))], w.tsa2)
    at(utc(2020, 12, 1))
    [er2] = await archive.stamp_batch([(er1, der, (), ())], w.tsa3)
    return er2


async def test_renewed_evidence_verifies_after_every_old_certificate_expired(
    at: Callable[[dt.datetime], None],
) -> None:
    w = World()
    der = await _old_evidence(w, at)
    er = await _renewed(w, at, der, utc(2020, 3, 1))
    at(NOW)
    report = w.verify(der, archive.parse(er.dump()).dump())
    assert report.ok, [c for c in report.checks if not c.ok]
    assert {ARCHIVE, REVOCATION} <= {c.name for c in report.checks}
    assert report.timestamp_time is not None and report.timestamp_time.year == 2019
    assert len(er.chain) == 2  # time-stamp renewal appended to the one chain (RFC 4998 §5.2)


async def test_without_its_evidence_record_the_expired_time_stamp_is_not_enough(
    at: Callable[[dt.datetime], None],
) -> None:
    w = World()
    der = await _old_evidence(w, at)
    report = w.verify(der, None)
    # Without a time-stamp to rely on, the signer's certificate is judged now as well.
    assert _failed(report) == {TIMESTAMP, CHAIN}
    assert "kepmta evidence renew" in report.check(TIMESTAMP).detail


async def test_a_chain_whose_last_tsa_expired_no_longer_holds(at: Callable[[dt.datetime], None]) -> None:
    w = World()
    der = await _old_evidence(w, at)
    at(utc(2020, 3, 1))
    [er1] = await archive.stamp_batch([(None, der, w.certs(), (crl_der(w.crl),))], w.tsa2)
    assert ARCHIVE in _failed(w.verify(der, er1.dump()))  # TSA 2020 expired and nobody renewed


async def test_renewing_after_the_tsa_certificate_expired_is_too_late(
    at: Callable[[dt.datetime], None],
) -> None:
    w = World()
    der = await _old_evidence(w, at)
    er = await _renewed(w, at, der, utc(2020, 7, 1))  # TSA 2019 expired on 2020-06-01
    assert TIMESTAMP in _failed(w.verify(der, er.dump()))


async def test_a_revoked_signer_fails_the_revocation_check(at: Callable[[dt.datetime], None]) -> None:
    w = World(revoked=True)
    der = await _old_evidence(w, at)
    er = await _renewed(w, at, der, utc(2020, 3, 1))
    assert _failed(w.verify(der, er.dump())) == {REVOCATION}


async def test_any_changed_byte_of_the_evidence_record_fails(at: Callable[[dt.datetime], None]) -> None:
    w = World()
    der = await _old_evidence(w, at)
    data = (await _renewed(w, at, der, utc(2020, 3, 1))).dump()
    for i in range(0, len(data), 7):
        changed = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        assert not w.verify(der, changed).ok, f"byte {i} of the evidence record changed unnoticed"


async def test_one_archive_time_stamp_covers_a_batch_through_a_hash_tree(
    at: Callable[[dt.datetime], None],
) -> None:
    w = World()
    ders = []
    for i in range(5):
        at(SIGNED_AT)
        signer = EvidenceSigner(w.signer, [w.provider_ca.cert], w.tsa1)
        ders.append((await signer.sign(sample_evidence(evidence_id=f"ev{i}@x", event_time=SIGNED_AT))).der)
    at(utc(2020, 3, 1))
    ers = await archive.stamp_batch([(None, d, w.certs(), (crl_der(w.crl),)) for d in ders], w.tsa2)
    at(utc(2020, 12, 1))
    ers = await archive.stamp_batch([(er, d, (), ()) for er, d in zip(ers, ders, strict=True)], w.tsa3)
    assert len({er.chain[0].token for er in ers}) == 1  # one TSA request for the whole batch
    at(NOW)
    for d, er in zip(ders, ers, strict=True):
        assert w.verify(d, er.dump()).ok
    # An evidence record proves only its own evidence.
    assert not w.verify(ders[0], ers[1].dump()).ok


MESSAGE = "20240502101530.abc123@hs01.kep.tr"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = await open_engine(f"sqlite+aiosqlite:///{tmp_path / 'kep.db'}")
    async with eng.begin() as conn:
        await conn.execute(
            insert(messages).values(id=MESSAGE, sender="a@hs01.kep.tr", subject="s", submitted_at=NOW)
        )
    yield eng
    await eng.dispose()


async def test_renew_picks_evidence_whose_tsa_expires_soon_and_audits_clean(engine: AsyncEngine) -> None:
    ca = pki.issue("Provider CA", pki.Role.CA)
    signer_pair = pki.issue("Transaction", pki.Role.EVIDENCE, ca)
    tsa_ca = pki.issue("TSA CA", pki.Role.CA)
    soon = BuiltinTsa(pki.issue("TSA ending", pki.Role.TSA, tsa_ca, not_after=NOW + dt.timedelta(days=10)))
    later = BuiltinTsa(pki.issue("TSA lasting", pki.Role.TSA, tsa_ca))
    ledger = Ledger(engine)
    for i, tsa in enumerate((soon, later)):
        signed = await EvidenceSigner(signer_pair, [], tsa).sign(
            sample_evidence(evidence_id=f"ev{i}@x", message_id=MESSAGE, event_time=NOW.replace(microsecond=0))
        )
        async with ledger.writing() as conn:
            await ledger.append(conn, signed)
    trust = [tsa_ca.cert]
    deadline = NOW + dt.timedelta(days=30)
    first = await archive.renew(ledger, later, trust, [ca.cert, tsa_ca.cert], deadline=deadline)
    assert (first.renewed, first.started) == (1, 1)
    [rec] = [r async for r in ledger.walk((Kind.ARCHIVE,))]
    assert rec.evidence_id == "ev0@x"
    again = await archive.renew(ledger, later, trust, [ca.cert, tsa_ca.cert], deadline=None)
    assert (again.renewed, again.started) == (2, 1)
    newest = [r async for r in ledger.walk((Kind.ARCHIVE,))][-1]
    assert newest.evidence_id == "ev1@x"
    chains = [len(archive.parse(r.der).chain) async for r in ledger.walk((Kind.ARCHIVE,))]
    assert chains == [1, 2, 1]
    result = await audit(ledger, [ca.cert], trust)
    assert result.ok, result.problems
