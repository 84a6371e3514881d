"""EN 319 522-3 evidence XML: writing our evidence and reading it back.

The element order, names and prefixes follow the published EN 319 522-3 samples (see
shared/EVIDENCE.md). Elements are written as text with literal prefixes and explicit xmlns
declarations, in the layout ElementTree gave them when evidence was first signed (the bytes must
not change for the same evidence); reading is namespace-aware ElementTree.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from kepmta.evidence.model import Event, Evidence, Party, Provider, Reason

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


def _escape(text: str) -> str:
    """Character data with `&`, `<` and `>` as references (XML 1.0 §2.4), as ElementTree writes it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attrs(**attrs: str) -> str:
    """Attributes in the order given, as ElementTree writes them for our constant values (which
    hold no tab, CR or LF, the characters it would also write as references)."""
    out = []
    for name, value in attrs.items():
        quoted = _escape(value).replace('"', "&quot;")
        out.append(f' {name}="{quoted}"')
    return "".join(out)


class _Writer:
    """XML text in the layout `ET.indent(space="  ")` gives an element tree, written directly:
    building an ElementTree only to serialise it cost three times as much.

    Indentation only adds whitespace between elements, never inside a text value, so it changes
    nothing a reader extracts while letting a person read the evidence.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._open: list[str] = []

    def leaf(self, tag: str, text: str | None = None, attrs: str = "") -> None:
        indent = "  " * len(self._open)
        if text:
            self.lines.append(f"{indent}<{tag}{attrs}>{_escape(text)}</{tag}>")
        else:
            # ElementTree's short form for an element with neither text nor children.
            self.lines.append(f"{indent}<{tag}{attrs} />")

    def open(self, tag: str, attrs: str = "") -> _Writer:
        """Start an element with children; used as `with w.open(tag):`, which ends it."""
        self.lines.append(f"{'  ' * len(self._open)}<{tag}{attrs}>")
        self._open.append(tag)
        return self

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        tag = self._open.pop()
        self.lines.append(f"{'  ' * len(self._open)}</{tag}>")


_ROOT_ATTRS = _attrs(**{f"xmlns:{p}": uri for p, uri in NS.items()}, version=VERSION)
_LEGAL_NAME_ATTRS = _attrs(FriendlyName="LegalName", Name=LEGAL_NAME, NameFormat=SAML_URI_FORMAT)
_DISPLAY_NAME_ATTRS = _attrs(FriendlyName="DisplayName", Name=DISPLAY_NAME, NameFormat=SAML_URI_FORMAT)
_DNS = _attrs(IdentifierSchemeName="dns")
_MAILTO = _attrs(IdentifierSchemeName="mailto")
_SHA256 = _attrs(Algorithm=SHA256_URI)
_NON_CRITICAL = _attrs(isCritical="false")
_RELAY_EVENTS = (Event.RELAY_ACCEPTANCE, Event.RELAY_REJECTION, Event.RELAY_FAILURE)


def _identity(w: _Writer, attrs: str, value: str) -> None:
    with w.open("tns:Identity"), w.open("saml:Attribute", attrs):
        w.leaf("saml:AttributeValue", value)


def _party(w: _Writer, party: Party) -> None:
    if party.name is not None:
        _identity(w, _DISPLAY_NAME_ATTRS, party.name)
    w.leaf("Identifier", party.address, _MAILTO)


def to_xml(ev: Evidence) -> bytes:
    """The evidence as EN 319 522-3 XML, UTF-8 with an XML declaration."""
    w = _Writer()
    with w.open("tns:Evidence", _ROOT_ATTRS):
        w.leaf("tns:EvidenceIdentifier", ev.evidence_id)  # G01
        w.leaf("tns:ERDSEventId", ev.event.uri)  # G03
        with w.open("tns:EventReasons"), w.open("tns:EventReason"):  # G04
            w.leaf("Code", ev.reason.uri)
            w.leaf("Details", ev.reason.value)
            w.leaf("Details", ev.details)
        w.leaf("EventTime", _fmt_time(ev.event_time))  # G05
        with w.open("tns:EvidenceIssuerPolicyID"):  # R01
            for policy in ev.policy_ids:
                w.leaf("PolicyID", policy)
        with w.open("tns:EvidenceIssuerDetails"):  # R02
            _identity(w, _LEGAL_NAME_ATTRS, ev.issuer_name)
            w.leaf("Identifier", ev.issuer_domain, _DNS)
        with w.open("tns:SenderDetails"):
            _party(w, ev.sender)
            if ev.sender_auth_time is not None or ev.sender_auth_method is not None:
                with w.open("AssuranceLevelsDetails"), w.open("tns:AuthenticationDetails"):
                    if ev.sender_auth_time is not None:
                        w.leaf("AuthenticationTime", _fmt_time(ev.sender_auth_time))
                    if ev.sender_auth_method is not None:
                        w.leaf("AuthenticationMethod", ev.sender_auth_method)
        for recipient in ev.recipients:
            with w.open("tns:RecipientDetails"):
                _party(w, recipient)
        w.leaf("tns:SubmissionTime", _fmt_time(ev.submission_time))  # M03
        if ev.refers_to_recipient is not None:
            w.leaf("EvidenceRefersToRecipient", str(ev.refers_to_recipient))  # I09
        w.leaf("tns:MessageIdentifier", ev.message_id)  # M01
        if ev.ua_message_id is not None or ev.digest_sha256 is not None:
            with w.open("tns:UserContentInfo"):
                if ev.ua_message_id is not None:
                    w.leaf("AppLayerIdentifier", f"<{ev.ua_message_id}>")
                if ev.digest_sha256 is not None:
                    w.leaf("ComposingParts", "1")
                    with w.open("tns:PartsInfo"), w.open("tns:PartInfo"):
                        w.leaf("Identifier", ORIGINAL_PART_ID)
                        w.leaf("ContentType", "message/rfc822")
                        w.leaf("ds:DigestMethod", None, _SHA256)
                        w.leaf("ds:DigestValue", base64.b64encode(ev.digest_sha256).decode("ascii"))
        if ev.external_provider is not None:
            with w.open("tns:ExternalERDSDetails"):  # M05, written as R02 writes the issuer
                _identity(w, _LEGAL_NAME_ATTRS, ev.external_provider.name)
                w.leaf("Identifier", ev.external_provider.domain, _DNS)
        with w.open("tns:Extensions"):
            with w.open("tns:Extension", _NON_CRITICAL):
                with w.open("ext:GeneralEvidenceInfo"):
                    w.leaf("ext:Subject", ev.subject)
                if ev.event in _RELAY_EVENTS:
                    with w.open("ext:RelayEvidenceInfo"):
                        w.leaf("ext:RelayEvidenceRefersTo", str(ev.refers_to_recipient))
            with w.open("tns:Extension", _NON_CRITICAL), w.open("kep:KEPEvidenceInfo"):
                w.leaf("kep:MessageType", ev.message_type)
                w.leaf("kep:PTTCode", str(ev.event.ptt_code))
                if ev.operator is not None:
                    with w.open("kep:Operator"):
                        _party(w, ev.operator)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + "\n".join(w.lines) + "\n").encode("utf-8")


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


def _read_provider(node: ET.Element) -> Provider:
    ident = _find(node, "Identifier")
    if ident.get("IdentifierSchemeName") != "dns":
        raise ValueError("ExternalERDSDetails Identifier is not a dns name")
    return Provider(_text(node, "tns:Identity/saml:Attribute/saml:AttributeValue"), ident.text or "")


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
    except (ET.ParseError, LookupError) as exc:  # LookupError: an XML declaration's unknown encoding
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
    external = _find_opt(root, "tns:ExternalERDSDetails")
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
        external_provider=None if external is None else _read_provider(external),
    )
    if _text(kep, "kep:PTTCode") != str(event.ptt_code):
        raise ValueError(f"PTT code does not match event {event.value}")
    return ev
