"""Evidence bundles: everything about one message in one ZIP file, checkable offline, by hand too.

A bundle holds each evidence (`.p7m` and its readable `.xml`, and once renewed its RFC 4998
evidence record `.ers`), each signature time-stamp token, the certificates, the ledger records with
their chain hashes, the message facts, any revocation data, and a manifest of every member's
SHA-256. The manifest is signed (CMS, detached) with the provider's transaction certificate, so
changing, adding or removing any member is detected, and a README lists the `openssl` commands
that check each piece without kepmta.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import json
import posixpath
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kepmta.addresses import is_domain
from kepmta.evidence.checkpoint import read_statement
from kepmta.evidence.ledger import (
    EVIDENCE_VERSIONS,
    Kind,
    LedgerRecord,
    NewRecord,
    chain_hash,
    content_digest,
)
from kepmta.evidence.revocation import check_not_revoked, load_crl
from kepmta.evidence.timeline import MessageEvidence
from kepmta.evidence.verify import CONTENT, Check, Report, verify_evidence
from kepmta.pki import KeyPair
from kepmta.smime import cms

FORMAT = "kepmta-evidence-bundle/1"
MANIFEST = "manifest.json"
MANIFEST_SIGNATURE = "manifest.json.p7s"
CHECKSUMS = "SHA256SUMS"
README = "README.txt"
MESSAGE = "message.json"
LEDGER = "ledger.json"
PROVIDER_CA = "certs/provider-ca.pem"
TSA_CA = "certs/tsa-ca.pem"
SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "evidence" / "schema"
# A bundle is a few evidence of a few kB each; anything near this is not one of ours, and reading
# it whole into memory (a ZIP bomb) is refused before any member is inflated.
MAX_TOTAL = 256 * 1024 * 1024
_UNSIGNED = (MANIFEST, MANIFEST_SIGNATURE)
LEDGER_RULE = (
    "hash = SHA-256(prev_hash || content_sha256); content_sha256 = SHA-256 of the record's fields "
    "kind, evidence_id, message_id, event, reason, recipient, created_at, xml, der, each as a "
    "4-byte big-endian length and its bytes (FFFFFFFF for a missing field)"
)


class BundleError(ValueError):
    """The file is not a bundle kepmta can read at all."""


def _pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _unique(certs: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for c in certs:
        if c not in out:
            out.append(c)
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")


def _message_json(message: MessageEvidence) -> dict[str, Any]:
    digest = message.digest
    return {
        "message_id": message.message_id,
        "ua_message_id": message.ua_message_id,
        "sender": message.sender,
        "operator": message.operator,
        "recipients": list(message.recipients),
        "subject": message.subject,
        "submitted_at": _time(message.submitted_at),
        # EVIDENCE.md "Digest of the original": what REM-DigestValue and every evidence carry.
        "original_sha256_hex": digest.hex() if digest else None,
        "original_sha256_base64": base64.b64encode(digest).decode("ascii") if digest else None,
    }


def build(
    message: MessageEvidence,
    *,
    provider_name: str,
    provider_ca: Sequence[x509.Certificate],
    tsa_ca: Sequence[x509.Certificate],
    signer: KeyPair,
    chain: Sequence[x509.Certificate],
    extras: Mapping[str, bytes] | None = None,
    created_at: dt.datetime | None = None,
    peer_anchors: Mapping[str, Sequence[x509.Certificate]] | None = None,
) -> bytes:
    """The bundle of `message` as ZIP bytes, its manifest signed by `signer`.

    `extras` are further members (revocation data, ledger proofs) by their path in the bundle.
    `peer_anchors` are, by a peer provider's domain, the CAs its evidence and time-stamps chain to:
    each peer whose evidence the message holds gets them as `peers/<domain>/ca.pem`, and the
    certificates its evidence carries beside them (ValueError if a peer's anchors are not given).
    """
    created = (created_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
    members: dict[str, bytes] = {}
    signer_certs: list[x509.Certificate] = []
    tsa_certs: list[x509.Certificate] = []
    peer_certs: dict[str, tuple[list[x509.Certificate], list[x509.Certificate]]] = {}
    files: dict[int, tuple[str, str | None, dict[str, Any]]] = {}
    archives = _newest_archives(message)
    for entry in message.entries:
        p7m, xml = f"evidence/{entry.name}.p7m", f"evidence/{entry.name}.xml"
        members[p7m] = entry.der
        members[xml] = entry.xml
        ci = cms.load(entry.der)
        extra: dict[str, Any] = {
            "ptt_code": entry.evidence.event.ptt_code,
            "timestamp": None,
            "evidence_record": None,
        }
        signers, stampers = signer_certs, tsa_certs
        if entry.received:
            peer = peer_domain(entry.evidence.issuer_domain)
            anchors = (peer_anchors or {}).get(peer)
            if not anchors:
                raise ValueError(
                    f"evidence {entry.evidence.evidence_id} was issued by the peer provider {peer}, "
                    "whose trust anchors (its evidence CA) are not known: the bundle could not be verified"
                )
            members[peer_ca_path(peer)] = _pem(anchors)
            extra["peer"] = peer
            signers, stampers = peer_certs.setdefault(peer, ([], []))
        signers += cms.certificates(ci)
        archived = archives.get(entry.record.evidence_id)
        if archived is not None:
            # Beside its evidence under the same name, so whoever takes the .p7m out of the bundle
            # sees the .ers it needs once the time-stamp's TSA certificate has expired.
            extra["evidence_record"] = f"evidence/{entry.name}.ers"
            members[extra["evidence_record"]] = archived.der
            files[archived.seq] = (extra["evidence_record"], None, {})
        token = cms.signature_timestamp_token(ci)
        if token is not None:
            extra["timestamp"] = f"timestamps/{entry.name}.tst"
            members[extra["timestamp"]] = token
            # What the token imprints, so `openssl ts -verify -data` can check it (RFC 3161 §2.4.2).
            members[f"timestamps/{entry.name}.sig"] = cms.signature_value(ci)
            stampers += cms.certificates(cms.load(token))
        files[entry.seq] = (p7m, xml, extra)
    records = []
    carried = {r.seq: r for r in (*message.records, *(e.record for e in message.entries))}
    for rec in sorted(carried.values(), key=lambda r: r.seq):
        if rec.seq not in files:
            folder, ext = ("revocation", "crl") if rec.kind is Kind.REVOCATION else ("ledger", "der")
            stem = f"{folder}/{rec.seq:06d}-{rec.kind.value}"
            files[rec.seq] = (f"{stem}.{ext}", f"{stem}.xml" if rec.xml is not None else None, {})
            members[files[rec.seq][0]] = rec.der
            if rec.xml is not None:
                members[f"{stem}.xml"] = rec.xml
            renewal = archives.get(rec.evidence_id)
            if rec.kind is Kind.CHECKPOINT and renewal is not None:
                # As for evidence: the checkpoint's .ers beside it, under the same name.
                files[rec.seq][2]["evidence_record"] = f"{stem}.ers"
                files[renewal.seq] = (f"{stem}.ers", None, {})
                members[f"{stem}.ers"] = renewal.der
        der_path, xml_path, extra = files[rec.seq]
        records.append(
            {
                "seq": rec.seq,
                "kind": rec.kind.value,
                "evidence_id": rec.evidence_id,
                "message_id": rec.message_id,
                "event": rec.event,
                "reason": rec.reason,
                "recipient": rec.recipient,
                # Exactly as the ledger hashes it (ledger.content_digest), so it can be recomputed.
                "created_at": rec.created_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
                "der": der_path,
                "xml": xml_path,
                **extra,
                "prev_hash": rec.prev_hash.hex(),
                "hash": rec.hash.hex(),
            }
        )
    links = [
        {
            "seq": link.seq,
            "kind": link.kind,
            "content_sha256": link.content_sha256.hex(),
            "prev_hash": link.prev_hash.hex(),
            "hash": link.hash.hex(),
        }
        for link in message.chain
    ]
    members[MESSAGE] = _json(_message_json(message))
    members[LEDGER] = _json({"rule": LEDGER_RULE, "records": records, "chain": links})
    members[PROVIDER_CA] = _pem(provider_ca)
    if list(tsa_ca) != list(provider_ca):
        members[TSA_CA] = _pem(tsa_ca)
    members["certs/evidence-signer.pem"] = _pem(_unique(signer_certs))
    if tsa_certs:
        members["certs/tsa.pem"] = _pem(_unique(tsa_certs))
    for peer, (signers, stampers) in peer_certs.items():
        members[f"peers/{peer}/evidence-signer.pem"] = _pem(_unique(signers))
        if stampers:
            members[f"peers/{peer}/tsa.pem"] = _pem(_unique(stampers))
    if SCHEMA_DIR.is_dir():
        for xsd in sorted(SCHEMA_DIR.glob("*.xsd")):
            members[f"schema/{xsd.name}"] = xsd.read_bytes()
    for path, data in (extras or {}).items():
        _check_name(path)
        if path in members or path in (*_UNSIGNED, CHECKSUMS, README):
            raise ValueError(f"bundle member {path} given twice")
        members[path] = data
    members[README] = readme(message, provider_name, members, created).encode("utf-8")
    members[CHECKSUMS] = "".join(f"{_sha256(d)}  {p}\n" for p, d in sorted(members.items())).encode()
    manifest = _json(
        {
            "format": FORMAT,
            "message_id": message.message_id,
            "provider": provider_name,
            "created_at": _time(created),
            "members": [
                {"path": p, "size": len(d), "sha256": _sha256(d)} for p, d in sorted(members.items())
            ],
        }
    )
    signature = cms.sign(signer, content=manifest, detached=True, chain=chain, signing_time=created)
    out = io.BytesIO()
    stamp = created.timetuple()[:6]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in [
            (MANIFEST, manifest),
            (MANIFEST_SIGNATURE, bytes(signature.dump())),
            *sorted(members.items()),
        ]:
            info = zipfile.ZipInfo(path, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return out.getvalue()


def peer_domain(domain: str) -> str:
    """A peer's domain as it names its folder in the bundle: a DNS name, nothing that could climb
    out of `peers/`."""
    folded = domain.lower()
    if not is_domain(folded):
        raise BundleError(f"the peer provider's domain {domain!r} is not a domain name")
    return folded


def peer_ca_path(domain: str) -> str:
    return f"peers/{domain}/ca.pem"


def _newest_archives(message: MessageEvidence) -> dict[str, LedgerRecord]:
    """Each evidence's newest evidence record (the records come in ledger order): every renewal
    holds the whole record before it, so the newest one is all a verifier needs."""
    return {rec.evidence_id: rec for rec in message.records if rec.kind is Kind.ARCHIVE}


def readme(
    message: MessageEvidence, provider_name: str, members: Mapping[str, bytes], created: dt.datetime
) -> str:
    """The bundle's README: what is inside and how to check each piece by hand with OpenSSL."""
    tsa_ca = TSA_CA if TSA_CA in members else PROVIDER_CA
    lines = [
        f"KEP evidence bundle / KEP kanıt paketi — {provider_name}",
        "",
        f"Message (ileti):  <{message.message_id}>",
        f"Subject (konu):   {message.subject}",
        f"Sender (gönderen): {message.sender}",
        f"Recipients (alıcılar): {', '.join(message.recipients) or '-'}",
        f"Exported (oluşturma): {_time(created)}",
        "",
        "Bu paket, iletinin tüm kanıtlarını (imzalı ve zaman damgalı), sertifikaları ve defter",
        "kayıtlarını içerir. Aşağıdaki komutlarla kepmta olmadan, yalnızca OpenSSL ile doğrulanabilir.",
        "",
        "What is inside",
        "  manifest.json       SHA-256 and size of every other member",
        "  manifest.json.p7s   CMS signature of manifest.json by the provider's transaction certificate",
        "  SHA256SUMS          the same hashes, for `sha256sum -c`",
        "  message.json        the message: ids, parties, subject, submission time, SHA-256 of the original",
        "  ledger.json         the ledger records with prev_hash and hash, and the chain positions",
        "  evidence/*.p7m      each evidence: EN 319 522-3 XML in a CAdES-B-T CMS SignedData (DER)",
        "  evidence/*.xml      the same XML, readable (identical to the signed content)",
        "  evidence/*.ers      the RFC 4998 evidence record of a renewed evidence (kepmta evidence renew)",
        "  timestamps/*.tst    the RFC 3161 signature time-stamp token of each evidence",
        "  timestamps/*.sig    the signature value each token time-stamps",
        "  certs/              trust anchors, the signer's and the TSA's certificates",
        "  peers/DOMAIN/       a peer provider's evidence: its CAs (ca.pem), the certificates its",
        "                      evidence and tokens carry; its evidence is checked against ca.pem",
        "  revocation/*.crl    CRLs in force when the evidence was made (openssl crl -inform DER -text)",
        "  schema/             the XML Schema of the evidence XML (when shipped)",
        "",
        "Checking by hand (run inside the unpacked folder: `unzip bundle.zip -d bundle && cd bundle`)",
        "First compare the fingerprint of certs/provider-ca.pem with the one the provider publishes:",
        "  openssl x509 -in certs/provider-ca.pem -noout -fingerprint -sha256",
        "",
        "1. Nothing was changed, added or removed:",
        "  openssl cms -verify -binary -inform DER -in manifest.json.p7s -content manifest.json \\",
        "      -CAfile certs/provider-ca.pem -out /dev/null",
        "  sha256sum -c SHA256SUMS",
        "",
        "2. Each evidence: signature, chain, and the signed XML equals the readable copy:",
    ]
    # A peer's evidence chains to that peer's CAs, not to ours.
    peers = {
        e.name: peer_ca_path(peer_domain(e.evidence.issuer_domain)) for e in message.entries if e.received
    }
    for path in sorted(p for p in members if p.startswith("evidence/") and p.endswith(".p7m")):
        stem = path[len("evidence/") : -len(".p7m")]
        ca = peers.get(stem, PROVIDER_CA)
        lines.append(f"  openssl cms -verify -inform DER -in {path} -CAfile {ca} -out {stem}.out")
        lines.append(f"  cmp {stem}.out evidence/{stem}.xml")
    if peers:
        lines += [
            "  An evidence checked against peers/DOMAIN/ca.pem was issued by that peer provider and is",
            "  kept exactly as it signed it; compare the fingerprint of its ca.pem with the one the peer",
            "  publishes, as for certs/provider-ca.pem.",
        ]
    lines += [
        "",
        "3. Each time-stamp token covers its evidence's signature value (EN 319 122-1 §5.3); the",
        "   value is in timestamps/*.sig (compare it with the `signature:` octets printed by",
        "   `openssl cms -cmsout -print -inform DER -in evidence/NAME.p7m`):",
    ]
    for path in sorted(p for p in members if p.startswith("timestamps/") and p.endswith(".tst")):
        stem = path[: -len(".tst")]
        ca = peers.get(stem[len("timestamps/") :], tsa_ca)
        lines.append(f"  openssl ts -verify -in {path} -token_in -data {stem}.sig -CAfile {ca}")
    lines += [
        "",
        "4. The original message: its SHA-256 is in message.json and in every evidence XML",
        "  (ds:DigestValue, base64). Hash the original as attached to the REM dispatch and compare:",
        "  openssl dgst -sha256 -binary original.eml | base64",
        "",
        "5. Ledger: ledger.json holds the message's ledger records (and earlier versions of each",
        "  evidence, the revocation data in force when it was made, and a checkpoint once one follows)",
        "  with prev_hash and hash, and under `chain` every position from the message's first record",
        "  on, so the records' place in the append-only chain can be recomputed:",
        f"  {LEDGER_RULE}.",
        "  The chain must run without a gap, each prev_hash equal to the hash before it.",
        "",
    ]
    renewed = sorted(p for p in members if p.startswith("evidence/") and p.endswith(".ers"))
    if renewed:
        lines += [
            "6. A renewed evidence (one with an .ers beside it) stays verifiable after the certificates",
            "  of its signer and of its TSA have expired, when the openssl commands of steps 2 and 3",
            "  fail: its RFC 4998 evidence record proves, by archive time-stamps renewed before each",
            "  expiry and re-hashed when a hash algorithm weakened, that it existed while they were valid:",
        ]
        for ers in renewed:
            stem = ers.removesuffix(".ers")
            lines.append(
                f"  kepmta evidence verify {stem}.p7m --ers {ers} --ca {PROVIDER_CA} --tsa-ca {tsa_ca}"
            )
        lines.append("")
    lines += [
        "Or all of it at once, offline:",
        "  kepmta evidence verify bundle.zip --ca certs/provider-ca.pem"
        + ("" if tsa_ca == PROVIDER_CA else f" --tsa-ca {tsa_ca}"),
        "",
    ]
    return "\n".join(lines)


# --- verification --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleReport:
    message_id: str | None
    checks: tuple[Check, ...]
    evidence: tuple[tuple[str, Report], ...]
    received: tuple[str, ...] = ()  # the evidence paths issued by a peer provider

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks) and all(r.ok for _, r in self.evidence)


def _check_name(path: str) -> None:
    # Members are only ever read into memory, but a person unzips the bundle: a name that climbs
    # out of the folder or is absolute would write elsewhere.
    norm = posixpath.normpath(path)
    if path != norm or path.startswith(("/", "../")) or path == ".." or "\\" in path or not path:
        raise BundleError(f"unsafe member name {path!r}")


def _read_zip(data: bytes) -> dict[str, bytes]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BundleError(f"not a ZIP file: {exc}") from exc
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise BundleError("the ZIP holds two members with the same name")
        if sum(i.file_size for i in infos) > MAX_TOTAL:
            raise BundleError(f"the members add up to more than {MAX_TOTAL} bytes")
        out: dict[str, bytes] = {}
        for info in infos:
            if info.is_dir():
                continue
            _check_name(info.filename)
            try:
                out[info.filename] = zf.read(info)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:  # CRC or inflate failure
                raise BundleError(f"{info.filename}: {exc}") from exc
    return out


def _run(checks: list[Check], name: str, body: Callable[[], str]) -> bool:
    try:
        checks.append(Check(name, True, body()))
        return True
    except Exception as exc:  # a verifier reports every failure, whatever the input holds
        checks.append(Check(name, False, str(exc) or type(exc).__name__))
        return False


def verify(
    data: bytes,
    provider_trust: Sequence[x509.Certificate],
    tsa_trust: Sequence[x509.Certificate],
    weak: Mapping[str, dt.datetime] | None = None,
) -> BundleReport:
    """Check a bundle offline: manifest and its signature, every member, every evidence; evidence
    records against the hash algorithms `weak` names (archive.verify_record)."""
    checks: list[Check] = []
    members: dict[str, bytes] = {}
    manifest: dict[str, Any] = {}

    def unzip() -> str:
        members.update(_read_zip(data))
        return f"{len(members)} members"

    if not _run(checks, "zip", unzip):
        return BundleReport(None, tuple(checks), ())

    def manifest_check() -> str:
        raw = members.get(MANIFEST)
        if raw is None:
            raise BundleError("no manifest.json")
        loaded = json.loads(raw)
        if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
            raise BundleError(f"manifest.json is not a {FORMAT} manifest")
        manifest.update(loaded)
        listed: dict[str, dict[str, Any]] = {m["path"]: m for m in loaded["members"]}
        problems = []
        for path, entry in listed.items():
            got = members.get(path)
            if got is None:
                problems.append(f"{path} is missing")
            elif len(got) != entry["size"] or not hmac.compare_digest(_sha256(got), entry["sha256"]):
                problems.append(f"{path} was changed (SHA-256 differs from the manifest)")
        problems += [
            f"{p} is not in the manifest" for p in sorted(set(members) - set(listed) - set(_UNSIGNED))
        ]
        if problems:
            raise BundleError("; ".join(problems))
        return f"all {len(listed)} members match their SHA-256 in the manifest"

    def signature_check() -> str:
        raw = members.get(MANIFEST_SIGNATURE)
        if raw is None:
            raise BundleError("no manifest.json.p7s: the manifest is not signed")
        ci = cms.load(raw)
        cms.check_structure(ci)
        if cms.encapsulated_content(ci) is not None:
            raise cms.CmsError("the manifest signature must be detached")
        cert = cms.signer_certificate(ci)
        cms.check_message_digest(ci, content=members.get(MANIFEST, b""))
        cms.check_signature(ci, cert)
        cms.check_signing_certificate_v2(ci, cert)
        signing_time = cms.signed_attribute(ci, "signing_time")
        if signing_time is None:
            raise cms.CmsError("the manifest signature has no signing-time")
        at: dt.datetime = signing_time.native
        # The manifest signature has no time-stamp of its own, so its certificate is judged at the
        # signing time it states; the evidence inside carry the time-stamped proof.
        cms.validate_chain(
            cert, intermediates=cms.certificates(ci), trust=provider_trust, at=at, all_intermediates_used=True
        )
        return f"signed by {cert.subject.rfc4514_string()} at {at:%Y-%m-%d %H:%M:%SZ} (stated signing time)"

    def checksums_check() -> str:
        raw = members.get(CHECKSUMS)
        if raw is None:
            raise BundleError("no SHA256SUMS")
        for line in raw.decode("utf-8").splitlines():
            digest, _, path = line.partition("  ")
            got = members.get(path)
            if got is None or not hmac.compare_digest(_sha256(got), digest):
                raise BundleError(f"SHA256SUMS line for {path} does not match the member")
        return "SHA256SUMS agrees with the members"

    _run(checks, "manifest", manifest_check)
    _run(checks, "manifest-signature", signature_check)
    _run(checks, "checksums", checksums_check)

    facts: dict[str, Any] = {}
    ledger_records: list[dict[str, Any]] = []

    def message_check() -> str:
        facts.update(json.loads(members[MESSAGE]))
        if facts.get("message_id") != manifest.get("message_id", facts.get("message_id")):
            raise BundleError("message.json and manifest.json name different messages")
        return f"message <{facts['message_id']}>"

    def ledger_check() -> str:
        loaded = json.loads(members[LEDGER])
        ledger_records.extend(loaded["records"])
        seqs = [r["seq"] for r in ledger_records]
        if seqs != sorted(set(seqs)):
            raise BundleError("ledger records are not in ledger order")
        digests: dict[int, bytes] = {}
        for r in ledger_records:
            rec = _new_record(r, members)
            digests[r["seq"]] = content_digest(rec)
            if chain_hash(bytes.fromhex(r["prev_hash"]), rec) != bytes.fromhex(r["hash"]):
                raise BundleError(f"ledger record {r['seq']}: its hash does not match its content")
        for ext, kinds in ((".p7m", EVIDENCE_VERSIONS), (".ers", (Kind.ARCHIVE,))):
            on_file = sorted(p for p in members if p.startswith("evidence/") and p.endswith(ext))
            named = [r for r in ledger_records if r["der"].startswith("evidence/") and r["der"].endswith(ext)]
            if sorted(r["der"] for r in named) != on_file or any(Kind(r["kind"]) not in kinds for r in named):
                raise BundleError(f"the evidence/*{ext} files and the ledger records do not correspond")
        return f"{len(ledger_records)} records, each hash recomputed from its content" + _chain_check(
            loaded.get("chain", []), ledger_records, digests
        )

    _run(checks, "message", message_check)
    _run(checks, "ledger", ledger_check)

    reports: list[tuple[str, Report]] = []
    received: list[str] = []
    for r in ledger_records:
        path = r["der"]
        if not (path.startswith("evidence/") and path.endswith(".p7m")):
            continue
        der = members.get(path, b"")
        trust, stamps = provider_trust, tsa_trust
        if r["kind"] == Kind.RECEIVED.value:
            # A peer's evidence answers to that peer's CAs, carried in the bundle and covered by
            # the manifest our provider signed; our own anchors never vouch for it.
            received.append(path)
            anchors: list[x509.Certificate] = []

            def issuer(r: dict[str, Any] = r, anchors: list[x509.Certificate] = anchors) -> str:
                anchors += _peer_anchors(r, members)
                return f"issued by the peer provider {r['peer']}, checked against {peer_ca_path(r['peer'])}"

            _run(checks, f"{path}: issuer", issuer)
            trust = stamps = anchors
        # A renewed evidence is verified through its evidence record, as `kepmta evidence verify
        # FILE.p7m --ers FILE.ers` does: its certificates may have expired since.
        ers = r.get("evidence_record")
        report = verify_evidence(
            der,
            trust,
            stamps,
            evidence_record=None if ers is None else members.get(ers, b""),
            weak=weak,
        )
        reports.append((path, report))

        def consistency(r: dict[str, Any] = r, der: bytes = der, report: Report = report) -> str:
            return _consistent(r, der, report, members, facts, ledger_records)

        _run(checks, f"{path}: consistency", consistency)
    own = [(path, report) for path, report in reports if path not in received]
    if own:
        # Our CRLs only: the ledger captures the revocation data of our own CA chain.
        _run(checks, "revocation", lambda: _revocation_check(members, own, provider_trust))
    for r in ledger_records:
        if r["kind"] == Kind.CHECKPOINT.value:

            def sealed(r: dict[str, Any] = r) -> str:
                return _checkpoint_check(r, ledger_records, members, provider_trust, tsa_trust, weak)

            _run(checks, f"checkpoint {r['seq']}", sealed)
    return BundleReport(
        facts.get("message_id") or manifest.get("message_id"), tuple(checks), tuple(reports), tuple(received)
    )


def _peer_anchors(record: Mapping[str, Any], members: Mapping[str, bytes]) -> list[x509.Certificate]:
    """The CAs of the peer a received evidence names in ledger.json, from the bundle."""
    peer = record.get("peer")
    if not isinstance(peer, str) or peer_domain(peer) != peer:
        raise BundleError(f"ledger record {record['seq']} names no peer provider domain")
    pem = members.get(peer_ca_path(peer))
    if pem is None:
        raise BundleError(f"{peer_ca_path(peer)} is missing: the peer's evidence cannot be checked")
    return x509.load_pem_x509_certificates(pem)


def _checkpoint_check(
    record: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    members: Mapping[str, bytes],
    provider_trust: Sequence[x509.Certificate],
    tsa_trust: Sequence[x509.Certificate],
    weak: Mapping[str, dt.datetime] | None,
) -> str:
    """The checkpoint is signed and time-stamped by the provider and seals a chain head at or after
    the message's last record, with the very hash the chain in the bundle arrives at."""
    der = members[record["der"]]
    ers = record.get("evidence_record")
    renewals = [
        r for r in records if r["kind"] == Kind.ARCHIVE.value and r["evidence_id"] == record["evidence_id"]
    ]
    if renewals and (ers is None or renewals[-1]["der"] != ers):
        raise BundleError("the evidence record beside the checkpoint is not its newest one in the ledger")
    if ers is not None and not renewals:
        raise BundleError(f"{ers} is not an evidence record of this checkpoint in the ledger")
    # Like a renewed evidence: once the checkpoint's TSA certificate expired, only its evidence
    # record shows the time-stamp was relied on while it was valid.
    report = verify_evidence(
        der,
        provider_trust,
        tsa_trust,
        evidence_record=None if ers is None else members.get(ers, b""),
        weak=weak,
    )
    # The content check reads evidence XML; a checkpoint carries a statement, read below instead.
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok and c.name != CONTENT]
    if failed:
        raise BundleError("; ".join(failed))
    seq, head = read_statement(cms.encapsulated_content(cms.load(der)) or b"")
    chain = {int(link["seq"]): link for link in json.loads(members[LEDGER]).get("chain", [])}
    sealing = {r["evidence_id"] for r in records if r["kind"] == Kind.CHECKPOINT.value}
    last = max(
        int(r["seq"])
        for r in records
        if r["kind"] != Kind.CHECKPOINT.value and r["evidence_id"] not in sealing
    )
    if seq < last:
        raise BundleError(f"it seals seq {seq}, before the message's last record {last}")
    if seq not in chain or bytes.fromhex(chain[seq]["hash"]) != head:
        raise BundleError(f"it seals seq {seq} with a hash the chain in the bundle does not reach")
    when = f"{report.timestamp_time:%Y-%m-%d %H:%M:%SZ}" if report.timestamp_time else "?"
    renewed = f", renewed by {ers}" if ers is not None else ""
    return f"signed and time-stamped ({when}) statement sealing the chain up to seq {seq}{renewed}"


def _revocation_check(
    members: Mapping[str, bytes], reports: Sequence[tuple[str, Report]], trust: Sequence[x509.Certificate]
) -> str:
    """Each evidence signer was not revoked at its time-stamp time, by the CRLs captured for it
    (EN 319 102-1 §5.6.2.3: validation with revocation data from that time)."""
    crls = [load_crl(data) for path, data in sorted(members.items()) if path.startswith("revocation/")]
    if not crls:
        return "no revocation data was captured with this evidence (no CRL configured)"
    checked = 0
    for path, report in reports:
        ci = cms.load(members[path])
        cert = cms.signer_certificate(ci)
        issuers = [*cms.certificates(ci), *trust]
        issuer = next((c for c in issuers if c.subject == cert.issuer), None)
        if issuer is None or report.timestamp_time is None:
            continue  # the evidence check itself already fails and says why
        check_not_revoked(cert, issuer, crls, report.timestamp_time)
        checked += 1
    return f"{checked} evidence signer(s) not revoked at their time-stamp, by {len(crls)} captured CRL(s)"


def _new_record(r: Mapping[str, Any], members: Mapping[str, bytes]) -> NewRecord:
    """The ledger record as the ledger hashed it, from ledger.json and the files it names."""
    der = members.get(r["der"])
    if der is None:
        raise BundleError(f"ledger record {r['seq']}: {r['der']} is missing")
    xml = None
    if r["xml"] is not None:
        xml = members.get(r["xml"])
        if xml is None:
            raise BundleError(f"ledger record {r['seq']}: {r['xml']} is missing")
    return NewRecord(
        kind=Kind(r["kind"]),
        evidence_id=r["evidence_id"],
        created_at=dt.datetime.fromisoformat(r["created_at"]),
        der=der,
        message_id=r["message_id"],
        event=r["event"],
        reason=r["reason"],
        recipient=r["recipient"],
        xml=xml,
    )


def _chain_check(
    links: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]], digests: Mapping[int, bytes]
) -> str:
    """The chain positions run without a gap, each hash = SHA-256(prev_hash || content_sha256),
    each link to the one before, and the records given in full sit at their positions."""
    if not links:
        return ""
    previous: bytes | None = None
    at: dict[int, Mapping[str, Any]] = {int(link["seq"]): link for link in links}
    for i, link in enumerate(links):
        if link["seq"] != links[0]["seq"] + i:
            raise BundleError(f"chain: position {links[0]['seq'] + i} is missing")
        prev, content, own = (bytes.fromhex(link[k]) for k in ("prev_hash", "content_sha256", "hash"))
        if previous is not None and prev != previous:
            raise BundleError(f"chain: seq {link['seq']} does not follow seq {link['seq'] - 1}")
        if hashlib.sha256(prev + content).digest() != own:
            raise BundleError(f"chain: seq {link['seq']} hash ≠ SHA-256(prev_hash || content_sha256)")
        previous = own
    sealing = {r["evidence_id"] for r in records if r["kind"] == Kind.CHECKPOINT.value}
    for r in records:
        if r["kind"] == Kind.REVOCATION.value and r["seq"] not in at:
            continue  # revocation data in force before the message's first record
        if r["evidence_id"] in sealing and r["kind"] == Kind.ARCHIVE.value and r["seq"] > links[-1]["seq"]:
            # A checkpoint's renewal comes after the checkpoint that ends the chain; its RFC 4998
            # record proves itself, and the chain up to it could be years of other messages.
            continue
        found = at.get(r["seq"])
        if (
            found is None
            or bytes.fromhex(found["content_sha256"]) != digests[r["seq"]]
            or found["hash"] != r["hash"]
        ):
            raise BundleError(f"chain: record {r['seq']} is not the one at its position in the chain")
    last = links[-1]
    sealed = f", sealed by checkpoint seq {last['seq']}" if last["kind"] == Kind.CHECKPOINT.value else ""
    return f"; chain seq {links[0]['seq']}–{last['seq']} unbroken{sealed}"


def _consistent(
    record: dict[str, Any],
    der: bytes,
    report: Report,
    members: Mapping[str, bytes],
    facts: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
) -> str:
    """The evidence agrees with its readable copy, its token file, its evidence record, its ledger
    record and the message."""
    ev = report.evidence
    if ev is None:
        raise BundleError("the evidence could not be read")
    content = cms.encapsulated_content(cms.load(der))
    if members.get(record["xml"]) != content:
        raise BundleError(f"{record['xml']} differs from the signed XML")
    token = cms.signature_timestamp_token(cms.load(der))
    if record["timestamp"] is not None:
        if members.get(record["timestamp"]) != token:
            raise BundleError(f"{record['timestamp']} is not the evidence's time-stamp token")
        sig = record["timestamp"].removesuffix(".tst") + ".sig"
        if members.get(sig) != cms.signature_value(cms.load(der)):
            raise BundleError(f"{sig} is not the signature value the token covers")
    archived = [
        r for r in records if r["kind"] == Kind.ARCHIVE.value and r["evidence_id"] == record["evidence_id"]
    ]
    ers = record.get("evidence_record")
    # An older evidence record beside the evidence would still verify, yet prove less (an expired
    # last TSA, a weak algorithm): the newest one in the ledger must be the one named.
    if archived and (ers is None or archived[-1]["der"] != ers or archived[-1]["seq"] < record["seq"]):
        raise BundleError("the evidence record beside the evidence is not its newest one in the ledger")
    if ers is not None and not archived:
        raise BundleError(f"{ers} is not an evidence record of this evidence in the ledger")
    if (ev.evidence_id, ev.event.value, ev.reason.value) != (
        record["evidence_id"],
        record["event"],
        record["reason"],
    ):
        raise BundleError("the ledger record names another evidence")
    if ev.message_id != facts.get("message_id"):
        raise BundleError(f"the evidence is about <{ev.message_id}>, not this message")
    digest = facts.get("original_sha256_hex")
    if ev.digest_sha256 is not None and ev.digest_sha256.hex() != digest:
        raise BundleError("the evidence's digest of the original differs from message.json")
    if ev.sender.address != facts.get("sender"):
        raise BundleError("the evidence names another sender than message.json")
    if record["kind"] == Kind.RECEIVED.value and ev.issuer_domain.lower() != record.get("peer"):
        raise BundleError(f"the evidence was issued by {ev.issuer_domain}, not by the peer ledger.json names")
    renewed = ", evidence record" if ers is not None else ""
    return f"{ev.event.value} {ev.evidence_id} agrees with its XML, token{renewed}, ledger record and message"


def describe(report: BundleReport) -> str:
    """The bundle report in words: each bundle check, then each evidence in one line."""
    lines = [f"Bundle of message <{report.message_id or '?'}>"]
    for c in report.checks:
        lines.append(f"  {'✓' if c.ok else '✗'} {c.name}: {c.detail}")
    for path, r in report.evidence:
        ev = r.evidence
        what = (
            f"{ev.event.value} ({ev.event.ptt_code}) at {ev.event_time:%Y-%m-%d %H:%M:%SZ}"
            if ev
            else "unreadable"
        )
        if ev is not None and path in report.received:
            what += f", issued by the peer provider {ev.issuer_name} ({ev.issuer_domain})"
        lines.append(f"  {'✓' if r.ok else '✗'} {path}: {what}")
        lines += [f"      ✗ {c.name}: {c.detail}" for c in r.checks if not c.ok]
    lines.append("Result: VALID" if report.ok else "Result: NOT VALID")
    return "\n".join(lines)
