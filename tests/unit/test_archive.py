"""Renewal with RFC 4998 evidence records, on a clock-shifted PKI: evidence made in 2019 by
certificates long expired still verifies through its chain of archive time-stamps, and nothing else
does."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable

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
from kepmta.evidence.errors import TimeStampError
from kepmta.evidence.ledger import Kind, Ledger, evidence_record
from kepmta.evidence.revocation import crl_der
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.tsa import BuiltinTsa, check_token, token_imprint
from kepmta.evidence.tsa_client import build_request, check_reply_token, parse_response
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

        # The TSA of the SHA-512 era, after SHA-256 was found weak (in this made-up history).
        self.tsa4 = self._tsa("TSA SHA-512 era", utc(2023, 1, 1), NOW + dt.timedelta(days=5 * 365))

    def _tsa(self, name: str, start: dt.datetime, end: dt.datetime) -> BuiltinTsa:
        pair = pki.issue(name, pki.Role.TSA, self.tsa_ca, not_before=start, not_after=end)
        return BuiltinTsa(pair, [self.tsa_ca.cert])

    def verify(self, der: bytes, er: bytes | None) -> Report:
        return verify_evidence(der, [self.provider_ca.cert], [self.tsa_ca.cert], evidence_record=er)

    def certs(self) -> tuple[bytes, ...]:
        return archive.der_certs([self.signer.cert, self.provider_ca.cert, self.tsa_ca.cert])


@pytest.fixture(autouse=True)
def issued_at_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Certificates made in a test start five minutes before NOW, the time its evidence claims,
    however long after this module was imported the test runs (a long suite took > 5 min)."""
    monkeypatch.setattr(pki, "utcnow", lambda: NOW)


def shift_clock(monkeypatch: pytest.MonkeyPatch, when: dt.datetime) -> None:
    """Set the clock the signer and the TSA read (the clock-shifted world of the test PKI)."""

    class Shifted(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Shifted:  # type: ignore[override]
            return cls.fromtimestamp(when.timestamp(), tz)

    monkeypatch.setattr(kepmta.evidence.tsa, "datetime", Shifted)
    monkeypatch.setattr(kepmta.smime.cms, "datetime", Shifted)


@pytest.fixture
def at(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], None]:
    return lambda when: shift_clock(monkeypatch, when)


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
    # time-stamp renewal appended to the one chain (RFC 4998 §5.2)
    assert [len(c.stamps) for c in er.chains] == [2]


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
    assert len({er.chains[0].stamps[0].token for er in ers}) == 1  # one TSA request for the whole batch
    at(NOW)
    for d, er in zip(ders, ers, strict=True):
        assert w.verify(d, er.dump()).ok
    # An evidence record proves only its own evidence.
    assert not w.verify(ders[0], ers[1].dump()).ok


MESSAGE = "20240502101530.abc123@hs01.kep.tr"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_engine(database_url)
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
        await ledger.transact(lambda w, signed=signed: w.append(evidence_record(signed)))
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
    chains = [
        [len(c.stamps) for c in archive.parse(r.der).chains] async for r in ledger.walk((Kind.ARCHIVE,))
    ]
    assert chains == [[1], [2], [1]]
    result = await audit(ledger, [ca.cert], trust)
    assert result.ok, result.problems


# --- hash-tree renewal (RFC 4998 §5.2): a new chain in a stronger algorithm -------------------------

REHASHED_AT = utc(2024, 1, 1)


async def _rehashed(
    w: World, at: Callable[[dt.datetime], None], der: bytes, algorithm: str = "sha512"
) -> archive.EvidenceRecord:
    """The SHA-256 era chain of `_renewed`, then a hash-tree renewal in `algorithm`."""
    er = await _renewed(w, at, der, utc(2020, 3, 1))
    at(REHASHED_AT)
    [moved] = await archive.stamp_batch([(er, der, (), ())], w.tsa4, algorithm=algorithm)
    return moved


def _region(record: bytes, part: bytes) -> range:
    start = record.index(part)
    return range(start, start + len(part))


async def test_a_sha256_chain_followed_by_a_sha512_rehash_chain_verifies(
    at: Callable[[dt.datetime], None],
) -> None:
    w = World()
    der = await _old_evidence(w, at)
    er = await _rehashed(w, at, der)
    assert [(c.algorithm, len(c.stamps)) for c in er.chains] == [("sha256", 2), ("sha512", 1)]
    # The new chain's time-stamp was asked for with a SHA-512 imprint.
    assert len(token_imprint(er.last_token, "sha512")) == 64
    data = er.dump()
    assert archive.parse(data) == er
    at(NOW)
    report = w.verify(der, data)
    assert report.ok, [c for c in report.checks if not c.ok]
    detail = report.check(ARCHIVE).detail
    assert "chain 1 SHA-256, 2 archive time-stamp(s) at 2020-03-01" in detail
    assert "chain 2 SHA-512 (hash-tree renewal), 1 archive time-stamp(s) at 2024-01-01" in detail
    assert report.timestamp_time is not None and report.timestamp_time.year == 2019


async def test_time_stamp_renewal_continues_in_the_new_chain_and_sha384_works_too(
    at: Callable[[dt.datetime], None],
) -> None:
    w = World()
    der = await _old_evidence(w, at)
    er = await _rehashed(w, at, der, "sha384")
    at(NOW - dt.timedelta(days=1))
    [er] = await archive.stamp_batch([(er, der, (), ())], w.tsa4)
    assert [(c.algorithm, len(c.stamps)) for c in er.chains] == [("sha256", 2), ("sha384", 2)]
    assert len(token_imprint(er.last_token, "sha384")) == 48
    at(NOW)
    assert w.verify(der, archive.parse(er.dump()).dump()).ok


async def test_tampering_with_the_evidence_or_either_chain_fails(at: Callable[[dt.datetime], None]) -> None:
    w = World()
    der = await _old_evidence(w, at)
    er = await _rehashed(w, at, der)
    data = er.dump()
    at(NOW)
    changed = bytearray(der)
    changed[len(der) // 2] ^= 0x01
    assert ARCHIVE in _failed(w.verify(bytes(changed), data))
    for name, part in (("first chain", er.chains[0].dump()), ("rehash chain", er.chains[1].dump())):
        for i in list(_region(data, part))[::11]:
            flipped = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
            assert ARCHIVE in _failed(w.verify(der, flipped)), f"byte {i} of the {name} changed unnoticed"


async def test_a_rehash_chain_over_another_first_chain_fails(at: Callable[[dt.datetime], None]) -> None:
    """The first chain swapped for another that is valid on its own: the rehash chain no longer
    covers it."""
    w = World()
    der = await _old_evidence(w, at)
    er = await _rehashed(w, at, der)
    other = await _renewed(w, at, der, utc(2020, 4, 1))
    swapped = archive.EvidenceRecord((other.chains[0], er.chains[1]), er.certificates, er.crls)
    at(NOW)
    assert w.verify(der, other.dump()).ok  # a sound record of the same evidence on its own
    report = w.verify(der, swapped.dump())
    assert ARCHIVE in _failed(report)
    assert "chain 2 (SHA-512) archive time-stamp 1" in report.check(ARCHIVE).detail


async def test_a_rehash_chain_that_omits_the_previous_chain_fails(at: Callable[[dt.datetime], None]) -> None:
    w = World()
    der = await _old_evidence(w, at)
    er = await _renewed(w, at, der, utc(2020, 3, 1))
    at(REHASHED_AT)
    # A SHA-512 chain over the data group alone, as if starting afresh (RFC 4998 §5.1).
    [fresh] = await archive.stamp_batch([(None, der, er.certificates, er.crls)], w.tsa4, algorithm="sha512")
    omitting = archive.EvidenceRecord((er.chains[0], fresh.chains[0]), er.certificates, er.crls)
    at(NOW)
    assert w.verify(der, fresh.dump()).ok is False  # alone it cannot vouch for 2019 either
    report = w.verify(der, omitting.dump())
    assert ARCHIVE in _failed(report)
    assert "chain 2 (SHA-512) archive time-stamp 1: a data object's hash is not in" in (
        report.check(ARCHIVE).detail
    )


async def test_a_rehash_after_the_old_chain_expired_is_too_late(at: Callable[[dt.datetime], None]) -> None:
    w = World()
    der = await _old_evidence(w, at)
    at(utc(2020, 3, 1))
    [er] = await archive.stamp_batch([(None, der, w.certs(), (crl_der(w.crl),))], w.tsa2)
    at(REHASHED_AT)  # TSA 2020 expired on 2021-01-01, nobody renewed before
    [er] = await archive.stamp_batch([(er, der, (), ())], w.tsa4, algorithm="sha512")
    at(NOW)
    report = w.verify(der, er.dump())
    assert "chain 1 (SHA-256) archive time-stamp 1: its TSA certificate is not valid at 2024-01-01" in (
        report.check(ARCHIVE).detail
    )


async def test_the_builtin_tsa_and_the_rfc3161_client_take_sha384_and_sha512_imprints() -> None:
    tsa_ca = pki.issue("TSA CA", pki.Role.CA)
    tsa = BuiltinTsa(pki.issue("TSA", pki.Role.TSA, tsa_ca))
    for algorithm, size in (("sha384", 48), ("sha512", 64)):
        imprint = bytes(range(size))
        token = await tsa.timestamp(imprint, algorithm)
        assert check_token(token, imprint, [tsa_ca.cert], algorithm).gen_time is not None
        with pytest.raises(TimeStampError):
            check_token(token, imprint[:32], [tsa_ca.cert])  # not a SHA-256 token
        reply = tsa.respond(build_request(imprint, 7, None, algorithm))
        client_token = parse_response(reply)
        assert check_reply_token(client_token, imprint, 7, None, [tsa_ca.cert], algorithm) == client_token
    with pytest.raises(ValueError, match="48-byte sha384"):
        await tsa.timestamp(bytes(32), "sha384")


async def test_renew_rehash_moves_every_evidence_and_audits_clean(engine: AsyncEngine) -> None:
    ca = pki.issue("Provider CA", pki.Role.CA)
    signer_pair = pki.issue("Transaction", pki.Role.EVIDENCE, ca)
    tsa_ca = pki.issue("TSA CA", pki.Role.CA)
    tsa = BuiltinTsa(pki.issue("TSA lasting", pki.Role.TSA, tsa_ca))
    ledger = Ledger(engine)
    for i in range(3):
        signed = await EvidenceSigner(signer_pair, [], tsa).sign(
            sample_evidence(evidence_id=f"ev{i}@x", message_id=MESSAGE, event_time=NOW.replace(microsecond=0))
        )
        await ledger.transact(lambda w, signed=signed: w.append(evidence_record(signed)))
        if i == 1:  # the first two are archived in the SHA-256 era, the third is not
            done = await archive.renew(ledger, tsa, [tsa_ca.cert], [ca.cert, tsa_ca.cert], deadline=None)
            assert (done.renewed, done.started, done.rehashed) == (2, 2, 0)
    far = NOW + dt.timedelta(days=30)  # nothing expires soon: only the algorithm moves them
    moved = await archive.renew(
        ledger, tsa, [tsa_ca.cert], [ca.cert, tsa_ca.cert], deadline=far, algorithm="sha512"
    )
    assert (moved.renewed, moved.started, moved.rehashed) == (3, 1, 2)
    newest = {r.evidence_id: archive.parse(r.der) async for r in ledger.walk((Kind.ARCHIVE,))}
    assert {eid: [c.algorithm for c in er.chains] for eid, er in newest.items()} == {
        "ev0@x": ["sha256", "sha512"],
        "ev1@x": ["sha256", "sha512"],
        "ev2@x": ["sha512"],
    }
    # One hash tree, one TSA request, for the whole run.
    assert len({er.last_token for er in newest.values()}) == 1
    again = await archive.renew(
        ledger, tsa, [tsa_ca.cert], [ca.cert, tsa_ca.cert], deadline=far, algorithm="sha512"
    )
    assert again.renewed == 0
    result = await audit(ledger, [ca.cert], [tsa_ca.cert])
    assert result.ok, result.problems
