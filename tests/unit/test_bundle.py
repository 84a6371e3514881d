"""Evidence bundles: built from a message's ledger records, verified offline, tampering detected."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
import shlex
import subprocess
import zipfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from evidence_fixtures import Pki, make_pki, openssl, sample_evidence

from kepmta.db.engine import open_engine
from kepmta.events import MessageFacts, save_facts
from kepmta.evidence import bundle, timeline
from kepmta.evidence.checkpoint import statement
from kepmta.evidence.ledger import Kind, Ledger, NewRecord, evidence_record
from kepmta.evidence.model import Evidence, Reason
from kepmta.evidence.signer import EvidenceSigner
from kepmta.evidence.timeline import MessageEvidence
from kepmta.evidence.tsa import BuiltinTsa

SUBMITTED = dt.datetime(2024, 5, 2, 10, 15, 0, tzinfo=dt.UTC)
DIGEST = bytes(range(32))
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
MESSAGE_ID = "20240502101530.abc123@hs01.kep.tr"
OTHER_ID = "20240502101531.def456@hs01.kep.tr"
SENDER = "ayse.yilmaz@hs01.kep.tr"
RECIPIENTS = ("mehmet.ozturk@hs01.kep.tr", "info@ornek.kep.tr")
SUBJECT = "Sözleşme & ödeme <ek>"


def _crl(p: Pki, *revoked: int) -> bytes:
    """A CRL of the provider CA, in force now, listing the `revoked` serial numbers."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(p.provider_ca.cert.subject)
        .last_update(now - dt.timedelta(hours=1))
        .next_update(now + dt.timedelta(days=7))
    )
    for serial in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=30))
        )
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(p.provider_ca.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


async def _message(
    p: Pki, db: Path, *, message_id: str = MESSAGE_ID, crl: bytes | None = None
) -> MessageEvidence:
    """A real ledger in SQLite holding the message's evidence, interleaved with another message's
    records, a CRL before them and a checkpoint after; read back as `kepmta evidence` reads it."""
    signer = EvidenceSigner(p.evidence, [p.provider_ca.cert], BuiltinTsa(p.tsa))
    engine = await open_engine(f"sqlite+aiosqlite:///{db}")
    book = Ledger(engine)
    try:
        for mid in (message_id, OTHER_ID):
            facts = MessageFacts(
                mid, SENDER, RECIPIENTS, SUBJECT, "client-42@laptop.local", SUBMITTED, SUBMITTED, DIGEST
            )
            await book.transact(lambda w, facts=facts: save_facts(w, facts))
        revocation = NewRecord(Kind.REVOCATION, "crl-1", SUBMITTED, crl or _crl(p))
        await book.transact(lambda w: w.append(revocation))
        steps: list[tuple[Reason, int | None]] = [(Reason.RA01, None), (Reason.RD01, 1), (Reason.RD04, 2)]
        steps.append((Reason.RE01, 1))
        for i, (reason, rcpt) in enumerate(steps):
            for mid in (message_id, OTHER_ID):
                ev: Evidence = sample_evidence(
                    evidence_id=f"ev-{i}-{mid}",
                    event=reason.event,
                    reason=reason,
                    details=reason.label,
                    refers_to_recipient=rcpt,
                    message_id=mid,
                    event_time=NOW + dt.timedelta(seconds=i),
                )
                signed = await signer.sign(ev)
                await book.transact(lambda w, signed=signed: w.append(evidence_record(signed)))
        head = await book.head()
        assert head is not None
        sealed = await signer.sign_statement(statement("hs01.kep.tr", head.seq, head.hash, NOW))
        checkpoint = NewRecord(Kind.CHECKPOINT, f"checkpoint.{head.seq}", NOW, sealed)
        await book.transact(lambda w: w.append(checkpoint))
        return await timeline.load(engine, message_id)
    finally:
        await engine.dispose()


def _build(p: Pki, message: MessageEvidence, **extra: object) -> bytes:
    return bundle.build(
        message,
        provider_name="Test KEP Hizmet Sağlayıcı A.Ş.",
        provider_ca=[p.provider_ca.cert],
        tsa_ca=[p.tsa_ca.cert],
        signer=p.evidence,
        chain=[p.provider_ca.cert],
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def made(tmp_path: Path) -> tuple[Pki, MessageEvidence, bytes]:
    p = make_pki(tmp_path)
    message = await _message(p, tmp_path / "kepmta.db")
    return p, message, _build(p, message, extras={"extra/note.txt": b"operator note"})


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def _verify(p: Pki, data: bytes) -> bundle.BundleReport:
    return bundle.verify(data, [p.provider_ca.cert], [p.tsa_ca.cert])


def test_a_fresh_bundle_verifies(made: tuple[Pki, MessageEvidence, bytes]) -> None:
    p, message, data = made
    report = _verify(p, data)
    assert report.ok, bundle.describe(report)
    assert report.message_id == message.message_id
    checks = {c.name: c for c in report.checks}
    assert "sealing the chain up to seq 9" in checks["checkpoint 10"].detail
    assert "chain seq 2–10 unbroken, sealed by checkpoint seq 10" in checks["ledger"].detail
    assert len(report.evidence) == 4
    text = bundle.describe(report)
    assert text.endswith("Result: VALID")
    assert "ContentConsignmentFailure (41)" in text and "ContentHandover (60)" in text


def test_bundle_holds_everything_about_the_message(made: tuple[Pki, MessageEvidence, bytes]) -> None:
    p, message, data = made
    members = _members(data)
    for e in message.entries:
        assert members[f"evidence/{e.name}.p7m"] == e.der
        assert members[f"evidence/{e.name}.xml"] == e.xml
        assert f"timestamps/{e.name}.tst" in members
    facts = json.loads(members["message.json"])
    assert facts["original_sha256_hex"] == DIGEST.hex()
    assert facts["recipients"] == list(message.recipients)
    book = json.loads(members["ledger.json"])
    records = book["records"]
    # the CRL in force (seq 1), the four evidence (every other record), the checkpoint after them
    assert [(r["seq"], r["kind"]) for r in records] == [
        (1, "revocation"),
        (2, "evidence"),
        (4, "evidence"),
        (6, "evidence"),
        (8, "evidence"),
        (10, "checkpoint"),
    ]
    assert [r.get("ptt_code") for r in records] == [None, 10, 40, 41, 60, None]
    assert [r["prev_hash"] for r in records[1:5]] == [e.record.prev_hash.hex() for e in message.entries]
    assert [link["seq"] for link in book["chain"]] == list(range(2, 11))
    assert (
        x509.load_der_x509_crl(members["revocation/000001-revocation.crl"]).issuer
        == p.provider_ca.cert.subject
    )
    assert members["ledger/000010-checkpoint.der"].startswith(b"\x30")
    assert members["extra/note.txt"] == b"operator note"
    assert b"BEGIN CERTIFICATE" in members["certs/provider-ca.pem"]
    assert b"BEGIN CERTIFICATE" in members["certs/tsa-ca.pem"]
    assert "openssl cms -verify" in members["README.txt"].decode()
    listed = {m["path"] for m in json.loads(members["manifest.json"])["members"]}
    assert listed == set(members) - {"manifest.json", "manifest.json.p7s"}


def test_changing_any_member_is_detected(made: tuple[Pki, MessageEvidence, bytes]) -> None:
    p, _, data = made
    members = _members(data)
    assert len(members) > 15
    undetected = []
    for name, content in members.items():
        changed = bytearray(content)
        changed[len(changed) // 2] ^= 0x01
        report = _verify(p, _zip({**members, name: bytes(changed)}))
        if report.ok:
            undetected.append(name)
    assert undetected == []


def test_removing_or_adding_a_member_is_detected(made: tuple[Pki, MessageEvidence, bytes]) -> None:
    p, _, data = made
    members = _members(data)
    for name in members:
        assert not _verify(p, _zip({k: v for k, v in members.items() if k != name})).ok, name
    added = _verify(p, _zip({**members, "evidence/extra.txt": b"hello"}))
    assert not added.ok
    assert "evidence/extra.txt is not in the manifest" in bundle.describe(added)


def test_a_rewritten_manifest_breaks_its_signature(made: tuple[Pki, MessageEvidence, bytes]) -> None:
    """Whoever changes a member and fixes up the hashes still cannot sign the new manifest."""
    p, message, data = made
    members = _members(data)
    name = f"evidence/{message.entries[1].name}.xml"
    members[name] = members[name].replace(b"RD01", b"RD02")
    manifest = json.loads(members["manifest.json"])
    members["SHA256SUMS"] = "".join(
        f"{bundle._sha256(members[m['path']])}  {m['path']}\n"
        for m in manifest["members"]
        if m["path"] != "SHA256SUMS"
    ).encode()
    for m in manifest["members"]:
        m["sha256"] = bundle._sha256(members[m["path"]])
        m["size"] = len(members[m["path"]])
    members["manifest.json"] = json.dumps(manifest).encode()
    report = _verify(p, _zip(members))
    checks = {c.name: c for c in report.checks}
    assert checks["manifest"].ok
    assert not checks["manifest-signature"].ok
    assert not checks[f"evidence/{message.entries[1].name}.p7m: consistency"].ok
    assert not report.ok


def test_an_evidence_of_another_message_is_refused(tmp_path: Path) -> None:
    import asyncio

    p = make_pki(tmp_path)
    mine = asyncio.run(_message(p, tmp_path / "a.db"))
    theirs = asyncio.run(_message(p, tmp_path / "b.db", message_id="other@hs01.kep.tr"))
    mixed = dataclasses.replace(mine, entries=(*mine.entries[:3], theirs.entries[3]), records=(), chain=())
    report = _verify(p, _build(p, mixed))
    assert not report.ok
    assert "is about <other@hs01.kep.tr>, not this message" in bundle.describe(report)


def test_a_revoked_signer_is_reported(tmp_path: Path) -> None:
    import asyncio

    p = make_pki(tmp_path)
    message = asyncio.run(_message(p, tmp_path / "k.db", crl=_crl(p, p.evidence.cert.serial_number)))
    report = _verify(p, _build(p, message))
    checks = {c.name: c for c in report.checks}
    assert not checks["revocation"].ok and "was revoked" in checks["revocation"].detail
    assert not report.ok


def test_untrusted_provider_fails(made: tuple[Pki, MessageEvidence, bytes]) -> None:
    p, _, data = made
    report = bundle.verify(data, [p.tsa_ca.cert], [p.tsa_ca.cert])
    assert not report.ok
    assert not {c.name: c for c in report.checks}["manifest-signature"].ok


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ({"../evil": b"x"}, "unsafe member name"),
        ({"/etc/passwd": b"x"}, "unsafe member name"),
        ({"a/../../b": b"x"}, "unsafe member name"),
    ],
)
def test_unsafe_zips_are_refused(tmp_path: Path, members: dict[str, bytes], needle: str) -> None:
    p = make_pki(tmp_path)
    report = _verify(p, _zip(members))
    assert not report.ok and needle in report.checks[0].detail


def test_not_a_zip(tmp_path: Path) -> None:
    p = make_pki(tmp_path)
    report = _verify(p, b"PK\x03\x04 but nothing more")
    assert not report.ok and report.checks[0].name == "zip"


def test_duplicate_member_names_are_refused(made: tuple[Pki, MessageEvidence, bytes]) -> None:
    p, _, data = made
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a") as zf, pytest.warns(UserWarning):
        zf.writestr("message.json", b"{}")
    report = _verify(p, out.getvalue())
    assert not report.ok and "same name" in report.checks[0].detail


def test_readme_commands_check_the_bundle_with_openssl_alone(
    made: tuple[Pki, MessageEvidence, bytes], tmp_path: Path
) -> None:
    _, _, data = made
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(folder)
    readme = (folder / "README.txt").read_text()
    # Every openssl command the README gives, continuation lines joined, run as written.
    commands = re.findall(r"^  (openssl (?:[^\n]*\\\n)*[^\n]*)$", readme, re.M)
    commands = [c.replace("\\\n", " ") for c in commands if " -verify " in c]
    assert sum("cms -verify" in c for c in commands) == 5 and sum("ts -verify" in c for c in commands) == 4
    for command in commands:
        args = shlex.split(command)
        r = openssl(*args[1:], cwd=folder)
        assert r.returncode == 0, f"{command}: {r.stderr}"
        assert "Verification successful" in r.stderr + r.stdout or "Verification: OK" in r.stdout
    for stem in re.findall(r"^  cmp (\S+)\.out ", readme, re.M):
        assert (folder / f"{stem}.out").read_bytes() == (folder / f"evidence/{stem}.xml").read_bytes()
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
