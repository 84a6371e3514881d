"""Configuration mistakes are one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kepmta import config, devinit
from kepmta.config import ConfigError, Ports


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    devinit.create_identity(tmp_path / "d", Ports(1, 2, 3, 4))
    return tmp_path / "d" / devinit.CONFIG_NAME


def test_the_development_configuration_loads(conf: Path) -> None:
    s = config.load(conf)
    assert s.domain == "kep.test" and s.ports == Ports(1, 2, 3, 4)
    assert s.policy.local_max_size == 100 * 1024 * 1024 and s.policy.peer_max_size == 25 * 1024 * 1024
    assert s.policy.quota_warnings == (80, 90, 100) and s.policy.evidence_folder == "Kanıt"
    assert [p.domain for p in s.peers] == ["peer.test"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("submission = 1", "submission = 70000"), "ports.submission must be an integer"),
        (
            lambda t: t.replace('domain = "kep.test"', "domain = 3"),
            "server.domain must be a non-empty string",
        ),
        (lambda t: t.replace('cert = "pki/tls.pem"', 'cert = "pki/nothing.pem"'), "tls.cert: "),
        (lambda t: t + "\n[[[", "not valid TOML"),
    ],
)
def test_mistakes_name_the_key(conf: Path, change: object, message: str) -> None:
    conf.write_text(change(conf.read_text()))  # type: ignore[operator]
    with pytest.raises(ConfigError) as e:
        config.load(conf)
    assert message in str(e.value) and str(conf) in str(e.value) and "\n" not in str(e.value)


def test_policy_and_peer_mistakes(conf: Path, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(
        config.DEFAULT_POLICY.read_text().replace("peer_max = 26214400", "peer_max = 999999999999")
    )
    conf.write_text(conf.read_text() + f'\n[policy]\nfile = "{policy}"\n')
    with pytest.raises(ConfigError, match=r"size\.peer_max must be an integer"):
        config.load(conf)
    policy.write_text(config.DEFAULT_POLICY.read_text())
    (conf.parent / "peers.toml").write_text('[[peer]]\ndomain = "not a domain"\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"peer\[0\].domain 'not a domain' is not a domain name"):
        config.load(conf)
