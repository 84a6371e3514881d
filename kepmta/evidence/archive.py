"""Renewal: RFC 4998 evidence records that keep evidence verifiable for decades.

Why an RFC 4998 evidence record kept beside the evidence, and not a CAdES-A archive-time-stamp-v3
inside it: the evidence file stays byte for byte what the sender received and what the ledger
chained, so every copy ever handed out keeps its identity; one archive time-stamp covers a whole
batch of evidence through a hash tree (one TSA request per renewal run, not one per evidence, over
twenty years of millions of records); and its renewal rules (RFC 4998 §5.2) are exactly the two
cases we face: a TSA certificate about to expire (time-stamp renewal, a new archive time-stamp over
the previous one) and a hash algorithm growing weak (hash-tree renewal, a new chain).

The archived data group of an evidence is three data objects: the evidence (CAdES-B-T DER), the
certificates needed to validate it (CertificateValues, EN 319 122-1 §5.5.1) and the CRLs of the
provider CA chain captured when it was made (RevocationValues, §5.5.2). The last two travel in the
record's cryptoInfos (RFC 4998 §3.1: "certificates, revocation information …") and are protected
by the archive time-stamp like the evidence itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

import asn1crypto.core
import asn1crypto.parser
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kepmta.evidence import revocation
from kepmta.evidence.errors import EvidenceError, TimeStampError
from kepmta.evidence.ledger import EVIDENCE_VERSIONS, Kind, Ledger, LedgerRecord, NewRecord
from kepmta.evidence.revocation import crl_der
from kepmta.evidence.tsa import TimeStamper, check_token
from kepmta.smime import cms

# RFC 5126 / EN 319 122-1 attribute types, reused as cryptoInfos attribute types.
ID_CERT_VALUES = "1.2.840.113549.1.9.16.2.23"
ID_REVOCATION_VALUES = "1.2.840.113549.1.9.16.2.24"
_SHA256_OID = "2.16.840.1.101.3.4.2.1"


class ArchiveError(EvidenceError):
    """An evidence record is malformed or its archive time-stamp chain does not hold."""


@dataclass(frozen=True)
class ArchiveTimeStamp:
    """RFC 4998 §4.1: a time-stamp over the root of a (reduced) hash tree."""

    tree: tuple[tuple[bytes, ...], ...]  # reducedHashtree: the leaf's list, then one list per level
    token: bytes  # the TimeStampToken, exactly as the TSA sent it


@dataclass(frozen=True)
class EvidenceRecord:
    """RFC 4998 §3: one chain of archive time-stamps (time-stamp renewal appends to it)."""

    chain: tuple[ArchiveTimeStamp, ...]
    certificates: tuple[bytes, ...]  # DER certificates (CertificateValues)
    crls: tuple[bytes, ...]  # DER CRLs (RevocationValues crlVals)

    def cert_values(self) -> bytes:
        return _seq(b"".join(self.certificates))

    def revocation_values(self) -> bytes:
        # RFC 5126 §6.3.4: RevocationValues ::= SEQUENCE { crlVals [0] SEQUENCE OF CertificateList … }
        return _seq(_ctx(0, _seq(b"".join(self.crls))) if self.crls else b"")

    def data_hashes(self, evidence_der: bytes) -> list[bytes]:
        """The hashes of the archived data objects, in the order the first hash tree list holds them."""
        return sorted(_h(d) for d in (evidence_der, self.cert_values(), self.revocation_values()))

    def dump(self) -> bytes:
        """DER of the EvidenceRecord (RFC 4998 Appendix A, IMPLICIT TAGS), tokens kept byte for byte."""
        sha256 = _seq(asn1crypto.core.ObjectIdentifier(_SHA256_OID).dump())
        infos = _attribute(ID_CERT_VALUES, self.cert_values()) + _attribute(
            ID_REVOCATION_VALUES, self.revocation_values()
        )
        chain = b"".join(
            _seq(
                _ctx(2, b"".join(_seq(b"".join(_octets(h) for h in level)) for level in ats.tree)) + ats.token
            )
            for ats in self.chain
        )
        return _seq(
            asn1crypto.core.Integer(1).dump()  # version v1
            + _seq(sha256)  # digestAlgorithms
            + _ctx(0, infos)  # cryptoInfos [0] IMPLICIT
            + _seq(_seq(chain))  # archiveTimeStampSequence: one chain
        )


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _seq(contents: bytes) -> bytes:
    return bytes(asn1crypto.parser.emit(0, 1, 16, contents))


def _ctx(tag: int, contents: bytes) -> bytes:
    return bytes(asn1crypto.parser.emit(2, 1, tag, contents))


def _octets(value: bytes) -> bytes:
    return bytes(asn1crypto.core.OctetString(value).dump())


def _attribute(oid: str, value: bytes) -> bytes:
    return _seq(asn1crypto.core.ObjectIdentifier(oid).dump() + bytes(asn1crypto.parser.emit(0, 1, 17, value)))


def _children(der: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """(class, tag, whole encoding, contents) of each value in a run of DER values."""
    out = []
    rest = der
    while rest:
        cls, _, tag, header, contents, trailer = asn1crypto.parser.parse(rest, strict=False)
        size = len(header) + len(contents) + len(trailer)
        out.append((cls, tag, rest[:size], contents))
        rest = rest[size:]
    return out


def _one(der: bytes) -> tuple[int, int, bytes, bytes]:
    found = _children(der)
    if len(found) != 1:
        raise ArchiveError("trailing data after the evidence record")
    return found[0]


def parse(der: bytes) -> EvidenceRecord:
    """Read an EvidenceRecord as `EvidenceRecord.dump` writes it; ArchiveError otherwise."""
    try:
        cls, tag, _, body = _one(der)
        if (cls, tag) != (0, 16):
            raise ArchiveError("an evidence record is a SEQUENCE")
        fields = _children(body)
        if len(fields) < 3 or asn1crypto.core.Integer.load(fields[0][2]).native != 1:
            raise ArchiveError("evidence record version must be 1")
        algos = [
            asn1crypto.core.ObjectIdentifier.load(_children(a[3])[0][2]).dotted
            for a in _children(fields[1][3])
        ]
        if algos != [_SHA256_OID]:
            raise ArchiveError(f"digest algorithms {algos} are not the SHA-256 this verifier checks")
        certs: tuple[bytes, ...] = ()
        crls: tuple[bytes, ...] = ()
        for cls, tag, _, contents in fields[2:-1]:
            if (cls, tag) == (2, 0):
                for _, _, _, attr in _children(contents):
                    oid_der, values = _children(attr)
                    oid = asn1crypto.core.ObjectIdentifier.load(oid_der[2]).dotted
                    value = _children(values[3])[0]
                    if oid == ID_CERT_VALUES:
                        certs = tuple(c[2] for c in _children(value[3]))
                    elif oid == ID_REVOCATION_VALUES:
                        crls = tuple(
                            c[2]
                            for part in _children(value[3])
                            if part[:2] == (2, 0)
                            for c in _children(_children(part[3])[0][3])
                        )
            elif (cls, tag) == (2, 1):
                raise ArchiveError("encrypted evidence records are not supported")
        sequence = _children(fields[-1][3])
        if len(sequence) != 1:
            raise ArchiveError("hash-tree renewal (several archive time-stamp chains) is not supported")
        chain = []
        for _, _, _, ats_body in _children(sequence[0][3]):
            parts = _children(ats_body)
            tree: tuple[tuple[bytes, ...], ...] = ()
            for cls, tag, _, contents in parts[:-1]:
                if (cls, tag) == (2, 0) and _children(contents)[0][2] != asn1crypto.core.ObjectIdentifier(
                    _SHA256_OID
                ).dump():
                    raise ArchiveError("an archive time-stamp uses another digest algorithm than SHA-256")
                if (cls, tag) == (2, 2):
                    tree = tuple(
                        tuple(
                            bytes(asn1crypto.core.OctetString.load(h[2]).native) for h in _children(level[3])
                        )
                        for level in _children(contents)
                    )
            chain.append(ArchiveTimeStamp(tree, parts[-1][2]))
    except ArchiveError:
        raise
    except (ValueError, TypeError, IndexError) as exc:
        raise ArchiveError(f"not an RFC 4998 evidence record: {exc}") from exc
    if not chain:
        raise ArchiveError("the evidence record holds no archive time-stamp")
    record = EvidenceRecord(tuple(chain), certs, crls)
    # The reading above is lenient about tags and extra fields; what we accept is exactly what we
    # write, so every byte of a record is either checked or reproduced.
    if record.dump() != der:
        raise ArchiveError("not the DER encoding of an evidence record in kepmta's profile")
    return record


def _fold(tree: Sequence[Sequence[bytes]], leaves: Sequence[bytes]) -> bytes:
    """RFC 4998 §4.3: the root a reduced hash tree leads to from the given data object hashes."""
    if not tree:
        if len(leaves) != 1:
            raise ArchiveError("several data objects need a hash tree")
        return leaves[0]
    first = tree[0]
    for leaf in leaves:
        if not any(hmac.compare_digest(leaf, h) for h in first):
            raise ArchiveError("a data object's hash is not in the archive time-stamp's hash tree")
    node = _h(b"".join(sorted(first)))
    for level in tree[1:]:
        node = _h(b"".join(sorted([node, *level])))
    return node


def _build_tree(leaves: Sequence[Sequence[bytes]]) -> tuple[bytes, list[list[list[bytes]]]]:
    """RFC 4998 §4.2: the root over `leaves` (each a list of data object hashes), and for each leaf
    its reduced hash tree. A node without a sibling moves up unchanged."""
    paths: list[list[list[bytes]]] = [[sorted(leaf)] for leaf in leaves]
    level = [(_h(b"".join(sorted(leaf))), [i]) for i, leaf in enumerate(leaves)]
    while len(level) > 1:
        up = []
        for j in range(0, len(level), 2):
            if j + 1 == len(level):
                up.append(level[j])
                continue
            (a, under_a), (b, under_b) = level[j], level[j + 1]
            for i in under_a:
                paths[i].append([b])
            for i in under_b:
                paths[i].append([a])
            up.append((_h(b"".join(sorted([a, b]))), under_a + under_b))
        level = up
    return level[0][0], paths


async def stamp_batch(
    items: Sequence[tuple[EvidenceRecord | None, bytes, tuple[bytes, ...], tuple[bytes, ...]]],
    tsa: TimeStamper,
) -> list[EvidenceRecord]:
    """One archive time-stamp over a batch. Each item is (existing record or None, evidence DER,
    certificates, CRLs): a new record starts a chain over the data group (RFC 4998 §5.1); an existing
    one gets a time-stamp renewal over its last time-stamp (§5.2)."""
    if not items:
        return []
    leaves: list[list[bytes]] = []
    for existing, evidence_der, certs, crls in items:
        if existing is None:
            leaves.append(EvidenceRecord((), certs, crls).data_hashes(evidence_der))
        else:
            leaves.append([_h(existing.chain[-1].token)])
    root, paths = _build_tree(leaves)
    token = await tsa.timestamp(root)
    out = []
    for (existing, _, certs, crls), path in zip(items, paths, strict=True):
        ats = ArchiveTimeStamp(tuple(tuple(level) for level in path), token)
        if existing is None:
            out.append(EvidenceRecord((ats,), certs, crls))
        else:
            out.append(EvidenceRecord((*existing.chain, ats), existing.certificates, existing.crls))
    return out


@dataclass(frozen=True)
class ArchiveProof:
    """What a verified evidence record proves: the data existed at `first_time`, and the chain of
    archive time-stamps stays valid up to `checked_at`."""

    first_time: dt.datetime
    times: tuple[dt.datetime, ...]
    tsa_subjects: tuple[str, ...]
    certificates: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]


def _tsa_certificate(
    token: bytes, trust: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    ci = cms.load(token)
    return cms.signer_certificate(ci, extra=trust), cms.certificates(ci)


def verify_record(
    er: EvidenceRecord, evidence_der: bytes, tsa_trust: Sequence[x509.Certificate], at: dt.datetime
) -> ArchiveProof:
    """RFC 4998 §5.3: every archive time-stamp covers what it must, and each TSA certificate was
    still valid when the next time-stamp renewed it; the last one is valid at `at`."""
    times: list[dt.datetime] = []
    subjects: list[str] = []
    previous: bytes | None = None
    for i, ats in enumerate(er.chain):
        leaves = er.data_hashes(evidence_der) if previous is None else [_h(previous)]
        root = _fold(ats.tree, leaves)
        try:
            info = check_token(ats.token, root, tsa_trust)
        except TimeStampError as exc:
            raise ArchiveError(f"archive time-stamp {i + 1}: {exc}") from exc
        if times and info.gen_time < times[-1]:
            raise ArchiveError(f"archive time-stamp {i + 1} is older than the one it renews")
        if times:
            _valid_at(er.chain[i - 1].token, tsa_trust, info.gen_time, f"archive time-stamp {i}")
        times.append(info.gen_time)
        subjects.append(info.tsa_subject)
        previous = ats.token
    _valid_at(er.chain[-1].token, tsa_trust, at, f"archive time-stamp {len(er.chain)}")
    try:
        certs = tuple(x509.load_der_x509_certificate(c) for c in er.certificates)
        crls = tuple(x509.load_der_x509_crl(c) for c in er.crls)
    except ValueError as exc:
        raise ArchiveError(f"the archived validation data does not parse: {exc}") from exc
    return ArchiveProof(times[0], tuple(times), tuple(subjects), certs, crls)


def _valid_at(token: bytes, trust: Sequence[x509.Certificate], when: dt.datetime, what: str) -> None:
    """The TSA certificate of `token` chains to `trust` at `when`: the time-stamp was renewed (or is
    relied on) before that certificate expired."""
    try:
        signer, embedded = _tsa_certificate(token, trust)
        cms.validate_chain(signer, intermediates=embedded, trust=trust, at=when)
    except cms.CmsError as exc:
        raise ArchiveError(
            f"{what}: its TSA certificate is not valid at {when:%Y-%m-%d %H:%M:%SZ} "
            f"(renewal came too late): {exc}"
        ) from exc


def expires(token: bytes, trust: Sequence[x509.Certificate]) -> dt.datetime:
    """When the weakest link of a time-stamp's TSA chain expires: the renewal deadline."""
    signer, embedded = _tsa_certificate(token, trust)
    path = cms.validate_chain(signer, intermediates=embedded, trust=trust, at=signer.not_valid_before_utc)
    return min(c.not_valid_after_utc for c in path)


def der_certs(certs: Sequence[x509.Certificate]) -> tuple[bytes, ...]:
    """Distinct DER certificates, in a stable order."""
    seen: dict[bytes, None] = {}
    for c in certs:
        seen.setdefault(c.public_bytes(serialization.Encoding.DER), None)
    return tuple(seen)


@dataclass(frozen=True)
class Renewal:
    renewed: int  # evidence records given a new archive time-stamp
    started: int  # of those, evidence archived for the first time
    waiting: int  # evidence still without a signature time-stamp, not archivable yet


async def renew(
    ledger: Ledger,
    tsa: TimeStamper,
    tsa_trust: Sequence[x509.Certificate],
    validation_certs: Sequence[x509.Certificate],
    *,
    deadline: dt.datetime | None,
    batch: int = 1000,
) -> Renewal:
    """Add an archive time-stamp to every evidence whose newest time-stamp's TSA certificate
    expires before `deadline` (all of them when None), one TSA request per `batch` of evidence.

    `validation_certs` are the certificates a verifier needs besides those inside the evidence
    (the provider and TSA CA certificates); the CRLs are the ledger's, in force when the evidence
    was made.
    """
    current: dict[str, int] = {}
    archived: dict[str, int] = {}
    crls: list[x509.CertificateRevocationList] = []
    async for rec in ledger.walk():
        if rec.kind in EVIDENCE_VERSIONS:
            current[rec.evidence_id] = rec.seq
        elif rec.kind is Kind.ARCHIVE:
            archived[rec.evidence_id] = rec.seq
        elif rec.kind is Kind.REVOCATION:
            crls.append(x509.load_der_x509_crl(rec.der))
    extra = der_certs(validation_certs)
    todo: list[tuple[LedgerRecord, EvidenceRecord | None, tuple[bytes, ...], tuple[bytes, ...]]] = []
    waiting = 0
    for evidence_id, seq in current.items():
        rec = await ledger.get(seq)
        if not rec.stamped:
            waiting += 1
            continue
        existing = parse((await ledger.get(archived[evidence_id])).der) if evidence_id in archived else None
        newest = existing.chain[-1].token if existing else cms.signature_timestamp_token(cms.load(rec.der))
        assert newest is not None
        if deadline is not None and expires(newest, tsa_trust) > deadline:
            continue
        ci = cms.load(rec.der)
        token = cms.signature_timestamp_token(ci)
        assert token is not None
        certs = der_certs([*cms.certificates(ci), *cms.certificates(cms.load(token))]) + extra
        made = rec.created_at
        in_force = tuple(crl_der(c) for c in crls if revocation.in_force(c, made))
        todo.append((rec, existing, tuple(dict.fromkeys(certs)), in_force))
    renewed = started = 0
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        records = await stamp_batch([(e, r.der, c, k) for r, e, c, k in chunk], tsa)
        now = dt.datetime.now(dt.UTC)
        async with ledger.writing() as conn:
            for (rec, existing, _, _), er in zip(chunk, records, strict=True):
                await ledger.append_record(
                    conn,
                    NewRecord(
                        kind=Kind.ARCHIVE,
                        evidence_id=rec.evidence_id,
                        created_at=now,
                        der=er.dump(),
                        message_id=rec.message_id,
                        event=rec.event,
                        reason=rec.reason,
                        recipient=rec.recipient,
                    ),
                )
                renewed += 1
                started += existing is None
    return Renewal(renewed, started, waiting)
