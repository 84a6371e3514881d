"""`kepmta serve` and `kepmta dev-info`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kepmta import addresses, config, devinit, logs
from kepmta.cli.common import DEFAULT_DATA, die


def _dev_settings(
    data: Path, port_base: int | None, domain: str, database_url: str
) -> tuple[config.Settings, devinit.Demo]:
    if devinit.needs_init(data):
        print(f"kepmta: creating a development provider for {domain} in {data}", file=sys.stderr)
        devinit.create_identity(data, devinit.choose_ports(port_base), domain, database_url)
    elif not devinit.is_initialised(data):
        raise config.ConfigError(
            f"{data} is neither empty nor a kepmta development folder; give --data another folder"
        )
    return config.load(data / devinit.CONFIG_NAME), devinit.load_demo(data)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    from kepmta.app import serve
    from kepmta.db.migrate import DatabaseNotCurrent

    try:
        if args.dev:
            if not addresses.is_domain(args.domain):
                return die(f"--domain {args.domain!r} is not a domain name")
            settings, demo = _dev_settings(args.data, args.port_base, args.domain.lower(), args.database)
        else:
            if args.config is None:
                return die("serve needs --config FILE, or --dev for a development provider")
            settings, demo = config.load(args.config), None
    except config.ConfigError as e:
        return die(str(e))
    logs.configure(settings.log_format, verbose=args.verbose)
    try:
        # uvloop's transports and TLS are compiled: bench/imap.py ran 7 to 10 % more commands a
        # second on it, and bench/submission.py accepted 10 % more messages.
        uvloop.run(serve(settings, demo))
    except DatabaseNotCurrent as e:
        if not e.status.needs_upgrade:
            return die(str(e), 1)
        return die(f"{e.status.describe()}: run `kepmta db upgrade --config {settings.source}`", 1)
    except OSError as e:
        return die(f"cannot serve: {e}", 1)
    return 0


def dev_info(data: Path) -> dict[str, object]:
    settings = config.load(data / devinit.CONFIG_NAME)
    demo = devinit.load_demo(data)
    return {
        "domain": settings.domain,
        "data": str(data.resolve()),
        "config": str(settings.source),
        "ports": settings.ports.as_dict(),
        "provider_ca": str(settings.provider_ca),
        "qualified_ca": str(settings.qualified_ca),
        "tsa_cert": str(settings.tsa_cert),
        "accounts": [
            {"address": a.address, "password": a.password, "cert": str(a.cert), "key": str(a.key)}
            for a in demo.accounts
        ],
        "entities": [
            {"address": e.address, "legal_name": e.legal_name, "operators": list(e.operators)}
            for e in demo.entities
        ],
        "peer_domains": [d for p in settings.peers for d in p.domains],
    }


def cmd_dev_info(args: argparse.Namespace) -> int:
    if not devinit.is_initialised(args.data):
        return die(
            f"{args.data} is not an initialised development folder (run `kepmta serve --dev` first)", 1
        )
    try:
        info = dev_info(args.data)
    except config.ConfigError as e:
        return die(str(e))
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    ports = info["ports"]
    assert isinstance(ports, dict)
    print(f"Development KEP provider for {info['domain']} in {info['data']}")
    print(f"  SMTP submission  127.0.0.1:{ports['submission']} (STARTTLS), :{ports['submissions']} (TLS)")
    print(f"  IMAP             127.0.0.1:{ports['imap']} (STARTTLS), :{ports['imaps']} (TLS)")
    if "relay" in ports:
        print(f"  relay (peers)    127.0.0.1:{ports['relay']} (STARTTLS, client certificate)")
    if "api" in ports:
        print(f"  integration API  https://localhost:{ports['api']}/docs, verification page /dogrula")
    if "metrics" in ports:
        print(f"  metrics          http://127.0.0.1:{ports['metrics']}/metrics (Prometheus)")
    print(f"  provider CA      {info['provider_ca']}  (trust it for TLS and evidence)")
    print(f"  qualified CA     {info['qualified_ca']}")
    print(f"  time-stamp cert  {info['tsa_cert']}")
    print("Accounts (login, password, S/MIME certificate and key):")
    accounts = info["accounts"]
    assert isinstance(accounts, list)
    for a in accounts:
        print(f"  {a['address']}  {a['password']}\n      {a['cert']}\n      {a['key']}")
    entities, peers = info["entities"], info["peer_domains"]
    assert isinstance(entities, list) and isinstance(peers, list)
    for entity in entities:
        operators = ", ".join(entity["operators"])
        print(f"Legal entity {entity['address']} ({entity['legal_name']}), operated by {operators}")
    print(f"Peer provider domains: {', '.join(peers)}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="run a development provider from --data, creating it (PKI, database, demo accounts) "
        "when the folder is missing or empty",
    )
    serve.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="development folder (default: %(default)s)"
    )
    serve.add_argument(
        "--port-base",
        type=int,
        metavar="N",
        help="when creating a development folder, listen on N (submission), N+1 (submissions), "
        "N+2 (imap), N+3 (imaps), N+4 (relay from peers), N+5 (integration API over HTTPS), N+6 "
        "(Prometheus metrics over HTTP); default 10587/10465/10143/10993/10025/10443/10909, or free "
        "ports if those are taken",
    )
    serve.add_argument(
        "--domain",
        default=devinit.DOMAIN,
        help="when creating a development folder, the KEP domain of its provider, accounts and "
        "certificates (default: %(default)s); two folders with two domains make two providers",
    )
    serve.add_argument(
        "--database",
        metavar="URL",
        default=devinit.DATABASE_URL,
        help="when creating a development folder, the [database] url of its kepmta.toml, e.g. "
        "postgresql+asyncpg://kepmta@127.0.0.1/kepmta for an empty PostgreSQL database "
        "(default: SQLite in the folder)",
    )
    serve.add_argument("--config", type=Path, help="kepmta.toml to serve from (without --dev)")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    serve.set_defaults(func=cmd_serve)

    info = sub.add_parser("dev-info", help="ports, CA files and demo accounts of a development folder")
    info.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="development folder (default: %(default)s)"
    )
    info.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    info.set_defaults(func=cmd_dev_info)
