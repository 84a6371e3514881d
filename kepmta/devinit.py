"""`serve --dev`: a complete development provider in one folder, made on first start.

Creates a provider CA with the transaction (evidence-signing) and TLS certificates under it, a
time-stamp authority certificate, a separate "qualified" CA standing in for the e-signature
providers, the database, and demo accounts with passwords and personal S/MIME certificates.
"""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kepmta import addresses, pki
from kepmta.accounts import AccountState, AccountStore
from kepmta.config import Ports

DOMAIN = "kep.test"
DEFAULT_PORTS = Ports(
    submission=10587, submissions=10465, imap=10143, imaps=10993, relay=10025, api=10443, metrics=10909
)
DEMO_ACCOUNTS = (
    ("Ali", "Yılmaz"),
    ("Ayşe", "Kaya"),
    ("Mehmet", "Demir"),
)
# A legal entity, with the last demo person as its authorised operator.
DEMO_ENTITY = "Örnek Ticaret A.Ş."
PEER_DOMAIN = "peer.test"
CONFIG_NAME = "kepmta.toml"
DKIM_SELECTORS = {"ed25519": "kep-ed25519", "rsa": "kep-rsa"}
ACCOUNTS_NAME = "dev-accounts.json"
DATABASE_URL = "sqlite+aiosqlite:///kepmta.db"  # relative: in the development folder


@dataclass(frozen=True)
class DemoAccount:
    address: str
    first_name: str
    last_name: str
    password: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class DemoEntity:
    address: str
    legal_name: str
    operators: tuple[str, ...]


@dataclass(frozen=True)
class Demo:
    accounts: tuple[DemoAccount, ...]
    entities: tuple[DemoEntity, ...]


def is_initialised(data: Path) -> bool:
    return (data / ACCOUNTS_NAME).exists()


def needs_init(data: Path) -> bool:
    """A missing or empty folder is initialised; anything else must already be a kepmta folder."""
    return not data.exists() or not any(data.iterdir())


def port_free(port: int) -> bool:
    """Whether `port` of 127.0.0.1 can be bound now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def choose_ports(base: int | None) -> Ports:
    """The well-known dev ports, or `base`+0..6, or free ones when the defaults are taken."""
    if base is not None:
        return Ports(*range(base, base + 7))
    wanted = DEFAULT_PORTS.as_dict()
    if all(port_free(p) for p in wanted.values()):
        return DEFAULT_PORTS
    return Ports(*(_free_port() for _ in range(7)))


def _config_text(ports: Ports, domain: str, database_url: str) -> str:
    return f"""# Development provider made by `kepmta serve --dev`. Paths are relative to this file.

[server]
domain = "{domain}"
provider_name = "kepmta development KEP provider {domain}"
hostname = "localhost"
listen = "127.0.0.1"
data_dir = "."

[ports]
submission = {ports.submission}
submissions = {ports.submissions}
imap = {ports.imap}
imaps = {ports.imaps}
{"" if ports.relay is None else f"relay = {ports.relay}"}
{"" if ports.api is None else f"api = {ports.api}"}
{"" if ports.metrics is None else f"metrics = {ports.metrics}"}

[tls]
cert = "pki/tls.pem"
key = "pki/tls.key"

[evidence]
cert = "pki/transaction.pem"
key = "pki/transaction.key"
provider_ca = "pki/provider-ca.pem"
tsa_cert = "pki/tsa.pem"
tsa_key = "pki/tsa.key"
# The provider CA's CRL, captured into the ledger while in force (long-term verification).
crls = ["pki/provider-ca.crl"]

[trust]
qualified_ca = "pki/qualified-ca.pem"

[database]
url = "{database_url}"

[peers]
file = "peers.toml"

# Our identity towards peer providers: the TLS client certificate presented when relaying, and the
# DKIM keys relayed messages are signed with (`kepmta peers dkim-record` prints their DNS records).
[relay]
client_cert = "pki/relay.pem"
client_key = "pki/relay.key"

[[relay.dkim]]
selector = "{DKIM_SELECTORS["ed25519"]}"
algorithm = "ed25519"
key = "pki/dkim-ed25519.key"

[[relay.dkim]]
selector = "{DKIM_SELECTORS["rsa"]}"
algorithm = "rsa"
key = "pki/dkim-rsa.key"
"""


_PEERS = f"""# Peer KEP providers of the development provider (see conf/peers.toml in kepmta's sources).

[[peer]]
domain = "{PEER_DOMAIN}"
name = "Development peer provider"
"""


def _dkim_keys(d: Path) -> None:
    # RFC 8463 §3: Ed25519 beside RSA, so verifiers that know only RSA still verify.
    ed = ed25519.Ed25519PrivateKey.generate()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for name, key in (("dkim-ed25519.key", ed), ("dkim-rsa.key", rsa_key)):
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pki.write_private(d / name, pem)


def create_identity(data: Path, ports: Ports, domain: str = DOMAIN, database_url: str = DATABASE_URL) -> Demo:
    """Write the PKI, the configuration and the demo account list; the database comes at start."""
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    data = data.resolve()  # dev-info prints these paths for scripts run from any folder
    d = data / "pki"
    org = f"kepmta development provider {domain}"
    ca = pki.issue(f"kepmta Development Provider CA {domain}", pki.Role.CA, organization=org)
    pki.save(ca, d / "provider-ca.pem", d / "provider-ca.key")
    pki.save_crl(pki.issue_crl(ca), d / "provider-ca.crl")
    transaction = pki.issue(
        "kepmta Development Transaction Certificate",
        pki.Role.EVIDENCE,
        ca,
        organization=org,
        email=f"rem-service@{domain}",
    )
    pki.save(transaction, d / "transaction.pem", d / "transaction.key", chain=(ca.cert,))
    tls = pki.issue("localhost", pki.Role.TLS_SERVER, ca, organization=org, dns_names=("localhost",))
    pki.save(tls, d / "tls.pem", d / "tls.key", chain=(ca.cert,))
    relay = pki.issue(domain, pki.Role.TLS_CLIENT, ca, organization=org, dns_names=(domain,))
    pki.save(relay, d / "relay.pem", d / "relay.key", chain=(ca.cert,))
    _dkim_keys(d)
    tsa = pki.issue("kepmta Development Time-Stamp Authority", pki.Role.TSA, ca, organization=org)
    pki.save(tsa, d / "tsa.pem", d / "tsa.key")
    qualified = pki.issue("kepmta Development Qualified CA", pki.Role.CA, organization="Dev e-imza")
    pki.save(qualified, d / "qualified-ca.pem", d / "qualified-ca.key")

    demo = []
    for first, last in DEMO_ACCOUNTS:
        local = next(addresses.person_locals(first, last))
        address = f"{local}@{domain}"
        name = f"{first} {last}"
        person = pki.issue(name, pki.Role.SMIME, qualified, organization="Dev e-imza", email=address)
        cert, key = data / "users" / f"{address}.pem", data / "users" / f"{address}.key"
        pki.save(person, cert, key)
        demo.append(DemoAccount(address, first, last, secrets.token_urlsafe(12), cert, key))
    entity = DemoEntity(
        f"{addresses.entity_local(legal_name=DEMO_ENTITY)}@{domain}", DEMO_ENTITY, (demo[-1].address,)
    )
    (data / "peers.toml").write_text(_PEERS)
    (data / CONFIG_NAME).write_text(_config_text(ports, domain, database_url))
    # Written last: its presence says the folder is complete (see is_initialised).
    pki.write_private(
        data / ACCOUNTS_NAME,
        json.dumps(
            {
                "accounts": [
                    {
                        "address": a.address,
                        "first_name": a.first_name,
                        "last_name": a.last_name,
                        "password": a.password,
                        "cert": str(a.cert),
                        "key": str(a.key),
                    }
                    for a in demo
                ],
                "entities": [
                    {
                        "address": entity.address,
                        "legal_name": entity.legal_name,
                        "operators": entity.operators,
                    }
                ],
            },
            indent=2,
            ensure_ascii=False,
        ).encode(),
    )
    return load_demo(data)


def load_demo(data: Path) -> Demo:
    saved = json.loads((data / ACCOUNTS_NAME).read_text())
    # Folders made before paths were written absolute hold them relative to wherever serve ran;
    # the files are always in the folder's users/.
    users = data.resolve() / "users"
    return Demo(
        tuple(
            DemoAccount(
                a["address"],
                a["first_name"],
                a["last_name"],
                a["password"],
                users / Path(a["cert"]).name,
                users / Path(a["key"]).name,
            )
            for a in saved["accounts"]
        ),
        tuple(DemoEntity(e["address"], e["legal_name"], tuple(e["operators"])) for e in saved["entities"]),
    )


async def add_demo_accounts(store: AccountStore, demo: Demo) -> None:
    """Create the demo accounts, active, unless they exist (a restart)."""
    for a in demo.accounts:
        if await store.get(a.address) is None:
            await store.add_person(
                a.first_name, a.last_name, password=a.password, state=AccountState.ACTIVE, address=a.address
            )
    for e in demo.entities:
        if await store.get(e.address) is None:
            await store.add_entity(legal_name=e.legal_name, state=AccountState.ACTIVE)
            for operator in e.operators:
                await store.add_operator(e.address, operator)
