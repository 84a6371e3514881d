"""`kepmta evidence show|export|report`: one message's evidence for people and outside verifiers.

All three only read the database. MESSAGE-ID is the provider message id (the dispatch's
Message-ID, with or without <>), or the sender's own Message-ID when exactly one message has it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from kepmta import config, pki
from kepmta.cli.common import add_config_options, die, settings_from
from kepmta.evidence import archive, bundle, timeline
from kepmta.evidence.errors import EvidenceError


def _load(args: argparse.Namespace) -> tuple[config.Settings, timeline.MessageEvidence]:
    settings = settings_from(args)
    return settings, asyncio.run(timeline.load_message(settings.database_url, args.message_id))


def provider_trust(settings: config.Settings) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """The provider CA, and the CAs a time-stamp must chain to: an external TSA's own, else (the
    built-in TSA) the provider CA, as `evidence verify` defaults."""
    anchors = pki.load_certs(settings.provider_ca)
    if settings.tsa is not None:
        return anchors, pki.load_certs(settings.tsa.ca)
    return anchors, anchors


def peer_trust(settings: config.Settings) -> dict[str, list[x509.Certificate]]:
    """By each KEP domain of each registered peer provider, the CAs its evidence is signed and
    time-stamped under (its `evidence_ca`): a peer's received evidence is checked against these."""
    anchors: dict[str, list[x509.Certificate]] = {}
    for peer in settings.peers:
        if peer.evidence_ca is not None:
            certs = pki.load_certs(peer.evidence_ca)
            anchors.update(dict.fromkeys(peer.domains, certs))
    return anchors


def _signer(settings: config.Settings) -> pki.KeyPair:
    """The transaction certificate's key, from its PEM file or the PKCS#11 token."""
    if settings.evidence_key is not None:
        return pki.load_pair(settings.evidence_cert, settings.evidence_key)
    if settings.evidence_key_uri is None or settings.evidence_pin_file is None:
        raise config.ConfigError(f"{settings.source}: no evidence key to sign the bundle manifest with")
    from kepmta.evidence import pkcs11

    cert = pki.load_certs(settings.evidence_cert)[0]
    return pkcs11.load_pair(settings.evidence_key_uri, settings.evidence_pin_file, cert)


def _write(path: Path, data: bytes) -> None:
    """Write whole or not at all: a half-written bundle or report must never look finished."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_show(args: argparse.Namespace) -> int:
    try:
        settings, message = _load(args)
        checked = timeline.check(
            message, *provider_trust(settings), settings.weak_algorithms, peers=peer_trust(settings)
        )
    except (config.ConfigError, timeline.NotFound, OSError, ValueError) as e:
        return die(str(e))
    if args.json:
        print(json.dumps(_as_json(message, checked), indent=2, ensure_ascii=False))
    else:
        print(timeline.render(message, checked))
    return 0 if all(c.ok for c in checked) else 1


def _as_json(message: timeline.MessageEvidence, checked: Sequence[timeline.Checked]) -> dict[str, Any]:
    results = {c.entry.seq: c for c in checked}
    return {
        "message_id": message.message_id,
        "ua_message_id": message.ua_message_id,
        "sender": message.sender,
        "operator": message.operator,
        "recipients": list(message.recipients),
        "subject": message.subject,
        "submitted_at": message.submitted_at.isoformat(),
        "sha256": message.digest.hex() if message.digest else None,
        "events": [
            {
                "seq": e.seq,
                "evidence_id": e.evidence.evidence_id,
                "event": e.evidence.event.value,
                "ptt_code": e.evidence.event.ptt_code,
                "reason": e.evidence.reason.value,
                "details": e.evidence.details,
                "event_time": e.evidence.event_time.isoformat(),
                "recipient": e.evidence.recipient.address if e.evidence.recipient else None,
                "issuer": {"name": e.evidence.issuer_name, "domain": e.evidence.issuer_domain},
                "received": e.received,
                "verified": results[e.seq].ok,
                "renewal": results[e.seq].renewal,
            }
            for e in message.entries
        ],
    }


def cmd_export(args: argparse.Namespace) -> int:
    try:
        settings, message = _load(args)
        certs = pki.load_certs(settings.evidence_cert)
        anchors, tsa_anchors = provider_trust(settings)
        data = bundle.build(
            message,
            provider_name=settings.provider_name,
            provider_ca=anchors,
            tsa_ca=tsa_anchors,
            signer=_signer(settings),
            chain=certs[1:],
            peer_anchors=peer_trust(settings),
        )
        _write(args.output, data)
    except (config.ConfigError, timeline.NotFound, EvidenceError, OSError, ValueError) as e:
        return die(str(e))
    print(f"{args.output}: {len(message.entries)} evidence of <{message.message_id}>, {len(data)} bytes")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    # fpdf and its fonts load only for this command
    from kepmta.evidence import report

    try:
        settings, message = _load(args)
        checked = timeline.check(
            message, *provider_trust(settings), settings.weak_algorithms, peers=peer_trust(settings)
        )
        data = report.render(
            message, checked, provider_name=settings.provider_name, provider_domain=settings.domain
        )
        _write(args.output, data)
    except (config.ConfigError, timeline.NotFound, report.FontMissing, OSError, ValueError) as e:
        return die(str(e))
    verdict = "all evidence valid" if checked and all(c.ok for c in checked) else "NOT all evidence valid"
    print(f"{args.output}: report of <{message.message_id}>, {len(message.entries)} evidence, {verdict}")
    return 0


def cmd_ers(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        evidence, record = asyncio.run(timeline.renewed_evidence(settings.database_url, args.evidence_id))
        if args.p7m is not None:
            _write(args.p7m, evidence.der)
        _write(args.output, record.der)
    except (config.ConfigError, timeline.NotFound, OSError, ValueError) as e:
        return die(str(e))
    chains = ", ".join(c.algorithm for c in archive.parse(record.der).chains)
    also = f" and {args.p7m}" if args.p7m is not None else ""
    print(
        f"{args.output}{also}: evidence record of {evidence.evidence_id} (ledger seq {record.seq}, {chains})"
    )
    return 0


def verify_bundle(
    path: Path,
    trust: list[x509.Certificate],
    tsa_trust: list[x509.Certificate],
    weak: Mapping[str, dt.datetime] | None = None,
) -> int:
    """`kepmta evidence verify FILE.zip`: the whole bundle offline; exit 0 only if all holds."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return die(str(e))
    result = bundle.verify(data, trust, tsa_trust, weak)
    print(bundle.describe(result))
    return 0 if result.ok else 1


def register(ev_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ident = "MESSAGE-ID"
    ident_help = "the provider message id (with or without <>), or the sender's unique Message-ID"

    show = ev_sub.add_parser(
        "show",
        help="print a message's evidence as a timeline",
        description="Prints the message, then each evidence in ledger order (time, KEP code, event, "
        "reason, recipient) and whether it verifies offline; evidence received from a peer provider "
        "is marked with its issuer and checked against that peer's evidence CA from the peer "
        "registry. Exit 1 if any evidence does not verify.",
    )
    show.add_argument("message_id", metavar=ident, help=ident_help)
    show.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_config_options(show)
    show.set_defaults(func=cmd_show)

    export = ev_sub.add_parser(
        "export",
        help="write a message's evidence bundle (ZIP) for outside verifiers",
        description="Writes every evidence of the message with its time-stamp tokens, the "
        "certificates, the ledger records and chain, revocation data, a signed manifest and a README "
        "of the openssl commands that check it; a peer provider's evidence travels with that peer's "
        "evidence CA from the peer registry (peers/DOMAIN/ca.pem). `kepmta evidence verify FILE.zip` "
        "checks it offline.",
    )
    export.add_argument("message_id", metavar=ident, help=ident_help)
    export.add_argument("-o", "--output", type=Path, required=True, help="the .zip file to write")
    add_config_options(export)
    export.set_defaults(func=cmd_export)

    ers = ev_sub.add_parser(
        "ers",
        help="write one evidence's newest RFC 4998 evidence record (.ers), and the evidence itself",
        description="For someone who holds a receipt's .p7m: its newest evidence record from "
        "`kepmta evidence renew`, which `kepmta evidence verify FILE.p7m --ers FILE.ers` needs once "
        "the time-stamp's TSA certificate has expired. EVIDENCE-ID is the evidence's "
        "EvidenceIdentifier (as in `kepmta evidence show`).",
    )
    ers.add_argument("evidence_id", metavar="EVIDENCE-ID", help="the evidence id (with or without <>)")
    ers.add_argument("-o", "--output", type=Path, required=True, help="the .ers file to write")
    ers.add_argument("--p7m", type=Path, help="also write the evidence (its newest version) here")
    add_config_options(ers)
    ers.set_defaults(func=cmd_ers)

    pdf = ev_sub.add_parser(
        "report",
        help="write a printable PDF report of a message's evidence (Turkish and English)",
        description="Renders the message, its parties and digest, the event timeline and the "
        "verification of each evidence as a PDF (needs the DejaVu fonts: fonts-dejavu-core).",
    )
    pdf.add_argument("message_id", metavar=ident, help=ident_help)
    pdf.add_argument("-o", "--output", type=Path, required=True, help="the .pdf file to write")
    add_config_options(pdf)
    pdf.set_defaults(func=cmd_report)


__all__ = ["peer_trust", "provider_trust", "register", "verify_bundle"]
