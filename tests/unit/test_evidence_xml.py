"""EN 319 522-3 XML: element order and namespaces, escaping, round trip, refusal of DTDs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from evidence_fixtures import sample_evidence
from hypothesis import given, settings
from hypothesis import strategies as st

from kepmta.evidence.model import Event, Evidence, Party, Provider, Reason
from kepmta.evidence.xml import from_xml, to_xml

TNS = "{http://uri.etsi.org/19522/v1#}"
EXT = "{http://uri.etsi.org/19532/v1#}"
DS = "{http://www.w3.org/2000/09/xmldsig#}"
SAML = "{urn:oasis:names:tc:SAML:2.0:assertion}"
TURKISH = "çğıİöşüÇĞÖŞÜâî"

_text_chars = st.characters(
    exclude_categories=("Cc", "Cs"), exclude_characters="\ufffe\uffff"
) | st.sampled_from(TURKISH + "<>&'\"]]>")
_token_chars = st.characters(
    exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters="<>@\ufffe\uffff"
) | st.sampled_from(TURKISH + "&.-_")
text = st.text(_text_chars, min_size=1, max_size=40)
token = st.text(_token_chars, min_size=1, max_size=30)
address = st.builds(lambda a, b: f"{a}@{b}", token, token)
party = st.builds(Party, address, st.none() | text)
times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@st.composite
def evidences(draw: st.DrawFn) -> Evidence:
    reason = draw(st.sampled_from(list(Reason)))
    event = reason.event
    recipients = tuple(draw(st.lists(party, min_size=1 if event.per_recipient else 0, max_size=4)))
    refers = draw(st.integers(1, len(recipients))) if event.per_recipient else None
    return Evidence(
        evidence_id=draw(token),
        event=event,
        reason=reason,
        details=draw(text),
        event_time=draw(times),
        issuer_name=draw(text),
        issuer_domain=draw(token),
        policy_ids=tuple(draw(st.lists(token, min_size=1, max_size=3))),
        sender=draw(party),
        sender_auth_time=draw(st.none() | times),
        sender_auth_method=draw(st.none() | text),
        recipients=recipients,
        refers_to_recipient=refers,
        message_id=draw(token),
        ua_message_id=draw(st.none() | token),
        submission_time=draw(times),
        digest_sha256=draw(st.none() | st.binary(min_size=32, max_size=32)),
        subject=draw(st.text(_text_chars, max_size=60)),
        message_type=draw(st.sampled_from(["standart", "eYazisma", "eTebligat"])),
        operator=draw(st.none() | party),
        external_provider=draw(st.none() | st.builds(Provider, text, token)),
    )


@settings(max_examples=300, deadline=None)
@given(evidences())
def test_round_trip(ev: Evidence) -> None:
    assert from_xml(to_xml(ev)) == ev


def test_root_children_follow_en_319_522_3_order() -> None:
    root = ET.fromstring(to_xml(sample_evidence()))
    assert root.tag == f"{TNS}Evidence"
    assert root.get("version") == "EN319522v1.1.1"
    assert [c.tag for c in root] == [
        f"{TNS}EvidenceIdentifier",
        f"{TNS}ERDSEventId",
        f"{TNS}EventReasons",
        "EventTime",
        f"{TNS}EvidenceIssuerPolicyID",
        f"{TNS}EvidenceIssuerDetails",
        f"{TNS}SenderDetails",
        f"{TNS}RecipientDetails",
        f"{TNS}RecipientDetails",
        f"{TNS}SubmissionTime",
        "EvidenceRefersToRecipient",
        f"{TNS}MessageIdentifier",
        f"{TNS}UserContentInfo",
        f"{TNS}Extensions",
    ]


PEER = Provider("Örnek KEP Hizmetleri A.Ş. <peer> & co", "peer.kep.tr")


def test_relay_evidence_names_the_other_provider_after_the_content_before_the_extensions() -> None:
    ev = sample_evidence(event=Event.RELAY_ACCEPTANCE, reason=Reason.RB01, external_provider=PEER)
    root = ET.fromstring(to_xml(ev))
    tags = [c.tag for c in root]
    # EN 319 522-3: M05 follows tns:UserContentInfo and precedes tns:Extensions.
    at = tags.index(f"{TNS}ExternalERDSDetails")
    assert tags[at - 1 : at + 2] == [f"{TNS}UserContentInfo", f"{TNS}ExternalERDSDetails", f"{TNS}Extensions"]
    external = root.find(f"{TNS}ExternalERDSDetails")
    assert external is not None
    attribute = external.find(f"{TNS}Identity/{SAML}Attribute")
    assert attribute is not None
    assert attribute.get("FriendlyName") == "LegalName"
    assert attribute.get("Name") == "http://eidas.europa.eu/attributes/legalperson/LegalName"
    assert attribute.findtext(f"{SAML}AttributeValue") == PEER.name
    ident = external.find("Identifier")
    assert ident is not None and (ident.get("IdentifierSchemeName"), ident.text) == ("dns", "peer.kep.tr")
    # Written exactly as the issuer is: the same attribute, the same identifier scheme.
    issuer = root.find(f"{TNS}EvidenceIssuerDetails")
    assert issuer is not None
    assert [(c.tag, c.attrib) for c in issuer.iter()][1:] == [(c.tag, c.attrib) for c in external.iter()][1:]
    assert from_xml(to_xml(ev)) == ev


def test_without_an_external_provider_the_xml_is_unchanged() -> None:
    ev = sample_evidence(event=Event.RELAY_ACCEPTANCE, reason=Reason.RB01)
    data = to_xml(ev)
    assert b"ExternalERDSDetails" not in data
    assert from_xml(data).external_provider is None
    assert to_xml(from_xml(data)) == data


def test_an_external_provider_without_a_dns_identifier_is_refused() -> None:
    ev = sample_evidence(event=Event.RELAY_ACCEPTANCE, reason=Reason.RB01, external_provider=PEER)
    data = to_xml(ev)
    tail = data.split(b"<tns:ExternalERDSDetails>", 1)[1]
    broken = data.replace(tail, tail.replace(b'IdentifierSchemeName="dns"', b'IdentifierSchemeName="uri"', 1))
    with pytest.raises(ValueError, match="ExternalERDSDetails Identifier is not a dns name"):
        from_xml(broken)


def test_values_as_published_samples_write_them() -> None:
    data = to_xml(sample_evidence())
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<tns:Evidence ')
    root = ET.fromstring(data)
    reason = root.find(f"{TNS}EventReasons/{TNS}EventReason")
    assert reason is not None
    assert reason.findtext("Code") == "http://uri.etsi.org/19522/EventReason/MessageConsignedToRecipient"
    assert [d.text for d in reason.findall("Details")] == [
        "RD01",
        "İleti alıcının posta kutusuna bırakıldı <tamam> & kaydedildi.",
    ]
    assert root.findtext("EventTime") == "2024-05-02T10:15:30Z"
    assert root.findtext("EvidenceRefersToRecipient") == "1"
    sender = root.find(f"{TNS}SenderDetails/Identifier")
    assert sender is not None
    assert (sender.get("IdentifierSchemeName"), sender.text) == ("mailto", "ayse.yilmaz@hs01.kep.tr")
    auth = f"{TNS}SenderDetails/AssuranceLevelsDetails/{TNS}AuthenticationDetails/AuthenticationTime"
    assert root.findtext(auth) == "2024-05-02T10:00:00Z"
    content = root.find(f"{TNS}UserContentInfo")
    assert content is not None
    assert content.findtext("AppLayerIdentifier") == "<client-42@laptop.local>"
    part = content.find(f"{TNS}PartsInfo/{TNS}PartInfo")
    assert part is not None
    assert part.findtext("Identifier") == "urn:oid:1.3.6.1.7"
    method = part.find(f"{DS}DigestMethod")
    assert method is not None and method.get("Algorithm") == "http://www.w3.org/2001/04/xmlenc#sha256"
    assert part.findtext(f"{DS}DigestValue") == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    subject = f"{TNS}Extensions/{TNS}Extension/{EXT}GeneralEvidenceInfo/{EXT}Subject"
    assert root.findtext(subject) == "Sözleşme & ödeme <ek>"
    # Turkish text travels as UTF-8, markup characters escaped.
    assert "Sözleşme &amp; ödeme &lt;ek&gt;".encode() in data


def test_relay_evidence_carries_relay_extension() -> None:
    ev = sample_evidence(event=Event.RELAY_FAILURE, reason=Reason.RB09, refers_to_recipient=2)
    root = ET.fromstring(to_xml(ev))
    path = f"{TNS}Extensions/{TNS}Extension/{EXT}RelayEvidenceInfo/{EXT}RelayEvidenceRefersTo"
    assert root.findtext(path) == "2"
    assert from_xml(to_xml(ev)) == ev


def test_submission_evidence_has_no_recipient_reference() -> None:
    ev = sample_evidence(event=Event.SUBMISSION_ACCEPTANCE, reason=Reason.RA01, refers_to_recipient=None)
    root = ET.fromstring(to_xml(ev))
    assert root.find("EvidenceRefersToRecipient") is None


@pytest.mark.parametrize(
    "doc",
    [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
        b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><x/>',
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x><x/>'.encode("utf-16"),
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x><x/>'.encode("utf-16-le"),
    ],
)
def test_dtds_are_refused(doc: bytes) -> None:
    with pytest.raises(ValueError, match=r"DTD|UTF-8"):
        from_xml(doc)


def test_dtd_refused_even_in_an_otherwise_valid_evidence() -> None:
    data = to_xml(sample_evidence())
    head, body = data.split(b"\n", 1)
    with pytest.raises(ValueError, match="DTD"):
        from_xml(head + b'\n<!DOCTYPE tns:Evidence [<!ENTITY s "x">]>\n' + body)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.replace(b"EN319522v1.1.1", b"EN319522v9"), "version"),
        (
            lambda d: d.replace(b"<Details>RD01</Details>", b"<Details>RA01</Details>"),
            "Code URI does not match",
        ),
        (lambda d: d.replace(b"<Details>RD01</Details>", b"<Details>ZZ99</Details>"), "unknown reason code"),
        (lambda d: d.replace(b"2024-05-02T10:15:30Z", b"2024-05-02 10:15:30"), "EventTime"),
        (lambda d: d.replace(b"<kep:PTTCode>40<", b"<kep:PTTCode>60<"), "PTT code"),
        (lambda d: d.replace(b"&lt;client-42@laptop.local&gt;", b"client-42@laptop.local"), "angle brackets"),
        (lambda d: d.replace(b"</tns:MessageIdentifier>", b""), "not well-formed"),
        (lambda d: d.replace(b"<EvidenceRefersToRecipient>1<", b"<EvidenceRefersToRecipient>9<"), "outside"),
    ],
)
def test_malformed_evidence_xml_is_refused(mutate: Callable[[bytes], bytes], message: str) -> None:
    data = to_xml(sample_evidence())
    bad = mutate(data)
    assert bad != data
    with pytest.raises(ValueError, match=message):
        from_xml(bad)


def test_non_utf8_is_refused() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        from_xml(b"<x>\xff</x>")
