"""The peer registry: every mistake in peers.toml is one line naming file and key; edits round-trip;
a live registry keeps the old entries when the file breaks and picks up a valid change."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from kepmta import config, devinit, pki
from kepmta.config import ConfigError
from kepmta.peers import (
    DkimKey,
    Peer,
    PeerRegistry,
    Peers,
    dkim_algorithm,
    dump_peers,
    load_peers,
    save_peers,
)


def _ed25519_value() -> str:
    raw = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return base64.b64encode(raw).decode()


def _spki_value(key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


ED = _ed25519_value()
RSA = _spki_value(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
RSA_512 = _spki_value(rsa.RSAPublicNumbers(65537, (1 << 511) | 12345).public_key())
ED_AS_SPKI = _spki_value(ed25519.Ed25519PrivateKey.generate().public_key())
PIN = "ab" * 32


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    ca = pki.issue("Peer Provider CA", pki.Role.CA)
    pki.save(ca, tmp_path / "peer-ca.pem", tmp_path / "peer-ca.key")
    (tmp_path / "not-a-cert.pem").write_text("hello\n")
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "peers.toml"
    path.write_text(text)
    return path


FULL = f"""# Our peers.

[[peer]]
name = "Örnek KEP A.Ş."
domains = ["KEP.Example.net", "hs02.kep.example.net"]
host = "relay.kep.example.net"
port = 2525
tls_ca = "peer-ca.pem"
tls_pins = ["{PIN.upper()}"]
tls_server_name = "mx.kep.example.net"
evidence_ca = "peer-ca.pem"

[[peer.dkim]]
selector = "kep-ed25519"
algorithm = "ed25519"
public_key = "{ED}"

[[peer.dkim]]
selector = "kep-rsa"
algorithm = "rsa"
public_key = "{RSA}"

[[peer]]
domain = "hs01.kep.tr"
name = "PTT KEP Hizmet Sağlayıcısı"
"""


def test_a_complete_registry_loads(folder: Path) -> None:
    peers = load_peers(write(folder, FULL))
    first, second = peers.peers
    assert first.domains == ("kep.example.net", "hs02.kep.example.net") and first.domain == "kep.example.net"
    assert (first.host, first.port, first.tls_name) == ("relay.kep.example.net", 2525, "mx.kep.example.net")
    # relative paths are the registry folder's, whatever the working directory is
    assert first.tls_ca == first.evidence_ca == (folder / "peer-ca.pem").resolve()
    assert first.tls_pins == (PIN,)
    assert first.dkim == (DkimKey("kep-ed25519", "ed25519", ED), DkimKey("kep-rsa", "rsa", RSA))
    # the old single `domain` key still reads; no host: known, not reachable
    assert second == Peer(name="PTT KEP Hizmet Sağlayıcısı", domains=("hs01.kep.tr",))
    assert second.host is None and second.port == 25 and second.tls_name is None
    assert peers.domains == {"kep.example.net", "hs02.kep.example.net", "hs01.kep.tr"}
    assert peers.for_domain("HS02.kep.example.net") is first and peers.for_domain("kep.test") is None
    assert peers.named("ptt kep hizmet sağlayıcısı") is second and peers.named("hs01.kep.tr") is second
    assert peers.named("nobody") is None


def test_a_snapshot_never_has_a_domain_twice() -> None:
    with pytest.raises(ValueError, match=r"a\.test is a domain of two peers"):
        Peers((Peer("A", ("a.test",)), Peer("B", ("b.test", "a.test"))))


def peer(extra: str = "", *, name: str = "A", domains: str = '["a.test"]') -> str:
    return f'[[peer]]\nname = "{name}"\ndomains = {domains}\n{extra}'


def dkim(selector: str = "s1", algorithm: str = "ed25519", public_key: str = ED) -> str:
    return f'[[peer.dkim]]\nselector = "{selector}"\nalgorithm = "{algorithm}"\npublic_key = "{public_key}"\n'


MISTAKES: list[tuple[str, str]] = [
    ("[[peer]\n", "not valid TOML"),
    ("peers = 1\n", ": peers is not a known key"),
    ("peer = 1\n", ": peer must be an array of tables"),
    ('[[peer]]\ndomains = ["a.test"]\n', ": peer[0].name must be a non-empty string"),
    (
        '[[peer]]\nname = "A"\ndomain = "not a domain"\n',
        ": peer[0].domain 'not a domain' is not a domain name",
    ),
    (peer(domains='["a.test", "b_c"]'), ": peer[0].domains[1] 'b_c' is not a domain name"),
    (peer(domains='["a.test", "A.test"]'), ": peer[0].domains[1] 'a.test' is listed twice"),
    (peer(domains="[]"), ": peer[0].domains must list at least one domain"),
    (peer(domains='"a.test"'), ": peer[0].domains must be a list of non-empty strings"),
    (peer('domain = "b.test"\n'), ": peer[0].domain: give domains or domain, not both"),
    ('[[peer]]\nname = "A"\n', ": peer[0].domains must list at least one domain"),
    (
        peer() + peer(name="B", domains='["b.test", "a.test"]'),
        ": peer[1].domains: a.test is already a domain of peer[0]",
    ),
    (peer() + peer(name="a", domains='["b.test"]'), ": peer[1].name 'a' is the name of another peer"),
    (
        peer() + peer("port = 0\n", name="B", domains='["b.test"]'),
        ": peer[1].port must be an integer from 1 to 65535",
    ),
    (peer("port = 65536\n"), ": peer[0].port must be an integer from 1 to 65535"),
    (peer('port = "25"\n'), ": peer[0].port must be an integer from 1 to 65535"),
    (peer('host = "bad host!"\ntls_ca = "peer-ca.pem"\n'), ": peer[0].host 'bad host!' is not a host name"),
    (peer('host = "relay.a.test"\n'), ": peer[0].tls_ca is required when host is given"),
    (peer('host = "relay.a.test"\ntls_ca = "missing.pem"\n'), "missing.pem does not exist"),
    (peer('tls_ca = "not-a-cert.pem"\n'), ": peer[0].tls_ca: " + "{folder}/not-a-cert.pem holds no PEM"),
    (peer('evidence_ca = "missing.pem"\n'), ": peer[0].evidence_ca: {folder}/missing.pem does not exist"),
    (peer('evidence_ca = "not-a-cert.pem"\n'), ": peer[0].evidence_ca: {folder}/not-a-cert.pem holds no PEM"),
    (peer('tls_pins = ["abcd"]\n'), ": peer[0].tls_pins[0] must be 64 hex digits"),
    (peer(f'tls_pins = ["{PIN}", "{"g" * 64}"]\n'), ": peer[0].tls_pins[1] must be 64 hex digits"),
    (peer(f'tls_pins = "{PIN}"\n'), ": peer[0].tls_pins must be a list of non-empty strings"),
    (peer('tls_server_name = "a b"\n'), ": peer[0].tls_server_name 'a b' is not a host name"),
    (peer(f'tls_pin = ["{PIN}"]\n'), ": peer[0].tls_pin is not a known key"),
    (peer("dkim = 1\n"), ": peer[0].dkim must be an array of tables"),
    (peer(dkim(algorithm="dsa")), ": peer[0].dkim[0].algorithm must be ed25519 or rsa"),
    (peer(dkim(public_key="not base64!")), ": peer[0].dkim[0].public_key is not valid base64"),
    (peer(dkim(public_key=RSA)), ": peer[0].dkim[0].public_key must be the raw 32-byte Ed25519"),
    (
        peer(dkim(algorithm="rsa", public_key=ED_AS_SPKI)),
        ": peer[0].dkim[0].public_key is not an RSA public key",
    ),
    (
        peer(dkim(algorithm="rsa", public_key=ED)),
        ": peer[0].dkim[0].public_key is not a DER SubjectPublicKeyInfo",
    ),
    (peer(dkim(algorithm="rsa", public_key=RSA_512)), ": peer[0].dkim[0].public_key is a 512-bit RSA key"),
    (peer(dkim(selector="a selector")), ": peer[0].dkim[0].selector 'a selector' is not a DKIM selector"),
    (peer(dkim() + dkim(algorithm="rsa", public_key=RSA)), ": peer[0].dkim[1].selector 's1' is listed twice"),
    (peer(dkim() + "flags = 1\n"), ": peer[0].dkim[0].flags is not a known key"),
    (peer('[[peer.dkim]]\nalgorithm = "ed25519"\n'), ": peer[0].dkim[0].selector must be a non-empty string"),
]


@pytest.mark.parametrize(("text", "message"), MISTAKES)
def test_every_mistake_is_one_line_naming_file_and_key(folder: Path, text: str, message: str) -> None:
    path = write(folder, text)
    with pytest.raises(ConfigError) as e:
        load_peers(path)
    error = str(e.value)
    message = message.replace("{folder}", str(folder.resolve()))
    assert error.startswith(f"{path}: ") and message in error and "\n" not in error


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothing\.toml: no such peers file"):
        load_peers(tmp_path / "nothing.toml")


def test_the_server_configuration_reads_the_registry_it_names(folder: Path, tmp_path: Path) -> None:
    devinit.create_identity(tmp_path / "d", config.Ports(1, 2, 3, 4))
    conf = tmp_path / "d" / devinit.CONFIG_NAME
    registry = tmp_path / "d" / "peers.toml"
    registry.write_text(FULL.replace('"peer-ca.pem"', f'"{folder / "peer-ca.pem"}"'))
    settings = config.load(conf)
    assert settings.peers_file == registry
    assert Peers(settings.peers) == load_peers(registry)
    registry.write_text(peer('host = "relay.a.test"\n'))
    with pytest.raises(ConfigError, match=r"peer\[0\]\.tls_ca is required"):
        config.load(conf)


def test_dkim_algorithm_names_only_keys_dkim_signs_with() -> None:
    assert dkim_algorithm(ed25519.Ed25519PrivateKey.generate()) == "ed25519"
    assert dkim_algorithm(rsa.generate_private_key(public_exponent=65537, key_size=2048)) == "rsa"
    # RFC 6376 and RFC 8463 define no ECDSA signing algorithm
    assert dkim_algorithm(ec.generate_private_key(ec.SECP256R1())) is None


def test_add_and_remove_round_trip_keeping_the_header(folder: Path, tmp_path: Path) -> None:
    path = write(folder, FULL)
    before = load_peers(path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.pem"
    outside.write_bytes((folder / "peer-ca.pem").read_bytes())
    added = Peer(
        name='Tırnaklı "Sağlayıcı" \\ A.Ş.',
        domains=("c.test",),
        host="192.0.2.7",
        tls_ca=outside,
        tls_pins=(PIN,),
        evidence_ca=(folder / "peer-ca.pem").resolve(),
        dkim=(DkimKey("k1", "rsa", RSA),),
    )
    after = save_peers(Peers((*before.peers, added)), path)
    text = path.read_text()
    assert text.startswith("# Our peers.\n") and load_peers(path) == after
    assert after.peers == (*before.peers, added)
    # a file beside the registry is written relative to it, one elsewhere absolute
    assert 'evidence_ca = "peer-ca.pem"' in text and f'tls_ca = "{outside}"' in text
    save_peers(Peers(before.peers), path)
    assert load_peers(path) == before and path.read_text().startswith("# Our peers.\n")
    outside.unlink()


def test_an_invalid_edit_leaves_the_file_as_it_was(folder: Path) -> None:
    path = write(folder, FULL)
    reachable_unverified = Peer(name="C", domains=("c.test",), host="relay.c.test")
    with pytest.raises(ConfigError, match=r"peer\[2\]\.tls_ca is required when host is given"):
        save_peers(Peers((*load_peers(path).peers, reachable_unverified)), path)
    assert path.read_text() == FULL
    assert sorted(p.name for p in folder.iterdir()) == [
        "not-a-cert.pem",
        "peer-ca.key",
        "peer-ca.pem",
        "peers.toml",
    ]


def test_a_file_without_a_header_gets_one(folder: Path) -> None:
    path = folder / "new.toml"
    save_peers(Peers((Peer("A", ("a.test",)),)), path)
    assert path.read_text().startswith("# Peer KEP providers") and load_peers(path).domains == {"a.test"}
    assert dump_peers(Peers(), path).startswith("# Peer KEP providers")


def test_reload_keeps_the_old_registry_on_a_broken_file(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(folder, peer())
    registry = PeerRegistry(path, load_peers(path))
    assert registry.reload() is False  # unchanged
    write(folder, peer('port = "x"\n'))
    with caplog.at_level(logging.ERROR, logger="kepmta.peers"):
        assert registry.reload() is False
    assert registry.current.domains == {"a.test"}
    [record] = caplog.records
    assert f"{path}: peer[0].port must be an integer" in record.getMessage()
    assert "\n" not in record.getMessage()
    write(folder, peer() + peer(name="B", domains='["b.test"]'))
    assert registry.reload() is True
    assert registry.current.domains == {"a.test", "b.test"}
    assert PeerRegistry(None, Peers()).reload() is False


async def _until(condition: Callable[[], bool]) -> None:
    # Bounded: a watcher that never notices fails here, however fast or slow the machine is.
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the registry never saw the change")


async def test_watch_picks_up_changes_and_refuses_broken_files(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(folder, peer())
    registry = PeerRegistry(path, load_peers(path))
    task = asyncio.create_task(registry.watch(interval=0.01))
    try:
        with caplog.at_level(logging.ERROR, logger="kepmta.peers"):
            write(folder, peer("port = 0\n"))
            await _until(lambda: any("peer[0].port" in r.getMessage() for r in caplog.records))
        assert registry.current.domains == {"a.test"}
        write(folder, peer(domains='["a.test", "a2.test"]') + peer(name="B", domains='["b.test"]'))
        await _until(lambda: "b.test" in registry.current.domains)
        assert registry.current.for_domain("a2.test") is registry.current.named("A")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
