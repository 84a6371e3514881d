"""`kepmta evidence audit | renew | checkpoint`: the ledger as a whole, over the years."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

from kepmta import config, pki
from kepmta.cli.common import add_config_options, die, settings_from


def _settings(args: argparse.Namespace) -> config.Settings | int:
    try:
        return settings_from(args)
    except (config.ConfigError, OSError, ValueError) as e:
        return die(str(e))


def cmd_audit(args: argparse.Namespace) -> int:
    from kepmta.app import tsa_trust
    from kepmta.db.engine import opened
    from kepmta.evidence.checkpoint import audit, digest_line
    from kepmta.evidence.ledger import Ledger

    s = _settings(args)
    if isinstance(s, int):
        return s

    async def run() -> int:
        async with opened(s.database_url) as engine:
            result = await audit(
                Ledger(engine), pki.load_certs(s.provider_ca), tsa_trust(s), s.weak_algorithms
            )
        for problem in result.problems:
            print(problem)
        for note in result.notes:
            print(f"note: {note}")
        if result.ok:
            print(digest_line(result))
            return 0
        print(f"ledger NOT intact: {len(result.problems)} problem(s) in {result.records} records")
        return 1

    return asyncio.run(run())


def cmd_renew(args: argparse.Namespace) -> int:
    from kepmta.app import time_stamper, tsa_trust
    from kepmta.db.engine import opened
    from kepmta.evidence.archive import LABELS, renew
    from kepmta.evidence.errors import TimeStampError
    from kepmta.evidence.ledger import Ledger

    s = _settings(args)
    if isinstance(s, int):
        return s
    deadline = None if args.all else dt.datetime.now(dt.UTC) + dt.timedelta(days=args.within)

    async def run() -> int:
        try:
            async with opened(s.database_url) as engine:
                trust = tsa_trust(s)
                validation = [*pki.load_certs(s.provider_ca), *trust]
                done = await renew(
                    Ledger(engine),
                    time_stamper(s),
                    trust,
                    validation,
                    deadline=deadline,
                    algorithm=args.rehash,
                )
        except TimeStampError as e:
            return die(f"no archive time-stamp: {e}", 1)
        moved = f", {done.rehashed} re-hashed to {LABELS[args.rehash]}" if args.rehash else ""
        print(
            f"renewed {done.renewed} evidence and checkpoints ({done.started} archived for the first "
            f"time{moved}); "
            f"{done.waiting} still wait for their signature time-stamp"
        )
        return 0

    return asyncio.run(run())


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from kepmta.app import time_stamper
    from kepmta.db.engine import opened
    from kepmta.evidence.checkpoint import Checkpointer
    from kepmta.evidence.errors import TimeStampError
    from kepmta.evidence.keys import evidence_pair
    from kepmta.evidence.ledger import Ledger
    from kepmta.evidence.signer import EvidenceSigner

    s = _settings(args)
    if isinstance(s, int):
        return s

    async def run() -> int:
        try:
            async with opened(s.database_url) as engine:
                ledger = Ledger(engine)
                head = await ledger.head()
                if head is None:
                    return die("the ledger is empty: nothing to seal", 1)
                signer = EvidenceSigner(
                    evidence_pair(s), pki.load_certs(s.evidence_cert)[1:], time_stamper(s)
                )
                maker = Checkpointer(ledger, signer, s.domain, every_records=1, every=dt.timedelta(0))
                rec = await maker.make(head)
        except TimeStampError as e:
            return die(f"no checkpoint: {e}", 1)
        print(f"checkpoint at seq {rec.seq} seals seq {head.seq} sha256 {head.hash.hex()}")
        return 0

    return asyncio.run(run())


def register(ev_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = ev_sub.add_parser(
        "audit",
        help="walk the whole evidence ledger and report any altered, removed or reordered record",
        description="Checks every record's hash and its link to the one before, every evidence "
        "signature and time-stamp, every checkpoint against the chain head it seals, and every "
        "archive evidence record. Exit 0 and one summary line when intact; otherwise one line per "
        "problem with its ledger position (seq), exit 1.",
    )
    add_config_options(audit)
    audit.set_defaults(func=cmd_audit)

    renew = ev_sub.add_parser(
        "renew",
        help="add an RFC 4998 archive time-stamp to evidence and checkpoints whose time-stamps expire soon",
        description="Keeps evidence verifiable after its TSA or provider certificates expire: one "
        "archive time-stamp (one TSA request per 1000 evidence, through a hash tree) over each "
        "evidence, its certificates and the CRLs captured when it was made, or over its previous "
        "archive time-stamp; ledger checkpoints alike. Run it regularly (e.g. monthly from cron). "
        "With --rehash, when the hash algorithm in use weakens: a new chain in the stronger "
        "algorithm over every evidence and its previous chains (RFC 4998 hash-tree renewal), "
        "whatever --within says.",
    )
    renew.add_argument(
        "--within",
        type=int,
        default=180,
        metavar="DAYS",
        help="renew evidence whose newest time-stamp's TSA certificate expires within DAYS (default 180)",
    )
    renew.add_argument("--all", action="store_true", help="renew every time-stamped evidence")
    renew.add_argument(
        "--rehash",
        choices=("sha384", "sha512"),
        help="move every evidence not yet protected with this hash algorithm to it: a new archive "
        "time-stamp chain, the TSA asked for an imprint in it; later runs renew in it",
    )
    add_config_options(renew)
    renew.set_defaults(func=cmd_renew)

    checkpoint = ev_sub.add_parser(
        "checkpoint",
        help="seal the ledger head now with a signed, time-stamped checkpoint",
        description="The server makes checkpoints by itself ([evidence] checkpoint_records and "
        "checkpoint_minutes); this makes one at once, e.g. before a backup.",
    )
    add_config_options(checkpoint)
    checkpoint.set_defaults(func=cmd_checkpoint)
