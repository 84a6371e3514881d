"""`kepmta peers …` as an administrator uses it, on real development folders and files."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from kepclient import KEPMTA

from kepmta import devinit
from kepmta.config import Ports

PIN = "0f" * 32


def peers_cli(*args: str) -> tuple[int, str, str]:
    r = subprocess.run([*KEPMTA, "peers", *args], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("providers")
    devinit.create_identity(root / "a", Ports(20001, 20002, 20003, 20004, 20005))
    devinit.create_identity(root / "b", Ports(20011, 20012, 20013, 20014, 20015), "other.test")
    return root / "a", root / "b"


@pytest.fixture
def a(made: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(made[0], tmp_path / "a"))


@pytest.fixture
def b(made: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(made[1], tmp_path / "b"))


def listed(data: Path) -> list[dict[str, object]]:
    code, out, err = peers_cli("list", "--json", "--data", str(data))
    assert code == 0, err
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def refused(args: list[str], expected: str) -> str:
    code, out, err = peers_cli(*args)
    assert code == 2 and not out, (code, out, err)
    assert err.startswith("kepmta: ") and expected in err and "\n" not in err, err
    return err


def ed25519_record_value(key_file: Path) -> str:
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def rsa_record_value(key_file: Path) -> str:
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def test_list_and_show_the_development_registry(a: Path) -> None:
    assert [(r["name"], r["domains"], r["host"]) for r in listed(a)] == [
        ("Development peer provider", ["peer.test"], None)
    ]
    code, out, err = peers_cli("list", "--data", str(a))
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["NAME", "DOMAINS", "ENDPOINT", "DKIM"]
    assert "peer.test" in row and "not reachable" in row
    for key in ("peer.test", "development PEER provider"):
        code, out, err = peers_cli("show", key, "--data", str(a))
        assert code == 0, err
        assert re.search(r"^domains\s+peer\.test$", out, re.M) and "not reachable" in out
    refused(["show", "nobody.test", "--data", str(a)], "no peer is named 'nobody.test'")


def test_add_show_and_remove(a: Path) -> None:
    ca = a / "pki" / "provider-ca.pem"
    ed = base64.b64encode(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    code, out, err = peers_cli(
        "add",
        "--name",
        "Örnek KEP A.Ş.",
        "--domain",
        "KEP.example.net",
        "--domain",
        "hs02.kep.example.net",
        "--host",
        "relay.kep.example.net",
        "--port",
        "2525",
        "--tls-ca",
        str(ca),
        "--tls-pin",
        PIN.upper(),
        "--evidence-ca",
        str(ca),
        "--dkim",
        f"kep-ed25519:ed25519:{ed}",
        "--data",
        str(a),
    )
    assert code == 0, err
    assert "added" in out
    code, out, err = peers_cli("show", "hs02.kep.example.net", "--json", "--data", str(a))
    assert code == 0, err
    assert json.loads(out) == {
        "name": "Örnek KEP A.Ş.",
        "domains": ["kep.example.net", "hs02.kep.example.net"],
        "host": "relay.kep.example.net",
        "port": 2525,
        "tls_ca": str(ca),
        "tls_pins": [PIN],
        "tls_server_name": None,
        "evidence_ca": str(ca),
        "dkim": [{"selector": "kep-ed25519", "algorithm": "ed25519", "public_key": ed}],
    }
    text = (a / "peers.toml").read_text()
    # the header comment stays; a file beside the registry is written relative to it
    assert text.startswith("# Peer KEP providers of the development provider")
    assert 'tls_ca = "pki/provider-ca.pem"' in text
    assert [r["domains"] for r in listed(a)] == [["peer.test"], ["kep.example.net", "hs02.kep.example.net"]]

    code, out, err = peers_cli("remove", "örnek kep a.ş.", "--data", str(a))
    assert code == 0 and "removed" in out, err
    assert [r["domains"] for r in listed(a)] == [["peer.test"]]
    refused(["remove", "kep.example.net", "--data", str(a)], "no peer is named 'kep.example.net'")


def test_edits_that_would_break_the_registry_are_refused(a: Path) -> None:
    registry = a / "peers.toml"
    before = registry.read_text()
    data = ["--data", str(a)]
    refused(["add", "--name", "X", "--domain", "PEER.test", *data], "peer.test is already a domain of")
    refused(["add", "--name", "development peer provider", "--domain", "x.test", *data], "already registered")
    refused(["add", "--name", "X", "--domain", "kep.test", *data], "kep.test is this provider's own domain")
    refused(
        ["add", "--name", "X", "--domain", "x.test", "--host", "relay.x.test", *data],
        "not added: " + f"{registry}: peer[1].tls_ca is required when host is given",
    )
    refused(
        ["add", "--name", "X", "--domain", "x.test", "--dkim", "s:rsa:bm90IGEga2V5", *data],
        "peer[1].dkim[0].public_key is not a DER SubjectPublicKeyInfo",
    )
    refused(
        ["add", "--name", "X", "--domain", "x.test", "--tls-pin", "abc", *data],
        "peer[1].tls_pins[0] must be 64 hex digits",
    )
    refused(
        ["add", "--name", "X", "--domain", "x.test", "--port", "0", *data], "peer[1].port must be an integer"
    )
    refused(["add", "--name", "X", "--domain", "not a domain", *data], "'not a domain' is not a domain name")
    assert registry.read_text() == before
    assert sorted(p.name for p in a.iterdir() if p.name.startswith(".")) == []
    # usage mistakes are caught by the argument parser, with the same exit code
    code, _, err = peers_cli("add", "--name", "X", "--domain", "x.test", "--dkim", "s:dsa:AAAA", *data)
    assert code == 2 and "SELECTOR:ALGORITHM:BASE64" in err
    code, _, err = peers_cli(
        "add", "--name", "X", "--domain", "x.test", "--tls-ca", str(a / "nothing.pem"), *data
    )
    assert code == 2 and "no such file" in err


def test_a_broken_registry_is_named_by_file_and_key(a: Path) -> None:
    registry = a / "peers.toml"
    registry.write_text('[[peer]]\nname = "X"\ndomains = ["x.test"]\nport = "25"\n')
    refused(["list", "--data", str(a)], f"{registry}: peer[0].port must be an integer from 1 to 65535")


def test_a_configuration_without_a_registry(a: Path) -> None:
    conf = a / devinit.CONFIG_NAME
    conf.write_text(conf.read_text().replace('[peers]\nfile = "peers.toml"\n', ""))
    refused(["list", "--config", str(conf)], f"{conf}: no [peers] file is configured")


def test_dkim_record_prints_our_keys_as_dns_publishes_them(a: Path) -> None:
    code, out, err = peers_cli("dkim-record", "--data", str(a))
    assert code == 0, err
    ed_line, rsa_line = out.splitlines()
    assert ed_line == (
        'kep-ed25519._domainkey.kep.test. IN TXT "v=DKIM1; k=ed25519; p='
        + ed25519_record_value(a / "pki" / "dkim-ed25519.key")
        + '"'
    )
    name, strings = rsa_line.split(" IN TXT ")
    assert name == "kep-rsa._domainkey.kep.test."
    # RFC 1035 §3.3.14: character-strings of at most 255 octets, joined by the verifier
    parts = re.findall(r'"([^"]*)"', strings)
    assert len(parts) > 1 and all(len(p) <= 255 for p in parts)
    assert "".join(parts) == f"v=DKIM1; k=rsa; p={rsa_record_value(a / 'pki' / 'dkim-rsa.key')}"


def test_dkim_record_needs_a_relay_table_and_matching_keys(a: Path) -> None:
    conf = a / devinit.CONFIG_NAME
    text = conf.read_text()
    conf.write_text(text.replace('key = "pki/dkim-rsa.key"', 'key = "pki/dkim-ed25519.key"'))
    refused(["dkim-record", "--data", str(a)], "dkim-ed25519.key: not an rsa key (selector kep-rsa)")
    conf.write_text(text[: text.index("[relay]")])
    refused(["dkim-record", "--data", str(a)], "no [relay] table, so no DKIM keys")


def test_add_dev_registers_the_other_development_provider(a: Path, b: Path) -> None:
    for _ in range(2):  # a second run replaces the entry
        code, out, err = peers_cli("add-dev", "--data", str(a), "--peer-data", str(b))
        assert code == 0 and "127.0.0.1:20015" in out, err
    rows = listed(a)
    assert [r["domains"] for r in rows] == [["peer.test"], ["other.test"]]
    ca = str((b / "pki" / "provider-ca.pem").resolve())
    entry = rows[1]
    assert entry["name"] == "kepmta development KEP provider other.test"
    assert (entry["host"], entry["port"], entry["tls_server_name"]) == ("127.0.0.1", 20015, "localhost")
    assert entry["tls_ca"] == entry["evidence_ca"] == ca
    assert entry["dkim"] == [
        {
            "selector": "kep-ed25519",
            "algorithm": "ed25519",
            "public_key": ed25519_record_value(b / "pki" / "dkim-ed25519.key"),
        },
        {
            "selector": "kep-rsa",
            "algorithm": "rsa",
            "public_key": rsa_record_value(b / "pki" / "dkim-rsa.key"),
        },
    ]
    # the registry holds absolute paths to B's folder: A reads it from anywhere
    assert f'tls_ca = "{ca}"' in (a / "peers.toml").read_text()


def test_add_dev_of_a_folder_without_relay_settings(a: Path, b: Path) -> None:
    conf = b / devinit.CONFIG_NAME
    text = conf.read_text()
    conf.write_text(re.sub(r"^relay = \d+\n", "", text[: text.index("[relay]")], flags=re.M))
    code, _, err = peers_cli("add-dev", "--data", str(a), "--peer-data", str(b))
    assert code == 0, err
    entry = listed(a)[1]
    assert entry["domains"] == ["other.test"] and entry["host"] is None and entry["dkim"] == []
    refused(
        ["add-dev", "--data", str(a), "--peer-data", str(a.parent / "nowhere")], "is not a development folder"
    )
    refused(["add-dev", "--data", str(a), "--peer-data", str(a)], "kep.test is this provider's own domain")
