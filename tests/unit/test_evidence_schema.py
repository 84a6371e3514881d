"""evidence/schema: every evidence kepmta can emit validates against the published XML Schema, and
the schema is strict enough to refuse what we never emit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import xmlschema
from evidence_fixtures import sample_evidence

from kepmta.evidence.model import Event, Evidence, Party, Provider, Reason
from kepmta.evidence.xml import to_xml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "evidence" / "schema" / "kepmta-evidence.xsd"


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema10:
    return xmlschema.XMLSchema10(str(SCHEMA))


def _for(reason: Reason, **changes: object) -> Evidence:
    fields: dict[str, object] = {
        "event": reason.event,
        "reason": reason,
        "refers_to_recipient": 2 if reason.event.per_recipient else None,
    }
    fields.update(changes)
    return sample_evidence(**fields)


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: f"{r.event.value}-{r.value}")
def test_every_event_and_reason_validates(schema: xmlschema.XMLSchema10, reason: Reason) -> None:
    schema.validate(to_xml(_for(reason)).decode())


def test_every_event_type_is_covered() -> None:
    assert {r.event for r in Reason} == set(Event)


@pytest.mark.parametrize(
    "changes",
    [
        {"ua_message_id": None, "digest_sha256": None},
        {"ua_message_id": None},
        {"digest_sha256": None},
        {"sender_auth_time": None, "sender_auth_method": None},
        {"sender_auth_time": None},
        {"sender_auth_method": None},
        {"operator": Party("operator.kisi@hs01.kep.tr", "Operatör Kişi")},
        {"operator": Party("operator.kisi@hs01.kep.tr")},
        {
            "sender": Party("ayse.yilmaz@hs01.kep.tr"),
            "recipients": (Party("a@b.kep.tr"), Party("c@d.kep.tr")),
        },
        {"subject": ""},
        {"message_type": "eTebligat"},
        {"policy_ids": ("urn:oid:1.2.3", "urn:oid:1.2.4")},
        {"external_provider": Provider("Örnek KEP Hizmetleri A.Ş.", "peer.kep.tr")},
    ],
    ids=str,
)
def test_optional_parts_validate_for_every_event(
    schema: xmlschema.XMLSchema10, changes: dict[str, object]
) -> None:
    for reason in (Reason.RA01, Reason.RA05, Reason.RB01, Reason.RB09, Reason.RD01, Reason.RD03, Reason.RE01):
        schema.validate(to_xml(_for(reason, **changes)).decode())


def test_a_rejection_with_no_recipient_yet_validates(schema: xmlschema.XMLSchema10) -> None:
    schema.validate(to_xml(_for(Reason.RA02, recipients=())).decode())


GOOD = to_xml(_for(Reason.RD01)).decode()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("http://uri.etsi.org/19522/Event/ContentConsignment", "http://uri.etsi.org/19522/Event/Other"),
        ('version="EN319522v1.1.1"', 'version="EN319522v9"'),
        ("<tns:EvidenceIdentifier>ev-0001@hs01.kep.tr</tns:EvidenceIdentifier>", ""),
        ("<EventTime>2024-05-02T10:15:30Z</EventTime>", "<EventTime>2024-05-02T13:15:30+03:00</EventTime>"),
        ("<EventTime>2024-05-02T10:15:30Z</EventTime>", "<EventTime>2024-05-02T10:15:30.5Z</EventTime>"),
        (
            "<EvidenceRefersToRecipient>2</EvidenceRefersToRecipient>",
            "<EvidenceRefersToRecipient>0</EvidenceRefersToRecipient>",
        ),
        ("<kep:PTTCode>40</kep:PTTCode>", "<kep:PTTCode>50</kep:PTTCode>"),
        ("<kep:MessageType>standart</kep:MessageType>", "<kep:MessageType>other</kep:MessageType>"),
        ('IdentifierSchemeName="mailto"', 'IdentifierSchemeName="tel"'),
        ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "AAECAw=="),
        ('isCritical="false"', 'isCritical="true"'),
        ("<tns:MessageIdentifier>", "<tns:Unknown>x</tns:Unknown><tns:MessageIdentifier>"),
    ],
    ids=lambda v: v[:40],
)
def test_what_we_never_emit_is_refused(schema: xmlschema.XMLSchema10, old: str, new: str) -> None:
    assert old in GOOD
    assert not schema.is_valid(GOOD.replace(old, new, 1))


def test_the_other_provider_is_checked_like_the_issuer(schema: xmlschema.XMLSchema10) -> None:
    peer = Provider("Örnek KEP Hizmetleri A.Ş.", "peer.kep.tr")
    good = to_xml(_for(Reason.RB01, external_provider=peer)).decode()
    schema.validate(good)
    block = re.search(r"\s*<tns:ExternalERDSDetails>.*?</tns:ExternalERDSDetails>", good, re.S)
    assert block
    # Before tns:UserContentInfo is out of the order EN 319 522-3 gives.
    moved = good.replace(block.group(0), "", 1).replace(
        "<tns:UserContentInfo>", block.group(0).strip() + "<tns:UserContentInfo>", 1
    )
    assert not schema.is_valid(moved)
    tail = good.split("<tns:ExternalERDSDetails>", 1)[1]
    assert not schema.is_valid(good.replace(tail, tail.replace('"dns"', '"mailto"', 1)))
    # The legal name is required, as in tns:EvidenceIssuerDetails.
    nameless = re.sub(r"<tns:Identity>.*?</tns:Identity>", "", tail, count=1, flags=re.S)
    assert not schema.is_valid(good.replace(tail, nameless))


def test_elements_out_of_order_are_refused(schema: xmlschema.XMLSchema10) -> None:
    submission = re.search(r"\s*<tns:SubmissionTime>[^<]*</tns:SubmissionTime>", GOOD)
    assert submission
    moved = GOOD.replace(submission.group(0), "", 1).replace(
        "</tns:Extensions>", "</tns:Extensions>" + submission.group(0), 1
    )
    assert not schema.is_valid(moved)


def test_committed_samples_validate(schema: xmlschema.XMLSchema10) -> None:
    samples = sorted((ROOT / "evidence" / "samples").glob("*.xml"))
    assert {p.stem for p in samples} >= {e.value for e in Event}
    for sample in samples:
        schema.validate(str(sample))


def test_schema_is_shipped_beside_the_bundle_code() -> None:
    from kepmta.evidence.bundle import SCHEMA_DIR

    assert (SCHEMA_DIR / SCHEMA.name).is_file()


def test_committed_samples_verify_with_openssl_against_the_committed_ca(tmp_path: Path) -> None:
    from evidence_fixtures import openssl

    from kepmta import pki
    from kepmta.evidence.verify import verify_evidence

    folder = ROOT / "evidence" / "samples"
    ca = folder / "provider-ca.pem"
    trust = pki.load_certs(ca)
    samples = sorted(folder.glob("*.p7m"))
    assert {p.stem for p in samples} == {e.value for e in Event}
    for sample in samples:
        out = tmp_path / f"{sample.stem}.out"
        # exactly the command evidence/PROFILE.md gives
        r = openssl("cms", "-verify", "-inform", "DER", "-in", sample, "-CAfile", ca, "-out", out)
        assert r.returncode == 0, f"{sample.name}: {r.stderr}"
        assert out.read_bytes() == sample.with_suffix(".xml").read_bytes()
        report = verify_evidence(sample.read_bytes(), trust, trust)
        assert report.ok, sample.name
        assert report.evidence is not None and report.evidence.event.value == sample.stem
