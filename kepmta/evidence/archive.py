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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asn1crypto.cms
import asn1crypto.core
import asn1crypto.parser
import asn1crypto.tsp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kepmta.evidence import revocation
from kepmta.evidence.errors import EvidenceError, TimeStampError
from kepmta.evidence.ledger import OWN_EVIDENCE, Kind, Ledger, LedgerRecord, NewRecord, Writes
from kepmta.evidence.revocation import crl_der
from kepmta.evidence.tsa import TimeStamper, check_token
from kepmta.smime import cms

# RFC 5126 / EN 319 122-1 attribute types, reused as cryptoInfos attribute types.
ID_CERT_VALUES = "1.2.840.113549.1.9.16.2.23"
ID_REVOCATION_VALUES = "1.2.840.113549.1.9.16.2.24"
# The hash algorithms a chain may use (RFC 5754 §2 object identifiers), and their names for people.
DIGESTS = {
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
LABELS = {"sha256": "SHA-256", "sha384": "SHA-384", "sha512": "SHA-512"}
_BY_OID = {oid: name for name, oid in DIGESTS.items()}
# The records whose `der` is a CAdES-B-T signature an evidence record can keep speaking: our own
# evidence versions and the checkpoints. A peer's received evidence is not among them: its data
# group would need the peer's CRLs, which our ledger does not capture, and the peer renews its own.
ARCHIVABLE = (*OWN_EVIDENCE, Kind.CHECKPOINT)


class ArchiveError(EvidenceError):
    """An evidence record is malformed or its archive time-stamp chain does not hold."""


@dataclass(frozen=True)
class ArchiveTimeStamp:
    """RFC 4998 §4.1: a time-stamp over the root of a (reduced) hash tree."""

    tree: tuple[tuple[bytes, ...], ...]  # reducedHashtree: the leaf's list, then one list per level
    token: bytes  # the TimeStampToken, exactly as the TSA sent it

    def dump(self) -> bytes:
        levels = b"".join(_seq(b"".join(_octets(h) for h in level)) for level in self.tree)
        # RFC 4998 §4.1: digestAlgorithm [0] is left out, so the token's messageImprint names it.
        return _seq(_ctx(2, levels) + self.token)


@dataclass(frozen=True)
class ArchiveTimeStampChain:
    """RFC 4998 §5.2: archive time-stamps in one hash algorithm, each after the first a time-stamp
    renewal of the one before."""

    algorithm: str  # a key of DIGESTS
    stamps: tuple[ArchiveTimeStamp, ...]

    def dump(self) -> bytes:
        return _seq(b"".join(ats.dump() for ats in self.stamps))


@dataclass(frozen=True)
class EvidenceRecord:
    """RFC 4998 §3: the archive time-stamp chains of one archived data group; each chain after
    the first is a hash-tree renewal (§5.2) in a stronger hash algorithm."""

    chains: tuple[ArchiveTimeStampChain, ...]
    certificates: tuple[bytes, ...]  # DER certificates (CertificateValues)
    crls: tuple[bytes, ...]  # DER CRLs (RevocationValues crlVals)

    @property
    def algorithm(self) -> str:
        """The hash algorithm of the newest chain: the one time-stamp renewal continues in."""
        return self.chains[-1].algorithm

    @property
    def last_token(self) -> bytes:
        """The newest archive time-stamp, whose TSA certificate sets the next renewal deadline."""
        return self.chains[-1].stamps[-1].token

    def cert_values(self) -> bytes:
        return _seq(b"".join(self.certificates))

    def revocation_values(self) -> bytes:
        # RFC 5126 §6.3.4: RevocationValues ::= SEQUENCE { crlVals [0] SEQUENCE OF CertificateList … }
        return _seq(_ctx(0, _seq(b"".join(self.crls))) if self.crls else b"")

    def sequence(self) -> bytes:
        """DER of the ArchiveTimeStampSequence: atsc in RFC 4998 §5.2 hash-tree renewal."""
        return _seq(b"".join(chain.dump() for chain in self.chains))

    def leaves(self, evidence_der: bytes, algorithm: str) -> list[bytes]:
        """The hashes, in `algorithm`, that the first archive time-stamp of a new chain must have
        in its first hash tree list, sorted as that list holds them.

        RFC 4998 §5.2 hash-tree renewal: each data object's hash h(i) is combined with the hash
        ha(i) of the whole ArchiveTimeStampSequence so far, h(i)' = H(h(i) + ha(i)), so the new
        chain protects the old one, whose hashes may be the weak ones, as well as the data. The
        two are concatenated in binary ascending order, as RFC 4998 Figure 4 shows (erratum 7411).
        Without chains yet (§5.1), the leaves are the data objects' hashes.
        """
        data = (evidence_der, self.cert_values(), self.revocation_values())
        hashes = [_h(d, algorithm) for d in data]
        if self.chains:
            ha = _h(self.sequence(), algorithm)
            hashes = [_h(b"".join(sorted((h, ha))), algorithm) for h in hashes]
        return sorted(hashes)

    def dump(self) -> bytes:
        """DER of the EvidenceRecord (RFC 4998 Appendix A, IMPLICIT TAGS), tokens kept byte for byte."""
        # RFC 4998 §3: digestAlgorithms is the union of the algorithms of every chain.
        used = dict.fromkeys(chain.algorithm for chain in self.chains)
        algorithms = b"".join(_seq(asn1crypto.core.ObjectIdentifier(DIGESTS[a]).dump()) for a in used)
        infos = _attribute(ID_CERT_VALUES, self.cert_values()) + _attribute(
            ID_REVOCATION_VALUES, self.revocation_values()
        )
        return _seq(
            asn1crypto.core.Integer(1).dump()  # version v1
            + _seq(algorithms)  # digestAlgorithms
            + _ctx(0, infos)  # cryptoInfos [0] IMPLICIT
            + self.sequence()  # archiveTimeStampSequence
        )


def _h(data: bytes, algorithm: str) -> bytes:
    return hashlib.new(algorithm, data).digest()


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


def _imprint_algorithm(token: bytes) -> str:
    """The hash algorithm of a token's messageImprint: a chain's algorithm (RFC 4998 §4.1, the
    archive time-stamp names none of its own)."""
    try:
        content = cms.encapsulated_content(asn1crypto.cms.ContentInfo.load(token))
        imprint = asn1crypto.tsp.TSTInfo.load(content or b"")["message_imprint"]
        oid = imprint["hash_algorithm"]["algorithm"].dotted
    except (ValueError, TypeError, KeyError) as exc:
        raise ArchiveError(f"an archive time-stamp is not an RFC 3161 token: {exc}") from exc
    if oid not in _BY_OID:
        raise ArchiveError(f"an archive time-stamp uses the hash algorithm {oid}, which is not accepted")
    return _BY_OID[oid]


def parse(der: bytes) -> EvidenceRecord:
    """Read an EvidenceRecord as `EvidenceRecord.dump` writes it; ArchiveError otherwise."""
    try:
        cls, tag, _, body = _one(der)
        if (cls, tag) != (0, 16):
            raise ArchiveError("an evidence record is a SEQUENCE")
        fields = _children(body)
        if len(fields) < 3 or asn1crypto.core.Integer.load(fields[0][2]).native != 1:
            raise ArchiveError("evidence record version must be 1")
        for a in _children(fields[1][3]):
            oid = asn1crypto.core.ObjectIdentifier.load(_children(a[3])[0][2]).dotted
            if oid not in _BY_OID:
                raise ArchiveError(f"digest algorithm {oid} is not one this verifier checks")
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
        chains = []
        for _, _, _, chain_body in _children(fields[-1][3]):
            stamps = []
            for _, _, _, ats_body in _children(chain_body):
                parts = _children(ats_body)
                tree: tuple[tuple[bytes, ...], ...] = ()
                for cls, tag, _, contents in parts[:-1]:
                    if (cls, tag) == (2, 2):
                        tree = tuple(
                            tuple(
                                bytes(asn1crypto.core.OctetString.load(h[2]).native)
                                for h in _children(level[3])
                            )
                            for level in _children(contents)
                        )
                stamps.append(ArchiveTimeStamp(tree, parts[-1][2]))
            if not stamps:
                raise ArchiveError("an archive time-stamp chain is empty")
            chains.append(ArchiveTimeStampChain(_imprint_algorithm(stamps[0].token), tuple(stamps)))
    except ArchiveError:
        raise
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise ArchiveError(f"not an RFC 4998 evidence record: {exc}") from exc
    if not chains:
        raise ArchiveError("the evidence record holds no archive time-stamp")
    record = EvidenceRecord(tuple(chains), certs, crls)
    # The reading above is lenient about tags and extra fields; what we accept is exactly what we
    # write, so every byte of a record is either checked or reproduced.
    if record.dump() != der:
        raise ArchiveError("not the DER encoding of an evidence record in kepmta's profile")
    return record


def _fold(tree: Sequence[Sequence[bytes]], leaves: Sequence[bytes], algorithm: str) -> bytes:
    """RFC 4998 §4.3: the root a reduced hash tree leads to from the given data object hashes."""
    if not tree:
        if len(leaves) != 1:
            raise ArchiveError("several data objects need a hash tree")
        return leaves[0]
    first = tree[0]
    for leaf in leaves:
        if not any(hmac.compare_digest(leaf, h) for h in first):
            raise ArchiveError("a data object's hash is not in the archive time-stamp's hash tree")
    node = _h(b"".join(sorted(first)), algorithm)
    for level in tree[1:]:
        node = _h(b"".join(sorted([node, *level])), algorithm)
    return node


def _build_tree(leaves: Sequence[Sequence[bytes]], algorithm: str) -> tuple[bytes, list[list[list[bytes]]]]:
    """RFC 4998 §4.2: the root over `leaves` (each a list of data object hashes), and for each leaf
    its reduced hash tree. A node without a sibling moves up unchanged."""
    paths: list[list[list[bytes]]] = [[sorted(leaf)] for leaf in leaves]
    level = [(_h(b"".join(sorted(leaf)), algorithm), [i]) for i, leaf in enumerate(leaves)]
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
            up.append((_h(b"".join(sorted([a, b])), algorithm), under_a + under_b))
        level = up
    return level[0][0], paths


@dataclass(frozen=True)
class _Plan:
    """What one item of a batch gets: leaves in `algorithm` under a new chain or the last one."""

    base: EvidenceRecord
    algorithm: str
    leaves: list[bytes]
    new_chain: bool


def _plan(
    existing: EvidenceRecord | None,
    evidence_der: bytes,
    certs: tuple[bytes, ...],
    crls: tuple[bytes, ...],
    algorithm: str | None,
) -> _Plan:
    if existing is None:
        # RFC 4998 §5.1: a new record's first chain, over the data group.
        start = algorithm or "sha256"
        base = EvidenceRecord((), certs, crls)
        return _Plan(base, start, base.leaves(evidence_der, start), True)
    if algorithm is None or algorithm == existing.algorithm:
        # RFC 4998 §5.2 time-stamp renewal: the hash of the previous time-stamp, in the chain's algorithm.
        kept = existing.algorithm
        return _Plan(existing, kept, [_h(existing.last_token, kept)], False)
    # RFC 4998 §5.2 hash-tree renewal: a new chain over the data group and the old sequence.
    return _Plan(existing, algorithm, existing.leaves(evidence_der, algorithm), True)


async def stamp_batch(
    items: Sequence[tuple[EvidenceRecord | None, bytes, tuple[bytes, ...], tuple[bytes, ...]]],
    tsa: TimeStamper,
    *,
    algorithm: str | None = None,
) -> list[EvidenceRecord]:
    """Archive time-stamps over a batch, one TSA request per hash algorithm in it. Each item is
    (existing record or None, evidence DER, certificates, CRLs).

    Without `algorithm`, a new record starts a SHA-256 chain over the data group (RFC 4998 §5.1)
    and an existing one gets a time-stamp renewal over its last time-stamp in its chain's
    algorithm (§5.2). With `algorithm` (when the old one weakens), new records start in it and
    records whose last chain uses another get a hash-tree renewal: a new chain in `algorithm`
    (§5.2); records already in it get a time-stamp renewal.
    """
    plans = [_plan(e, d, c, k, algorithm) for e, d, c, k in items]
    out: dict[int, EvidenceRecord] = {}
    for alg in dict.fromkeys(plan.algorithm for plan in plans):
        which = [i for i, plan in enumerate(plans) if plan.algorithm == alg]
        root, paths = _build_tree([plans[i].leaves for i in which], alg)
        token = await tsa.timestamp(root, alg)
        for i, path in zip(which, paths, strict=True):
            plan = plans[i]
            ats = ArchiveTimeStamp(tuple(tuple(level) for level in path), token)
            chains = plan.base.chains
            if plan.new_chain:
                chains = (*chains, ArchiveTimeStampChain(alg, (ats,)))
            else:
                chains = (*chains[:-1], ArchiveTimeStampChain(alg, (*chains[-1].stamps, ats)))
            out[i] = EvidenceRecord(chains, plan.base.certificates, plan.base.crls)
    return [out[i] for i in range(len(items))]


@dataclass(frozen=True)
class ChainProof:
    """One verified chain: its hash algorithm and when each of its archive time-stamps was made."""

    algorithm: str
    times: tuple[dt.datetime, ...]
    tsa_subjects: tuple[str, ...]

    @property
    def label(self) -> str:
        return LABELS[self.algorithm]


@dataclass(frozen=True)
class ArchiveProof:
    """What a verified evidence record proves: the data existed at `first_time`, and the chains of
    archive time-stamps stay valid up to `checked_at`."""

    first_time: dt.datetime
    chains: tuple[ChainProof, ...]
    checked_at: dt.datetime
    certificates: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]


def _tsa_certificate(
    token: bytes, trust: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    ci = cms.load(token)
    return cms.signer_certificate(ci, extra=trust), cms.certificates(ci)


def verify_record(
    er: EvidenceRecord,
    evidence_der: bytes,
    tsa_trust: Sequence[x509.Certificate],
    at: dt.datetime,
    weak: Mapping[str, dt.datetime] | None = None,
) -> ArchiveProof:
    """RFC 4998 §5.3: the first archive time-stamp of each chain covers, in the chain's algorithm,
    the data group (and from the second chain on, the sequence of the chains before it); every
    later one covers the time-stamp before it; each TSA certificate was still valid when the next
    time-stamp, in the same chain or the next, renewed it; the last one is valid at `at`.

    `weak` maps a hash algorithm to the moment it stopped being trusted: a chain in it must have
    been followed by a hash-tree renewal before then (RFC 4998 §5.2), and the last chain must not
    be in it at `at`."""
    proofs: list[ChainProof] = []
    previous: tuple[bytes, dt.datetime, str] | None = None  # token, time and name of the last ATS
    for n, chain in enumerate(er.chains, 1):
        before = EvidenceRecord(er.chains[: n - 1], er.certificates, er.crls)
        times: list[dt.datetime] = []
        subjects: list[str] = []
        for i, ats in enumerate(chain.stamps):
            name = f"chain {n} ({LABELS[chain.algorithm]}) archive time-stamp {i + 1}"
            if i == 0:
                leaves = before.leaves(evidence_der, chain.algorithm)
            else:
                leaves = [_h(chain.stamps[i - 1].token, chain.algorithm)]
            try:
                info = check_token(
                    ats.token, _fold(ats.tree, leaves, chain.algorithm), tsa_trust, chain.algorithm
                )
            except (ArchiveError, TimeStampError) as exc:
                raise ArchiveError(f"{name}: {exc}") from exc
            if previous is not None:
                token, when, what = previous
                if info.gen_time < when:
                    raise ArchiveError(f"{name} is older than {what}, which it renews")
                _valid_at(token, tsa_trust, info.gen_time, what)
            times.append(info.gen_time)
            subjects.append(info.tsa_subject)
            previous = (ats.token, info.gen_time, name)
        proofs.append(ChainProof(chain.algorithm, tuple(times), tuple(subjects)))
    assert previous is not None  # parse and stamp_batch never make a record without a chain
    _valid_at(previous[0], tsa_trust, at, previous[2])
    for n, proof in enumerate(proofs, 1):
        since = (weak or {}).get(proof.algorithm)
        # A chain's hashes are relied on until the next chain re-hashed them, or until now.
        relied = proofs[n].times[0] if n < len(proofs) else at
        if since is not None and relied >= since:
            late = f"re-hashed only at {relied:%Y-%m-%d %H:%M:%SZ}" if n < len(proofs) else "never re-hashed"
            raise ArchiveError(
                f"chain {n} ({proof.label}): {proof.label} is weak since {since:%Y-%m-%d}, and the chain "
                f"was {late} (kepmta evidence renew --rehash)"
            )
    try:
        certs = tuple(x509.load_der_x509_certificate(c) for c in er.certificates)
        crls = tuple(x509.load_der_x509_crl(c) for c in er.crls)
    except ValueError as exc:
        raise ArchiveError(f"the archived validation data does not parse: {exc}") from exc
    return ArchiveProof(proofs[0].times[0], tuple(proofs), at, certs, crls)


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
    rehashed: int = 0  # of those, records given a new chain in a new hash algorithm


async def renew(
    ledger: Ledger,
    tsa: TimeStamper,
    tsa_trust: Sequence[x509.Certificate],
    validation_certs: Sequence[x509.Certificate],
    *,
    deadline: dt.datetime | None,
    batch: int = 1000,
    algorithm: str | None = None,
) -> Renewal:
    """Add an archive time-stamp to every evidence whose newest time-stamp's TSA certificate
    expires before `deadline` (all of them when None), one TSA request per `batch` of evidence.
    Checkpoints are renewed alike: they are CAdES-B-T too, and a checkpoint whose time-stamp no
    longer speaks would leave the chain head it seals unproven.

    With `algorithm` (a key of DIGESTS), every evidence not yet protected in it is renewed
    whatever the deadline: archived for the first time in it, or given a hash-tree renewal
    (RFC 4998 §5.2) — the old algorithm's hashes are what can no longer be trusted, not a date.

    `validation_certs` are the certificates a verifier needs besides those inside the evidence
    (the provider and TSA CA certificates); the CRLs are the ledger's, in force when the evidence
    was made.
    """
    current: dict[str, int] = {}
    archived: dict[str, int] = {}
    crls: list[x509.CertificateRevocationList] = []
    async for rec in ledger.walk():
        if rec.kind in ARCHIVABLE:
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
        if not cms.is_time_stamped(rec.der):
            waiting += 1
            continue
        existing = parse((await ledger.get(archived[evidence_id])).der) if evidence_id in archived else None
        newest = existing.last_token if existing else cms.signature_timestamp_token(cms.load(rec.der))
        assert newest is not None
        moving = algorithm is not None and (existing is None or existing.algorithm != algorithm)
        if not moving and deadline is not None and expires(newest, tsa_trust) > deadline:
            continue
        ci = cms.load(rec.der)
        token = cms.signature_timestamp_token(ci)
        assert token is not None
        certs = der_certs([*cms.certificates(ci), *cms.certificates(cms.load(token))]) + extra
        made = rec.created_at
        in_force = tuple(crl_der(c) for c in crls if revocation.in_force(c, made))
        todo.append((rec, existing, tuple(dict.fromkeys(certs)), in_force))
    renewed = started = rehashed = 0
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        records = await stamp_batch([(e, r.der, c, k) for r, e, c, k in chunk], tsa, algorithm=algorithm)
        now = dt.datetime.now(dt.UTC)
        appended = [
            NewRecord(
                kind=Kind.ARCHIVE,
                evidence_id=rec.evidence_id,
                created_at=now,
                der=er.dump(),
                message_id=rec.message_id,
                event=rec.event,
                reason=rec.reason,
                recipient=rec.recipient,
            )
            for (rec, _, _, _), er in zip(chunk, records, strict=True)
        ]

        def unit(w: Writes, appended: list[NewRecord] = appended) -> None:
            for new in appended:
                w.append(new)

        await ledger.transact(unit)
        for (_, existing, _, _), er in zip(chunk, records, strict=True):
            renewed += 1
            started += existing is None
            rehashed += existing is not None and len(er.chains) > len(existing.chains)
    return Renewal(renewed, started, waiting, rehashed)
