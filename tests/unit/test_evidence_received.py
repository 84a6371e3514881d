"""A peer provider's evidence kept in our ledger as it arrived (`received`): chained and audited
without our key, shown with the peer as its issuer, exported with the peer's CA and verified
against it, never against ours. Two real provider identities, a real SQLite ledger, real CMS."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import shlex
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from evidence_fixtures import Pki, make_pki, openssl, sample_evidence
from sqlalchemy.ext.asyncio import AsyncEngine
from test_bundle import _members, _zip

from kepmta import pki
from kepmta.cli.evidence_people import verify_bundle
from kepmta.db.engine import open_engine
from kepmta.events import MessageFacts, save_facts
from kepmta.evidence import archive, bundle, timeline
from kepmta.evidence.checkpoint import audit, statement
from kepmta.evidence.ledger import Kind, Ledger, NewRecord, evidence_record, received_record
from kepmta.evidence.model import Evidence, Party, Provider, Reason
from kepmta.evidence.revocation import crl_der, record_id
from kepmta.evidence.signer import EvidenceSigner, SignedEvidence
from kepmta.evidence.tsa import BuiltinTsa
from kepmta.evidence.verify import CHAIN, SIGNATURE, verify_evidence
from kepmta.evidence.xml import from_xml
from kepmta.smime import cms

MESSAGE_ID = "20240502101530.abc123@hs01.kep.tr"
SENDER = "ayse.yilmaz@hs01.kep.tr"
RECIPIENTS = ("mehmet.ozturk@hs01.kep.tr", "info@peer.kep.tr")
SUBJECT = "Sözleşme & ödeme <ek>"
SUBMITTED = dt.datetime(2024, 5, 2, 10, 15, 0, tzinfo=dt.UTC)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)


@pytest.fixture(autouse=True)
def issued_at_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Certificates made in a test start before NOW, the time its evidence claims, however long
    after this module was imported the test runs."""
    monkeypatch.setattr(pki, "utcnow", lambda: NOW)


US = Provider("Test KEP Hizmet Sağlayıcı A.Ş.", "hs01.kep.tr")
PEER = Provider("Örnek Peer KEP Hizmetleri A.Ş.", "peer.kep.tr")


@dataclasses.dataclass(frozen=True)
class PeerPki:
    """Another KEP provider: its own CA, transaction certificate and TSA."""

    ca: pki.KeyPair
    evidence: pki.KeyPair
    tsa: pki.KeyPair

    def signer(self) -> EvidenceSigner:
        return EvidenceSigner(self.evidence, [self.ca.cert], BuiltinTsa(self.tsa, [self.ca.cert]))


def make_peer() -> PeerPki:
    org = "Örnek Peer KEP Hizmetleri A.Ş."
    ca = pki.issue("Peer KEP Provider CA", pki.Role.CA, organization=org)
    return PeerPki(
        ca,
        pki.issue("Peer KEP İşlem Sertifikası", pki.Role.EVIDENCE, ca, organization=org),
        pki.issue("Peer KEP TSA", pki.Role.TSA, ca, organization=org),
    )


@dataclasses.dataclass(frozen=True)
class World:
    us: Pki
    peer: PeerPki
    engine: AsyncEngine
    ledger: Ledger
    received: SignedEvidence  # the peer's RelayAcceptance, as the peer signed it


async def _peer_relay_acceptance(peer: PeerPki) -> SignedEvidence:
    """What the recipient's provider sends back when it accepts our relayed message (RB01)."""
    ev: Evidence = sample_evidence(
        evidence_id="20240502T101531Z.peer0001@peer.kep.tr",
        event=Reason.RB01.event,
        reason=Reason.RB01,
        details=Reason.RB01.label,
        event_time=NOW,
        issuer_name=PEER.name,
        issuer_domain=PEER.domain,
        recipients=tuple(Party(a) for a in RECIPIENTS),
        refers_to_recipient=2,
        message_id=MESSAGE_ID,
        external_provider=US,
    )
    return await peer.signer().sign(ev)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    us, peer = make_pki(tmp_path), make_peer()
    engine = await open_engine(f"sqlite+aiosqlite:///{tmp_path / 'kepmta.db'}")
    book = Ledger(engine)
    facts = MessageFacts(
        MESSAGE_ID,
        SENDER,
        RECIPIENTS,
        SUBJECT,
        "client-42@laptop.local",
        SUBMITTED,
        SUBMITTED,
        bytes(range(32)),
    )
    await book.transact(lambda w: save_facts(w, facts))
    issued = pki.issue_crl(us.provider_ca)
    crl = NewRecord(Kind.REVOCATION, record_id(issued), SUBMITTED, crl_der(issued))
    await book.transact(lambda w: w.append(crl))
    ours = EvidenceSigner(us.evidence, [us.provider_ca.cert], BuiltinTsa(us.tsa))
    accepted = await ours.sign(
        sample_evidence(
            evidence_id="ev-accept@hs01.kep.tr",
            event=Reason.RA01.event,
            reason=Reason.RA01,
            details=Reason.RA01.label,
            refers_to_recipient=None,
            message_id=MESSAGE_ID,
            event_time=NOW,
        )
    )
    await book.transact(lambda w: w.append(evidence_record(accepted)))
    received = await _peer_relay_acceptance(peer)
    record = received_record(received.der, from_xml(received.xml))
    await book.transact(lambda w: w.append(record))
    head = await book.head()
    assert head is not None
    sealed = await ours.sign_statement(statement(US.domain, head.seq, head.hash, NOW))
    checkpoint = NewRecord(Kind.CHECKPOINT, f"checkpoint.{head.seq}", NOW, sealed)
    await book.transact(lambda w: w.append(checkpoint))
    yield World(us, peer, engine, book, received)
    await engine.dispose()


def _other_ca() -> x509.Certificate:
    return pki.issue("Some Other KEP CA", pki.Role.CA).cert


def _our_trust(w: World) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    return [w.us.provider_ca.cert], [w.us.tsa_ca.cert]


def _peers(w: World, *anchors: x509.Certificate) -> dict[str, list[x509.Certificate]]:
    return {PEER.domain: list(anchors or (w.peer.ca.cert,))}


async def test_the_received_record_is_the_peers_evidence_byte_for_byte(world: World) -> None:
    (rec,) = [r async for r in world.ledger.walk((Kind.RECEIVED,))]
    assert rec.der == world.received.der  # never re-signed
    assert rec.xml == world.received.xml == cms.encapsulated_content(cms.load(world.received.der))
    assert (rec.evidence_id, rec.message_id, rec.event, rec.reason, rec.recipient) == (
        "20240502T101531Z.peer0001@peer.kep.tr",
        MESSAGE_ID,
        "RelayAcceptance",
        "RB01",
        2,
    )
    assert rec.stamped  # CAdES-B-T as the peer sent it
    # Found among the message's evidence, as every reader of the ledger finds evidence.
    assert rec.evidence_id in [r.evidence_id for r in await world.ledger.for_message(MESSAGE_ID)]


async def test_a_received_record_refuses_an_evidence_its_xml_does_not_say(world: World) -> None:
    other = dataclasses.replace(from_xml(world.received.xml), evidence_id="forged@peer.kep.tr")
    with pytest.raises(ValueError, match="is not what the received evidence's XML says"):
        received_record(world.received.der, other)
    detached = cms.sign(world.peer.evidence, content=world.received.xml, detached=True, chain=[])
    with pytest.raises(ValueError, match="XML attached"):
        received_record(bytes(detached.dump()), from_xml(world.received.xml))


async def test_the_audit_chains_it_and_checks_it_without_our_key(world: World) -> None:
    result = await audit(world.ledger, *_our_trust(world))
    assert result.ok, [str(p) for p in result.problems]
    assert result.records == 4 and result.checkpoints == 1
    assert any("1 received evidence of peer providers" in n for n in result.notes), result.notes


async def test_the_audit_finds_a_received_evidence_whose_signature_does_not_hold(world: World) -> None:
    # A peer evidence whose signed content was changed after signing, appended (and hashed) as is:
    # the chain holds, the signature by the certificate it carries does not.
    forged = world.received.der.replace(b"the relayed message", b"the relayed massage", 1)
    assert forged != world.received.der
    ev = from_xml(cms.encapsulated_content(cms.load(forged)) or b"")
    rec = await world.ledger.transact(lambda w: w.append(received_record(forged, ev)))
    result = await audit(world.ledger, *_our_trust(world))
    assert [p.seq for p in result.problems] == [rec.seq]
    assert f"received {ev.evidence_id}: {SIGNATURE} check fails" in str(result.problems[0])


async def test_renewal_leaves_received_evidence_alone_and_the_audit_still_holds(world: World) -> None:
    validation = [world.us.provider_ca.cert, world.us.tsa_ca.cert]
    done = await archive.renew(
        world.ledger, BuiltinTsa(world.us.tsa), [world.us.tsa_ca.cert], validation, deadline=None
    )
    assert (done.renewed, done.started, done.waiting) == (2, 2, 0)  # our acceptance and the checkpoint
    archived = [r.evidence_id async for r in world.ledger.walk((Kind.ARCHIVE,))]
    assert world.received.evidence.evidence_id not in archived and len(archived) == 2
    result = await audit(world.ledger, *_our_trust(world))
    assert result.ok, [str(p) for p in result.problems]


async def test_verify_evidence_checks_a_peers_evidence_against_the_peers_anchors() -> None:
    peer = make_peer()
    signed = await _peer_relay_acceptance(peer)
    good = verify_evidence(signed.der, [peer.ca.cert], [peer.ca.cert])
    assert good.ok, [c for c in good.checks if not c.ok]
    assert good.evidence is not None and good.evidence.issuer_domain == PEER.domain
    assert good.evidence.external_provider == US
    stranger = _other_ca()
    bad = verify_evidence(signed.der, [stranger], [stranger])
    assert not bad.ok and not bad.check(CHAIN).ok


async def test_show_lists_it_as_issued_by_the_peer(world: World) -> None:
    message = await timeline.load(world.engine, MESSAGE_ID)
    received = [e for e in message.entries if e.received]
    assert [e.evidence.event.value for e in message.entries] == ["SubmissionAcceptance", "RelayAcceptance"]
    assert len(received) == 1 and received[0].issuer == f"{PEER.name} ({PEER.domain})"
    checked = timeline.check(message, *_our_trust(world), peers=_peers(world))
    assert all(c.ok for c in checked), [[x for x in c.report.checks if not x.ok] for c in checked]
    text = timeline.render(message, checked)
    assert "Issuer" in text.splitlines()[text.splitlines().index("") + 1]
    row = next(line for line in text.splitlines() if "RelayAcceptance" in line and "#" in line)
    assert f"peer {PEER.domain}" in row and "✓ yes" in row
    assert f"issued by {PEER.name} ({PEER.domain})" in text
    assert "All 2 evidence verified." in text


async def test_show_never_passes_a_peers_evidence_without_the_peers_anchors(world: World) -> None:
    message = await timeline.load(world.engine, MESSAGE_ID)
    for peers in (None, _peers(world, world.us.provider_ca.cert), _peers(world, _other_ca())):
        checked = {
            c.entry.evidence.event.value: c for c in timeline.check(message, *_our_trust(world), peers=peers)
        }
        assert checked["SubmissionAcceptance"].ok
        relay = checked["RelayAcceptance"]
        assert not relay.ok and not relay.report.check(CHAIN).ok
        assert relay.report.check(SIGNATURE).ok  # what the evidence proves by itself still holds
        if peers is None:
            assert "no trust anchors of the peer provider peer.kep.tr" in relay.report.check(CHAIN).detail
            assert relay.report.timestamp_time is None


async def _export(w: World, anchors: dict[str, list[x509.Certificate]]) -> bytes:
    message = await timeline.load(w.engine, MESSAGE_ID)
    return bundle.build(
        message,
        provider_name=US.name,
        provider_ca=[w.us.provider_ca.cert],
        tsa_ca=[w.us.tsa_ca.cert],
        signer=w.us.evidence,
        chain=[w.us.provider_ca.cert],
        peer_anchors=anchors,
    )


def _verify(w: World, data: bytes) -> bundle.BundleReport:
    return bundle.verify(data, *_our_trust(w))


def _received_path(members: dict[str, bytes]) -> str:
    (path,) = [p for p in members if re.fullmatch(r"evidence/\d{6}-RelayAcceptance-r2\.p7m", p)]
    return path


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


async def test_export_carries_the_peers_evidence_and_certificates_and_verifies(
    world: World, tmp_path: Path
) -> None:
    data = await _export(world, _peers(world))
    members = _members(data)
    path = _received_path(members)
    assert members[path] == world.received.der
    assert members["peers/peer.kep.tr/ca.pem"] == _pem(world.peer.ca.cert)
    signers = x509.load_pem_x509_certificates(members["peers/peer.kep.tr/evidence-signer.pem"])
    assert world.peer.evidence.cert in signers
    assert world.peer.tsa.cert in x509.load_pem_x509_certificates(members["peers/peer.kep.tr/tsa.pem"])
    # Our own signer file holds only our certificates.
    assert world.peer.evidence.cert not in x509.load_pem_x509_certificates(
        members["certs/evidence-signer.pem"]
    )
    report = _verify(world, data)
    assert report.ok, bundle.describe(report)
    assert report.received == (path,)
    assert (
        f"{path}: issuer: issued by the peer provider peer.kep.tr, checked against peers/peer.kep.tr/ca.pem"
        in [f"{c.name}: {c.detail}" for c in report.checks]
    )
    assert f"issued by the peer provider {PEER.name} ({PEER.domain})" in bundle.describe(report)
    # `kepmta evidence verify FILE.zip` with our anchors only.
    (tmp_path / "b.zip").write_bytes(data)
    (tmp_path / "ca.pem").write_bytes(_pem(world.us.provider_ca.cert))
    (tmp_path / "tsa.pem").write_bytes(_pem(world.us.tsa_ca.cert))
    trust, tsa = pki.load_certs(tmp_path / "ca.pem"), pki.load_certs(tmp_path / "tsa.pem")
    assert verify_bundle(tmp_path / "b.zip", trust, tsa) == 0


async def test_the_readme_checks_the_peers_evidence_with_openssl_against_the_peers_ca(
    world: World, tmp_path: Path
) -> None:
    data = await _export(world, _peers(world))
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(folder)
    readme = (folder / "README.txt").read_text()
    stem = _received_path(_members(data))[len("evidence/") : -len(".p7m")]
    commands = [c for c in re.findall(r"^  (openssl [^\n]*)$", readme, re.M) if stem in c]
    assert len(commands) == 2 and all("-CAfile peers/peer.kep.tr/ca.pem" in c for c in commands)
    for command in commands:
        r = openssl(*shlex.split(command)[1:], cwd=folder)
        assert r.returncode == 0, f"{command}: {r.stderr}"
    assert (folder / f"{stem}.out").read_bytes() == world.received.xml


async def test_export_refuses_a_peers_evidence_without_the_peers_anchors(world: World) -> None:
    with pytest.raises(ValueError, match=r"peer provider peer\.kep\.tr, whose trust anchors"):
        await _export(world, {})


async def test_another_ca_in_place_of_the_peers_fails(world: World) -> None:
    stranger = _other_ca()
    # Replaced inside an exported bundle: the manifest no longer matches, and the evidence does
    # not chain to the CA now beside it.
    members = _members(await _export(world, _peers(world)))
    path = _received_path(members)
    members["peers/peer.kep.tr/ca.pem"] = _pem(stranger)
    report = _verify(world, _zip(members))
    assert not report.ok
    assert not next(c for c in report.checks if c.name == "manifest").ok
    evidence = dict(report.evidence)
    assert not evidence[path].ok and not evidence[path].check(CHAIN).ok
    assert all(r.ok for p, r in report.evidence if p != path)
    # Exported with the wrong CA to begin with (a properly signed bundle): still refused.
    report = _verify(world, await _export(world, _peers(world, stranger)))
    assert next(c for c in report.checks if c.name == "manifest-signature").ok
    assert not report.ok and not dict(report.evidence)[path].check(CHAIN).ok
    # Nor does our own CA vouch for the peer's evidence.
    report = _verify(world, await _export(world, _peers(world, world.us.provider_ca.cert)))
    assert not report.ok and not dict(report.evidence)[path].ok


async def test_a_tampered_received_evidence_in_the_bundle_fails(world: World) -> None:
    members = _members(await _export(world, _peers(world)))
    path = _received_path(members)
    members[path] = members[path].replace(b"the relayed message", b"the relayed massage", 1)
    report = _verify(world, _zip(members))
    assert not report.ok
    failed = {c.name for c in report.checks if not c.ok}
    assert {"manifest", "ledger"} <= failed
    assert not dict(report.evidence)[path].check(SIGNATURE).ok


async def test_a_missing_peer_ca_is_named(world: World) -> None:
    members = _members(await _export(world, _peers(world)))
    path = _received_path(members)
    del members["peers/peer.kep.tr/ca.pem"]
    report = _verify(world, _zip(members))
    issuer = next(c for c in report.checks if c.name == f"{path}: issuer")
    assert not issuer.ok and "peers/peer.kep.tr/ca.pem is missing" in issuer.detail
    assert not dict(report.evidence)[path].ok
