"""The faster evidence code against what it replaced: text and token validation against the
per-character checks it had, and the hand-written XML against the ElementTree serialisation whose
bytes earlier evidence was signed over.

The replaced implementations are kept here, and only here, as the reference.
"""

from __future__ import annotations

import base64
import hashlib
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from evidence_fixtures import sample_evidence
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_evidence_xml import evidences

from kepmta.evidence import model
from kepmta.evidence.model import Event, Evidence, Party, Reason
from kepmta.evidence.xml import (
    DISPLAY_NAME,
    LEGAL_NAME,
    NS,
    ORIGINAL_PART_ID,
    SAML_URI_FORMAT,
    SHA256_URI,
    VERSION,
    from_xml,
    to_xml,
)

# --- validation ------------------------------------------------------------------------------------


def reference_check_text(field: str, value: str, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, not {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{field} must not be empty")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in "\ufffe\uffff":
            raise ValueError(f"{field} contains the control or non-character U+{ord(ch):04X}")


def reference_check_token(field: str, value: str) -> None:
    reference_check_text(field, value)
    if any(ch.isspace() or ch in "<>" for ch in value):
        raise ValueError(f"{field} must not contain whitespace or angle brackets: {value!r}")


def _outcome(check: Callable[..., None], *args: object, **kwargs: object) -> str | None:
    """None when `check` accepts, else its error message (which names the first bad character)."""
    try:
        check(*args, **kwargs)
    except ValueError as exc:
        return str(exc)
    return None


# Characters at the edges of what is refused, and the whitespace str.isspace() knows beyond ASCII.
_EDGES = (
    "\x00\t\n\r\x1f \x7f\x80\x85\x9f\xa0\u1680\u2000\u200b\u2028\u2029\u202f\u3000\ufeff\ufffd\ufffe\uffff<>&"
)
_any_char = st.one_of(
    st.characters(),
    st.integers(0, 0x10FFFF).map(chr),  # every code point, lone surrogates included
    st.sampled_from(_EDGES + "\ud800\udbff\udc00\udfff\U0001f600\U0010ffff"),
)


@settings(max_examples=2000, deadline=None)
@given(st.text(_any_char, max_size=30), st.booleans())
@example("", False)
@example("", True)
@example("a\u2028b", False)
@example("\x85", False)
@example("a\tb<c", False)
def test_text_and_token_checks_accept_and_refuse_what_they_did(value: str, allow_empty: bool) -> None:
    assert _outcome(model._check_text, "f", value, allow_empty=allow_empty) == _outcome(
        reference_check_text, "f", value, allow_empty=allow_empty
    )
    assert _outcome(model._check_token, "f", value) == _outcome(reference_check_token, "f", value)


@pytest.mark.slow
def test_every_code_point_is_judged_as_before() -> None:
    # Both checks refuse a string exactly when one of its characters is refused, so agreement on
    # every single character is agreement on every string.
    text_differs = []
    token_differs = []
    for cp in range(0x110000):
        ch = chr(cp)
        if (model._FORBIDDEN_CHAR.search(ch) is None) != (_outcome(reference_check_text, "f", ch) is None):
            text_differs.append(f"U+{cp:04X}")
        if (model._TOKEN_BREAK.search(ch) is not None) != (ch.isspace() or ch in "<>"):
            token_differs.append(f"U+{cp:04X}")
    assert text_differs == []
    assert token_differs == []


def test_non_strings_are_still_refused() -> None:
    for check in (model._check_text, reference_check_text):
        with pytest.raises(ValueError, match="must be a string, not bytes"):
            check("f", b"abc")  # type: ignore[arg-type]


# --- XML -------------------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    child = ET.SubElement(parent, tag, attrs)
    if text is not None:
        child.text = text
    return child


def _identity(parent: ET.Element, friendly: str, name: str, value: str) -> None:
    identity = _sub(parent, "tns:Identity")
    attr = _sub(identity, "saml:Attribute", FriendlyName=friendly, Name=name, NameFormat=SAML_URI_FORMAT)
    _sub(attr, "saml:AttributeValue", value)


def _party(parent: ET.Element, party: Party) -> None:
    if party.name is not None:
        _identity(parent, "DisplayName", DISPLAY_NAME, party.name)
    _sub(parent, "Identifier", party.address, IdentifierSchemeName="mailto")


def reference_to_xml(ev: Evidence) -> bytes:
    """to_xml as it was, building an ElementTree and serialising it indented."""

    def fmt(value: datetime) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    root = ET.Element("tns:Evidence", {f"xmlns:{p}": uri for p, uri in NS.items()})
    root.set("version", VERSION)
    _sub(root, "tns:EvidenceIdentifier", ev.evidence_id)
    _sub(root, "tns:ERDSEventId", ev.event.uri)
    reason = _sub(_sub(root, "tns:EventReasons"), "tns:EventReason")
    _sub(reason, "Code", ev.reason.uri)
    _sub(reason, "Details", ev.reason.value)
    _sub(reason, "Details", ev.details)
    _sub(root, "EventTime", fmt(ev.event_time))
    policies = _sub(root, "tns:EvidenceIssuerPolicyID")
    for policy in ev.policy_ids:
        _sub(policies, "PolicyID", policy)
    issuer = _sub(root, "tns:EvidenceIssuerDetails")
    _identity(issuer, "LegalName", LEGAL_NAME, ev.issuer_name)
    _sub(issuer, "Identifier", ev.issuer_domain, IdentifierSchemeName="dns")
    sender = _sub(root, "tns:SenderDetails")
    _party(sender, ev.sender)
    if ev.sender_auth_time is not None or ev.sender_auth_method is not None:
        auth = _sub(_sub(sender, "AssuranceLevelsDetails"), "tns:AuthenticationDetails")
        if ev.sender_auth_time is not None:
            _sub(auth, "AuthenticationTime", fmt(ev.sender_auth_time))
        if ev.sender_auth_method is not None:
            _sub(auth, "AuthenticationMethod", ev.sender_auth_method)
    for recipient in ev.recipients:
        _party(_sub(root, "tns:RecipientDetails"), recipient)
    _sub(root, "tns:SubmissionTime", fmt(ev.submission_time))
    if ev.refers_to_recipient is not None:
        _sub(root, "EvidenceRefersToRecipient", str(ev.refers_to_recipient))
    _sub(root, "tns:MessageIdentifier", ev.message_id)
    if ev.ua_message_id is not None or ev.digest_sha256 is not None:
        content = _sub(root, "tns:UserContentInfo")
        if ev.ua_message_id is not None:
            _sub(content, "AppLayerIdentifier", f"<{ev.ua_message_id}>")
        if ev.digest_sha256 is not None:
            _sub(content, "ComposingParts", "1")
            part = _sub(_sub(content, "tns:PartsInfo"), "tns:PartInfo")
            _sub(part, "Identifier", ORIGINAL_PART_ID)
            _sub(part, "ContentType", "message/rfc822")
            _sub(part, "ds:DigestMethod", Algorithm=SHA256_URI)
            _sub(part, "ds:DigestValue", base64.b64encode(ev.digest_sha256).decode("ascii"))
    if ev.external_provider is not None:
        external = _sub(root, "tns:ExternalERDSDetails")
        _identity(external, "LegalName", LEGAL_NAME, ev.external_provider.name)
        _sub(external, "Identifier", ev.external_provider.domain, IdentifierSchemeName="dns")
    extensions = _sub(root, "tns:Extensions")
    general = _sub(extensions, "tns:Extension", isCritical="false")
    _sub(_sub(general, "ext:GeneralEvidenceInfo"), "ext:Subject", ev.subject)
    if ev.event in (Event.RELAY_ACCEPTANCE, Event.RELAY_REJECTION, Event.RELAY_FAILURE):
        relay = _sub(general, "ext:RelayEvidenceInfo")
        _sub(relay, "ext:RelayEvidenceRefersTo", str(ev.refers_to_recipient))
    kep = _sub(_sub(extensions, "tns:Extension", isCritical="false"), "kep:KEPEvidenceInfo")
    _sub(kep, "kep:MessageType", ev.message_type)
    _sub(kep, "kep:PTTCode", str(ev.event.ptt_code))
    if ev.operator is not None:
        _party(_sub(kep, "kep:Operator"), ev.operator)
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")


def _variants() -> dict[str, Evidence]:
    out = {
        r.value: sample_evidence(
            event=r.event, reason=r, refers_to_recipient=1 if r.event.per_recipient else None
        )
        for r in Reason
    }
    out["bare"] = sample_evidence(
        sender=Party("a@b"),
        recipients=(Party("c@d"),),
        sender_auth_time=None,
        sender_auth_method=None,
        ua_message_id=None,
        digest_sha256=None,
        subject="",
        message_type="eTebligat",
        operator=Party("op@hs01.kep.tr", "Operatör \"Bir\" & 'İki'"),
    )
    out["relay"] = sample_evidence(
        event=Reason.RB09.event,
        reason=Reason.RB09,
        refers_to_recipient=2,
        sender_auth_time=None,
        policy_ids=("p1", "p2&amp;"),
        operator=Party("x@y"),
        message_type="eYazisma",
    )
    return out


# SHA-256 of the XML the ElementTree implementation wrote for each variant, recorded before it was
# replaced: pins the reference above as well as the code under test.
SIGNED_BEFORE = {
    "RA01": "55fe60cc729b73ebc2e7ac9eb99e6b5f66528b0b834d755723e36bbf5de56506",
    "RA02": "fe98fdb7fefbd2a3fcffe8c7b9e08be39df3c59a110ddecdaed5a3eebf6881ce",
    "RA03": "db30b34504381e4dd6adb4432063c09726483b79e550e134812e109fb47fa2f5",
    "RA04": "16c1a8b87efe6b586014641d13aa0757a0bb58b6a0b8173c8a82d266b309b6e4",
    "RA05": "b0657b126ee69cd118fc435790638728109ff1fce1d11824abcde9d050f6c737",
    "RB01": "e4741e835e1b1e6d8e2db86353c6343c73a28f9ab75d458c4b44909574cb7231",
    "RB02": "9ffd63de207b9e8f05e2d08ce6e3e9988dcd3b7d012c806db30d0c2b47d06779",
    "RB03": "7f3e15b1ce2383e8a9c646662554efad7ea80b1f4ee9512f9f5a2c9033a9ab29",
    "RB04": "dd6dcb747736de3645bbf98825336788d55537d2ab84a2f60c61d7d6b5288f25",
    "RB05": "b239db851793d7b7959f58aa6b7b3a6e0b6853a7bb08c5762245bd88586668ab",
    "RB06": "22c3919af0c15b33c7e1c14fded5e3845ec1c23b51067f1d59e2a2080b41b5ed",
    "RB07": "5c0f7c507dd8f8fb578423d7319ac77c4c90eb547a8c0a45dd86c991422a3e33",
    "RB08": "c59d220c0c134efe58170ac064ce5c1cf3061b0d71327a45893ba28cd06edc1b",
    "RB09": "487940ebc753c381d3ea706b57de8668f5a806ac4c17223931491d6c71247ddd",
    "RB10": "ad358e7614467c9396a762bb6470c59979eaad9ca4191926bdb20eebe84d14f6",
    "RD01": "82d14f08946623c01d9c9efbe9e3d3c11805c12ba3a46d863aaf43e18e72b533",
    "RD02": "3fcbf08a017d4246a2567e5cb3166264f65c3fcc231a51ca41aade8dca85ec75",
    "RD03": "ce85040e19b0ace122e6f04cf6f14f79285e4928513c2dffce2a6418bc9f8e07",
    "RD04": "b5dbd90e679740d886248ab36aa47a7cce538831be0755d1a120216e3e9177eb",
    "RD05": "9210f632201700608785a1ef4697ea29b3a79dd54b8724b5fa181ab2f0f5442e",
    "RD06": "0f1d1580f9ba2b88c7acaa09fed736b09eed6de946d22ce61795671442b67999",
    "RE01": "761786cde67367c38f6c9db7e81675dd76b0632aebbaa05c9fbcc82cefb67bae",
    "bare": "38ce28f019b91c414c6032f0ccb17451cb5f5c1120d4ec5a3c7d9dc60a036219",
    "relay": "e5ca362ac45b38544d1afe2b0a9e302e8d85498eace92ef2587be15a5b305fdf",
}


@pytest.mark.parametrize("name", sorted(SIGNED_BEFORE))
def test_xml_bytes_are_those_signed_before(name: str) -> None:
    ev = _variants()[name]
    assert to_xml(ev) == reference_to_xml(ev)
    assert hashlib.sha256(to_xml(ev)).hexdigest() == SIGNED_BEFORE[name]


@settings(max_examples=500, deadline=None)
@given(evidences())
def test_xml_bytes_equal_the_element_tree_serialisation(ev: Evidence) -> None:
    assert to_xml(ev) == reference_to_xml(ev)


def test_committed_samples_are_written_again_byte_for_byte() -> None:
    samples = sorted((Path(__file__).resolve().parents[2] / "evidence" / "samples").glob("*.xml"))
    assert len(samples) == len(Event)
    for sample in samples:
        data = sample.read_bytes()
        assert to_xml(from_xml(data)) == data, sample.name
