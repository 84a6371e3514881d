"""`kepmta check-config` on a development folder and on broken copies of it: each mistake is
exactly one line naming the file and the key, and any error exits 1."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from kepclient import kepmta

from kepmta import config, devinit, pki
from kepmta.config import Ports


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("made") / "data"
    devinit.create_identity(data, Ports(10587, 10465, 10143, 10993, 10025, 10443))
    return data


@pytest.fixture
def data(made: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(made, copy)
    return copy


def check(data: Path) -> tuple[int, list[str]]:
    r = kepmta("check-config", "--config", str(data / devinit.CONFIG_NAME))
    return r.returncode, r.stdout.splitlines()


def provider_ca(data: Path) -> pki.KeyPair:
    return pki.load_pair(data / "pki" / "provider-ca.pem", data / "pki" / "provider-ca.key")


def tls_cert(data: Path, **dates: dt.datetime) -> pki.KeyPair:
    """A new TLS certificate for localhost under the provider CA, in place of the folder's."""
    ca = provider_ca(data)
    tls = pki.issue("localhost", pki.Role.TLS_SERVER, ca, dns_names=("localhost",), **dates)
    pki.save(tls, data / "pki" / "tls.pem", data / "pki" / "tls.key", chain=(ca.cert,))
    return tls


def test_a_development_folder_is_clean(data: Path) -> None:
    r = kepmta("check-config", "--data", str(data))
    assert (r.returncode, r.stdout) == (0, "")
    assert "no problems found" in r.stderr


def test_help_says_what_is_checked() -> None:
    r = kepmta("check-config", "--help")
    assert r.returncode == 0 and "key against its certificate" in r.stdout and "Exits 1" in r.stdout


def test_an_expired_certificate(data: Path) -> None:
    now = pki.utcnow()
    tls_cert(data, not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=2))
    end = (now - dt.timedelta(days=2)).strftime("%Y-%m-%d")
    conf, pem = data / devinit.CONFIG_NAME, data / "pki" / "tls.pem"
    assert check(data) == (1, [f"{conf}: tls.cert: {pem}: CN=localhost,C=TR expired on {end}"])


def test_a_certificate_not_yet_valid(data: Path) -> None:
    start = pki.utcnow().replace(microsecond=0) + dt.timedelta(days=3)
    tls_cert(data, not_before=start)
    conf, pem = data / devinit.CONFIG_NAME, data / "pki" / "tls.pem"
    when = start.strftime("%Y-%m-%d %H:%M")
    assert check(data) == (1, [f"{conf}: tls.cert: {pem}: CN=localhost,C=TR is not valid before {when} UTC"])


def test_a_certificate_near_its_end_is_a_warning(data: Path) -> None:
    end = pki.utcnow() + dt.timedelta(days=10, hours=1)
    tls_cert(data, not_after=end)
    conf, pem = data / devinit.CONFIG_NAME, data / "pki" / "tls.pem"
    expected = f"warning: {conf}: tls.cert: {pem}: CN=localhost,C=TR expires on {end:%Y-%m-%d}, in 10 days"
    assert check(data) == (0, [expected])


def test_a_key_that_is_not_the_certificates(data: Path) -> None:
    other = pki.issue("localhost", pki.Role.TLS_SERVER, provider_ca(data), dns_names=("localhost",))
    pki.save(other, data / "other.pem", data / "pki" / "tls.key")
    conf, pem, key = data / devinit.CONFIG_NAME, data / "pki" / "tls.pem", data / "pki" / "tls.key"
    subject = pki.load_certs(pem)[0].subject.rfc4514_string()
    assert check(data) == (1, [f"{conf}: tls.key: {key} is not the key of {subject} in {pem}"])


def test_a_chain_to_another_ca(data: Path) -> None:
    stranger = pki.issue("Stranger CA", pki.Role.CA)
    evidence = pki.issue(
        "kepmta Development Transaction Certificate",
        pki.Role.EVIDENCE,
        stranger,
        email="rem-service@kep.test",
    )
    pem = data / "pki" / "transaction.pem"
    pki.save(evidence, pem, data / "pki" / "transaction.key", chain=(stranger.cert,))
    conf, ca = data / devinit.CONFIG_NAME, data / "pki" / "provider-ca.pem"
    line = f"{conf}: evidence.cert: {pem}: CN=Stranger CA,C=TR does not chain to evidence.provider_ca ({ca})"
    assert check(data) == (1, [line])


def test_a_certificate_without_the_servers_name(data: Path) -> None:
    ca = provider_ca(data)
    tls = pki.issue("mail.example", pki.Role.TLS_SERVER, ca, dns_names=("mail.example",))
    pem = data / "pki" / "tls.pem"
    pki.save(tls, pem, data / "pki" / "tls.key", chain=(ca.cert,))
    conf = data / devinit.CONFIG_NAME
    line = (
        f"{conf}: tls.cert: {pem}: CN=mail.example,C=TR does not name server.hostname localhost "
        "(it names mail.example)"
    )
    assert check(data) == (1, [line])


def edit(path: Path, change: Callable[[str], str]) -> None:
    text = path.read_text()
    changed = change(text)
    assert changed != text
    path.write_text(changed)


def test_a_bad_policy_value(data: Path) -> None:
    policy = data / "policy.toml"
    shutil.copy(config.DEFAULT_POLICY, policy)
    edit(policy, lambda t: t.replace("max_refused_recipients = 10", "max_refused_recipients = 0"))
    edit(data / devinit.CONFIG_NAME, lambda t: t + '\n[policy]\nfile = "policy.toml"\n')
    line = f"{policy}: submission.max_refused_recipients must be an integer from 1 to 10000"
    assert check(data) == (1, [line])


def test_an_unknown_key(data: Path) -> None:
    conf = data / devinit.CONFIG_NAME
    edit(conf, lambda t: t.replace('key = "pki/tls.key"\n', 'key = "pki/tls.key"\nchain = "pki/chain.pem"\n'))
    assert check(data) == (1, [f"{conf}: tls.chain is not a known key, or has no effect here"])


def test_a_broken_peers_file(data: Path) -> None:
    peers = data / "peers.toml"
    edit(peers, lambda t: t.replace('domain = "peer.test"', 'domain = "peer.test"\ntls_pin = ["00"]'))
    assert check(data) == (1, [f"{peers}: peer[0].tls_pin is not a known key"])


def test_a_dkim_key_of_the_wrong_algorithm(data: Path) -> None:
    shutil.copy(data / "pki" / "dkim-rsa.key", data / "pki" / "dkim-ed25519.key")
    conf, key = data / devinit.CONFIG_NAME, data / "pki" / "dkim-ed25519.key"
    assert check(data) == (1, [f"{conf}: relay.dkim[0].key: {key} is rsa, not ed25519"])
