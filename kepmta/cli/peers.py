"""`kepmta peers …`: print and edit the registry of peer KEP providers, and print our DKIM records."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from kepmta import config, devinit, dkim
from kepmta.cli.accounts import _table
from kepmta.cli.common import add_config_options, die, settings_from
from kepmta.peers import (
    DEFAULT_PORT,
    DKIM_ALGORITHMS,
    DkimKey,
    Peer,
    Peers,
    dkim_algorithm,
    save_peers,
)


class _Refused(Exception):
    """An edit the registry cannot take, said in one line."""


def _registry(settings: config.Settings) -> tuple[Path, Peers]:
    if settings.peers_file is None:
        raise _Refused(f"{settings.source}: no [peers] file is configured")
    return settings.peers_file, Peers(settings.peers)


def _endpoint(peer: Peer) -> str | None:
    return f"{peer.host}:{peer.port}" if peer.host is not None else None


def _row(peer: Peer) -> dict[str, Any]:
    return {
        "name": peer.name,
        "domains": list(peer.domains),
        "host": peer.host,
        "port": peer.port,
        "tls_ca": str(peer.tls_ca) if peer.tls_ca else None,
        "tls_pins": list(peer.tls_pins),
        "tls_server_name": peer.tls_server_name,
        "evidence_ca": str(peer.evidence_ca) if peer.evidence_ca else None,
        "dkim": [
            {"selector": k.selector, "algorithm": k.algorithm, "public_key": k.public_key} for k in peer.dkim
        ],
    }


def _list(args: argparse.Namespace, settings: config.Settings) -> int:
    _, peers = _registry(settings)
    if args.json:
        print(json.dumps([_row(p) for p in peers.peers], ensure_ascii=False))
        return 0
    rows = [
        {
            "name": p.name,
            "domains": ", ".join(p.domains),
            "endpoint": _endpoint(p) or "not reachable",
            "dkim": ", ".join(k.selector for k in p.dkim) or None,
        }
        for p in peers.peers
    ]
    print(_table(rows, ["name", "domains", "endpoint", "dkim"]))
    return 0


def _find(peers: Peers, name_or_domain: str) -> Peer:
    peer = peers.named(name_or_domain)
    if peer is None:
        raise _Refused(f"no peer is named {name_or_domain!r} or has it as a domain")
    return peer


def _show(args: argparse.Namespace, settings: config.Settings) -> int:
    _, peers = _registry(settings)
    peer = _find(peers, args.peer)
    if args.json:
        print(json.dumps(_row(peer), ensure_ascii=False))
        return 0
    lines = [
        ("name", peer.name),
        ("domains", ", ".join(peer.domains)),
        ("endpoint", _endpoint(peer) or "none (a known KEP domain, not reachable yet)"),
        ("TLS CA", str(peer.tls_ca) if peer.tls_ca else None),
        ("TLS pins", ", ".join(peer.tls_pins) or None),
        ("TLS server name", peer.tls_name),
        ("evidence CA", str(peer.evidence_ca) if peer.evidence_ca else None),
    ]
    lines += [(f"DKIM {k.selector}", f"{k.algorithm} {k.public_key}") for k in peer.dkim]
    if not peer.dkim:
        lines.append(("DKIM", None))
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value if value is not None else '-'}")
    return 0


def _save(peers: Peers, path: Path, settings: config.Settings) -> None:
    if settings.domain in peers.domains:
        raise _Refused(f"{settings.domain} is this provider's own domain, not a peer's")
    save_peers(peers, path)


def _without_domains(peers: Peers, domains: tuple[str, ...]) -> tuple[Peer, ...]:
    return tuple(p for p in peers.peers if not set(p.domains) & set(domains))


def _add(args: argparse.Namespace, settings: config.Settings) -> int:
    path, peers = _registry(settings)
    peer = Peer(
        name=args.name,
        domains=tuple(dict.fromkeys(d.lower() for d in args.domain)),
        host=args.host,
        port=args.port,
        tls_ca=args.tls_ca,
        tls_pins=tuple(p.lower() for p in args.tls_pin),
        tls_server_name=args.tls_server_name,
        evidence_ca=args.evidence_ca,
        dkim=tuple(args.dkim),
    )
    for domain in peer.domains:
        owner = peers.for_domain(domain)
        if owner is not None:
            raise _Refused(f"{domain} is already a domain of {owner.name!r}; remove that entry first")
    if peers.named(peer.name) is not None:
        raise _Refused(f"a peer named {peer.name!r} is already registered; remove it first")
    try:
        _save(Peers((*peers.peers, peer)), path, settings)
    except config.ConfigError as e:
        raise _Refused(f"not added: {e}") from None
    print(f"{peer.name} ({', '.join(peer.domains)}) added to {path}")
    return 0


def _remove(args: argparse.Namespace, settings: config.Settings) -> int:
    path, peers = _registry(settings)
    peer = _find(peers, args.peer)
    save_peers(Peers(tuple(p for p in peers.peers if p is not peer)), path)
    print(f"{peer.name} ({', '.join(peer.domains)}) removed from {path}")
    return 0


def _private_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise _Refused(f"{path}: not an unencrypted PEM private key") from None


def _dkim_keys(settings: config.Settings) -> list[DkimKey]:
    if settings.relay is None:
        raise _Refused(f"{settings.source}: no [relay] table, so no DKIM keys")
    keys = []
    for signing in settings.relay.dkim:
        key = _private_key(signing.key)
        if dkim_algorithm(key) != signing.algorithm:
            raise _Refused(f"{signing.key}: not an {signing.algorithm} key (selector {signing.selector})")
        keys.append(DkimKey(signing.selector, signing.algorithm, dkim.key_public_value(key)))
    return keys


def _dkim_record(args: argparse.Namespace, settings: config.Settings) -> int:
    for key in _dkim_keys(settings):
        print(dkim.txt_record(key.selector, settings.domain, key.algorithm, key.public_key))
    return 0


def _add_dev(args: argparse.Namespace, settings: config.Settings) -> int:
    path, peers = _registry(settings)
    if not devinit.is_initialised(args.peer_data):
        raise _Refused(
            f"{args.peer_data} is not a development folder (make it with `kepmta serve --dev --data DIR`)"
        )
    other = config.load(args.peer_data / devinit.CONFIG_NAME)
    relay_port = other.ports.relay
    peer = Peer(
        name=other.provider_name,
        domains=(other.domain,),
        # Folders made before the relay listener existed have no relay port: known, not reachable.
        host="127.0.0.1" if relay_port is not None else None,
        port=relay_port if relay_port is not None else DEFAULT_PORT,
        # The development provider CA issued its TLS and transaction certificates alike.
        tls_ca=other.provider_ca,
        tls_server_name="localhost",
        evidence_ca=other.provider_ca,
        dkim=tuple(_dkim_keys(other)) if other.relay is not None else (),
    )
    kept = _without_domains(peers, peer.domains)
    if any(p.name.casefold() == peer.name.casefold() for p in kept):
        raise _Refused(f"a peer named {peer.name!r} with other domains is already registered")
    _save(Peers((*kept, peer)), path, settings)
    endpoint = _endpoint(peer) or "no relay port"
    print(f"{peer.name} ({other.domain}, {endpoint}) registered in {path}")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, config.Settings], int]] = {
    "list": _list,
    "show": _show,
    "add": _add,
    "remove": _remove,
    "dkim-record": _dkim_record,
    "add-dev": _add_dev,
}


def cmd_peers(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[args.peers_command](args, settings_from(args))
    except (_Refused, config.ConfigError) as e:
        return die(str(e))
    except OSError as e:
        return die(str(e))


def _file(text: str) -> Path:
    # Resolved here: the registry stores paths relative to its own folder, not to ours.
    path = Path(text).resolve()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def _dkim_option(text: str) -> DkimKey:
    selector, _, rest = text.partition(":")
    algorithm, _, public_key = rest.partition(":")
    if not (selector and public_key) or algorithm.lower() not in DKIM_ALGORITHMS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give SELECTOR:ALGORITHM:BASE64 with ALGORITHM ed25519 or rsa"
        )
    return DkimKey(selector.lower(), algorithm.lower(), public_key)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    peers = sub.add_parser("peers", help="the registry of peer KEP providers and our DKIM records")
    group = peers.add_subparsers(dest="peers_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser = group.add_parser(name, help=help, description=help)
        add_config_options(parser)
        parser.set_defaults(func=cmd_peers)
        return parser

    command("list", "list the peer providers").add_argument("--json", action="store_true", help="JSON")
    show = command("show", "show every setting of one peer provider")
    show.add_argument("peer", metavar="NAME_OR_DOMAIN")
    show.add_argument("--json", action="store_true", help="JSON for scripts")

    add = command("add", "register a peer provider (refused if one of its domains is registered)")
    add.add_argument("--name", required=True, help="the provider's legal name")
    add.add_argument(
        "--domain", action="append", required=True, help="a KEP domain of the provider (repeat for more)"
    )
    add.add_argument("--host", help="its relay endpoint; without it the domains are known, not reachable")
    add.add_argument("--port", type=int, default=DEFAULT_PORT, help="relay port (default: %(default)s)")
    add.add_argument(
        "--tls-ca", type=_file, help="PEM bundle verifying its TLS certificates (needed with --host)"
    )
    add.add_argument(
        "--tls-pin",
        action="append",
        default=[],
        metavar="HEX",
        help="SHA-256 (hex) of a DER certificate it must present, besides --tls-ca (repeatable)",
    )
    add.add_argument("--tls-server-name", help="the name on its server certificate (default: --host)")
    add.add_argument(
        "--evidence-ca", type=_file, help="PEM certificates its dispatches and evidence are signed under"
    )
    add.add_argument(
        "--dkim",
        type=_dkim_option,
        action="append",
        default=[],
        metavar="SELECTOR:ALGORITHM:BASE64",
        help="a DKIM public key it signs with, as the p= of its DNS record (repeatable)",
    )

    remove = command("remove", "remove a peer provider from the registry")
    remove.add_argument("peer", metavar="NAME_OR_DOMAIN")

    command("dkim-record", "print the DNS TXT records of our relay DKIM keys ([relay] of kepmta.toml)")

    dev = command("add-dev", "register another development provider's folder as a peer (replacing it)")
    dev.add_argument(
        "--peer-data",
        type=Path,
        required=True,
        help="the other provider's folder (kepmta serve --dev --data)",
    )
