"""EN 319 522-3 evidence XML: writing our evidence and reading it back.

The element order, names and prefixes follow the published EN 319 522-3 samples (see
shared/EVIDENCE.md). Elements are written with literal prefixes and explicit xmlns declarations so
that the output does not depend on ElementTree's global prefix registry; reading is namespace-aware.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from kepmta.evidence.model import Event, Evidence, Party, Reason

VERSION = "EN319522v1.1.1"
NS = {
    "tns": "http://uri.etsi.org/19522/v1#",
    "ext": "http://uri.etsi.org/19532/v1#",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    # Our own extension (EN 319 522-3 allows non-critical extensions): KEP message type, PTT code
    # and the operator who acted for a legal entity.
    "kep": "urn:kepmta:evidence:v1",
}
SHA256_URI = "http://www.w3.org/2001/04/xmlenc#sha256"
SAML_URI_FORMAT = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"
LEGAL_NAME = "http://eidas.europa.eu/attributes/legalperson/LegalName"
# RFC 2798 displayName: our parties carry a display name, not the eIDAS split of given and family
# names, so we say exactly what it is rather than mislabel it.
DISPLAY_NAME = "urn:oid:2.16.840.1.113730.3.1.241"
ORIGINAL_PART_ID = "urn:oid:1.3.6.1.7"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _fmt_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME_FORMAT)


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


def to_xml(ev: Evidence) -> bytes:
    """The evidence as EN 319 522-3 XML, UTF-8 with an XML declaration."""
    root = ET.Element("tns:Evidence", {f"xmlns:{p}": uri for p, uri in NS.items()})
    root.set("version", VERSION)
    _sub(root, "tns:EvidenceIdentifier", ev.evidence_id)  # G01
    _sub(root, "tns:ERDSEventId", ev.event.uri)  # G03
    reason = _sub(_sub(root, "tns:EventReasons"), "tns:EventReason")  # G04
    _sub(reason, "Code", ev.reason.uri)
    _sub(reason, "Details", ev.reason.value)
    _sub(reason, "Details", ev.details)
    _sub(root, "EventTime", _fmt_time(ev.event_time))  # G05
    policies = _sub(root, "tns:EvidenceIssuerPolicyID")  # R01
    for policy in ev.policy_ids:
        _sub(policies, "PolicyID", policy)
    issuer = _sub(root, "tns:EvidenceIssuerDetails")  # R02
    _identity(issuer, "LegalName", LEGAL_NAME, ev.issuer_name)
    _sub(issuer, "Identifier", ev.issuer_domain, IdentifierSchemeName="dns")
    sender = _sub(root, "tns:SenderDetails")
    _party(sender, ev.sender)
    if ev.sender_auth_time is not None or ev.sender_auth_method is not None:
        auth = _sub(_sub(sender, "AssuranceLevelsDetails"), "tns:AuthenticationDetails")
        if ev.sender_auth_time is not None:
            _sub(auth, "AuthenticationTime", _fmt_time(ev.sender_auth_time))
        if ev.sender_auth_method is not None:
            _sub(auth, "AuthenticationMethod", ev.sender_auth_method)
    for recipient in ev.recipients:
        _party(_sub(root, "tns:RecipientDetails"), recipient)
    _sub(root, "tns:SubmissionTime", _fmt_time(ev.submission_time))  # M03
    if ev.refers_to_recipient is not None:
        _sub(root, "EvidenceRefersToRecipient", str(ev.refers_to_recipient))  # I09
    _sub(root, "tns:MessageIdentifier", ev.message_id)  # M01
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
    # Indentation only adds whitespace between elements, never inside a text value, so it changes
    # nothing a reader extracts while letting a person read the evidence.
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")


# --- reading -------------------------------------------------------------------------------------


def _q(name: str) -> str:
    """ElementTree's {uri}local form of a prefixed name; unprefixed names have no namespace."""
    prefix, _, local = name.rpartition(":")
    return f"{{{NS[prefix]}}}{local}" if prefix else local


def _find(parent: ET.Element, path: str) -> ET.Element:
    node = _find_opt(parent, path)
    if node is None:
        raise ValueError(f"evidence XML lacks {path}")
    return node


def _find_opt(parent: ET.Element, path: str) -> ET.Element | None:
    return parent.find("/".join(_q(p) for p in path.split("/")))


def _text(parent: ET.Element, path: str) -> str:
    return _find(parent, path).text or ""


def _parse_time(value: str, what: str) -> datetime:
    try:
        return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{what} is not a UTC time YYYY-MM-DDTHH:MM:SSZ: {value!r}") from exc


def _parse_int(value: str, what: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise ValueError(f"{what} is not a positive integer: {value!r}")
    return int(value)


def _read_party(node: ET.Element, what: str) -> Party:
    ident = _find(node, "Identifier")
    if ident.get("IdentifierSchemeName") != "mailto":
        raise ValueError(f"{what} Identifier is not a mailto address")
    name_node = _find_opt(node, "tns:Identity/saml:Attribute/saml:AttributeValue")
    name = None if name_node is None else (name_node.text or "")
    return Party(ident.text or "", name)


def _parse_root(data: bytes) -> ET.Element:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("evidence XML must be UTF-8") from exc
    # Refusing any DTD rules out entity expansion (billion laughs) and external entities; a NUL
    # would let a UTF-16 document slip past this textual check, so it is refused too.
    if "<!DOCTYPE" in text or "<!ENTITY" in text or "\x00" in text:
        raise ValueError("evidence XML must not contain a DTD or entity declarations")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"evidence XML is not well-formed: {exc}") from exc


def from_xml(data: bytes) -> Evidence:
    """Parse evidence XML as written by `to_xml`; raises ValueError on anything else."""
    root = _parse_root(data)
    if root.tag != _q("tns:Evidence"):
        raise ValueError(f"root element is {root.tag}, not tns:Evidence")
    if root.get("version") != VERSION:
        raise ValueError(f"evidence version is {root.get('version')!r}, not {VERSION}")
    event = Event.from_uri(_text(root, "tns:ERDSEventId"))
    reason_node = _find(root, "tns:EventReasons/tns:EventReason")
    details = reason_node.findall("Details")
    if len(details) != 2:
        raise ValueError("EventReason needs two Details: the reason code and a sentence")
    try:
        reason = Reason(details[0].text or "")
    except ValueError as exc:
        raise ValueError(f"unknown reason code {details[0].text!r}") from exc
    if _text(reason_node, "Code") != reason.uri:
        raise ValueError(f"reason Code URI does not match reason {reason.value}")
    issuer = _find(root, "tns:EvidenceIssuerDetails")
    sender_node = _find(root, "tns:SenderDetails")
    auth = _find_opt(sender_node, "AssuranceLevelsDetails/tns:AuthenticationDetails")
    auth_time = auth_method = None
    if auth is not None:
        time_node = _find_opt(auth, "AuthenticationTime")
        method_node = _find_opt(auth, "AuthenticationMethod")
        if time_node is not None:
            auth_time = _parse_time(time_node.text or "", "AuthenticationTime")
        if method_node is not None:
            auth_method = method_node.text or ""
    refers = _find_opt(root, "EvidenceRefersToRecipient")
    content = _find_opt(root, "tns:UserContentInfo")
    ua_id = digest = None
    if content is not None:
        app_id = _find_opt(content, "AppLayerIdentifier")
        if app_id is not None:
            raw = app_id.text or ""
            if not (raw.startswith("<") and raw.endswith(">")):
                raise ValueError("AppLayerIdentifier must be a Message-ID in angle brackets")
            ua_id = raw[1:-1]
        part = _find_opt(content, "tns:PartsInfo/tns:PartInfo")
        if part is not None:
            if _find(part, "ds:DigestMethod").get("Algorithm") != SHA256_URI:
                raise ValueError("only SHA-256 part digests are supported")
            try:
                digest = base64.b64decode(_text(part, "ds:DigestValue"), validate=True)
            except binascii.Error as exc:
                raise ValueError("DigestValue is not base64") from exc
    kep = _find(root, "tns:Extensions/tns:Extension/kep:KEPEvidenceInfo")
    operator_node = _find_opt(kep, "kep:Operator")
    ev = Evidence(
        evidence_id=_text(root, "tns:EvidenceIdentifier"),
        event=event,
        reason=reason,
        details=details[1].text or "",
        event_time=_parse_time(_text(root, "EventTime"), "EventTime"),
        issuer_name=_text(issuer, "tns:Identity/saml:Attribute/saml:AttributeValue"),
        issuer_domain=_text(issuer, "Identifier"),
        policy_ids=tuple(p.text or "" for p in _find(root, "tns:EvidenceIssuerPolicyID").findall("PolicyID")),
        sender=_read_party(sender_node, "sender"),
        sender_auth_time=auth_time,
        sender_auth_method=auth_method,
        recipients=tuple(_read_party(node, "recipient") for node in root.findall(_q("tns:RecipientDetails"))),
        refers_to_recipient=None
        if refers is None
        else _parse_int(refers.text or "", "EvidenceRefersToRecipient"),
        message_id=_text(root, "tns:MessageIdentifier"),
        ua_message_id=ua_id,
        submission_time=_parse_time(_text(root, "tns:SubmissionTime"), "SubmissionTime"),
        digest_sha256=digest,
        subject=_text(root, "tns:Extensions/tns:Extension/ext:GeneralEvidenceInfo/ext:Subject"),
        message_type=_text(kep, "kep:MessageType"),
        operator=None if operator_node is None else _read_party(operator_node, "operator"),
    )
    if _text(kep, "kep:PTTCode") != str(event.ptt_code):
        raise ValueError(f"PTT code does not match event {event.value}")
    return ev
