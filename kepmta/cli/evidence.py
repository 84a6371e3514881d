"""`kepmta evidence …`: offline checks of evidence."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import re
import zipfile
from pathlib import Path

from kepmta import config, pki
from kepmta.cli import evidence_ledger, evidence_people
from kepmta.cli.common import add_config_options, die, settings_from


def _read_evidence(path: Path) -> bytes:
    data = path.read_bytes()
    pem = re.search(rb"-----BEGIN [A-Z0-9 ]+-----(.*?)-----END", data, re.S)
    return base64.b64decode(pem.group(1)) if pem else data


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from kepmta.evidence.verify import describe, verify_evidence

    try:
        weak: dict[str, dt.datetime] = {}
        if args.ca:
            provider_ca = args.ca
            tsa_ca = args.tsa_ca or args.ca
        else:
            settings = settings_from(args)
            provider_ca = settings.provider_ca
            tsa_ca = args.tsa_ca or (settings.tsa.ca if settings.tsa else settings.provider_ca)
            weak.update(settings.weak_algorithms)
        for given in args.weak:
            name, _, day = given.partition("=")
            weak.update([config.weak_since(name.strip().lower(), day.strip(), "--weak")])
        trust, tsa_trust = pki.load_certs(provider_ca), pki.load_certs(tsa_ca)
        if zipfile.is_zipfile(args.file):
            return evidence_people.verify_bundle(args.file, trust, tsa_trust, weak)
        der = _read_evidence(args.file)
        record = _read_evidence(args.ers) if args.ers else None
    except (config.ConfigError, OSError, ValueError) as e:
        return die(str(e))
    report = verify_evidence(der, trust, tsa_trust, evidence_record=record, weak=weak)
    print(describe(report))
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evidence = sub.add_parser("evidence", help="work with evidence")
    ev_sub = evidence.add_subparsers(dest="evidence_command", required=True)
    verify = ev_sub.add_parser(
        "verify",
        help="check an evidence file (<Event>.p7m, DER or PEM) or a bundle (.zip) offline",
        description="Checks the CMS signature, the signer's chain to the provider CA, the RFC 3161 "
        "time-stamp and its imprint, and the evidence XML; prints who, what and when. In a bundle, "
        "a peer provider's evidence is checked against that peer's CA carried in it "
        "(peers/DOMAIN/ca.pem), not against --ca. Exit 0 only if every check holds.",
    )
    verify.add_argument("file", type=Path)
    verify.add_argument(
        "--ca", type=Path, help="provider CA certificate(s), PEM (default: from the configuration)"
    )
    verify.add_argument(
        "--tsa-ca", type=Path, help="CA certificate(s) of the time-stamp authority (default: --ca)"
    )
    verify.add_argument(
        "--ers",
        type=Path,
        help="the evidence's RFC 4998 evidence record (.ers) from `kepmta evidence renew`: "
        "needed once the time-stamp's TSA certificate has expired",
    )
    verify.add_argument(
        "--weak",
        action="append",
        default=[],
        metavar="ALGORITHM=DATE",
        help="a hash algorithm weak since DATE (e.g. sha256=2040-01-01): an evidence record chain in "
        "it must have been re-hashed before then; repeatable, adds to [evidence] weak_algorithms",
    )
    add_config_options(verify)
    verify.set_defaults(func=cmd_evidence_verify)
    evidence_people.register(ev_sub)
    evidence_ledger.register(ev_sub)
