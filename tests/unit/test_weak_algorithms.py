"""The algorithm-strength rule, on the clock-shifted PKI of test_archive: a chain in a hash
algorithm configured as weak since a date must have been re-hashed before that date."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from test_archive import (
    NOW,
    REHASHED_AT,
    World,
    _old_evidence,
    _rehashed,
    _renewed,
    shift_clock,
    utc,
)
from test_archive import issued_at_now as issued_at_now  # autouse: certificates start at NOW

from kepmta import config, devinit
from kepmta.cli import main
from kepmta.config import ConfigError, Ports
from kepmta.evidence import archive
from kepmta.evidence.verify import ARCHIVE, verify_evidence


@pytest.fixture
def at(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], None]:
    return lambda when: shift_clock(monkeypatch, when)


def _verify(
    w: World, der: bytes, er: archive.EvidenceRecord, weak: dict[str, dt.datetime]
) -> tuple[bool, str]:
    report = verify_evidence(der, [w.provider_ca.cert], [w.tsa_ca.cert], evidence_record=er.dump(), weak=weak)
    return report.ok, report.check(ARCHIVE).detail


async def test_a_rehash_made_before_sha256_weakened_is_accepted_and_one_made_after_is_not(
    at: Callable[[dt.datetime], None],
) -> None:
    w = World()
    der = await _old_evidence(w, at)
    er = await _rehashed(w, at, der)  # SHA-256 chain from 2020, SHA-512 chain from 2024-01-01
    at(NOW)
    assert _verify(w, der, er, {})[0]  # by default nothing is weak
    assert _verify(w, der, er, {"sha256": utc(2030, 1, 1)})[0]
    assert _verify(w, der, er, {"sha256": REHASHED_AT + dt.timedelta(seconds=1)})[0]
    ok, detail = _verify(w, der, er, {"sha256": utc(2023, 6, 1)})
    assert not ok
    assert (
        "chain 1 (SHA-256): SHA-256 is weak since 2023-06-01, and the chain was re-hashed only at 2024-01-01"
        in (detail)
    )
    # SHA-512 weak some day too: the last chain is relied on now.
    ok, detail = _verify(w, der, er, {"sha512": NOW - dt.timedelta(days=1)})
    assert not ok and "chain 2 (SHA-512)" in detail and "never re-hashed" in detail


async def test_a_sha256_record_never_rehashed_fails_once_sha256_is_weak(
    at: Callable[[dt.datetime], None],
) -> None:
    w = World()
    der = await _old_evidence(w, at)
    er = await _renewed(w, at, der, utc(2020, 3, 1))
    at(NOW)
    assert _verify(w, der, er, {"sha256": NOW + dt.timedelta(days=1)})[0]
    ok, detail = _verify(w, der, er, {"sha256": NOW - dt.timedelta(days=1)})
    assert not ok and "never re-hashed (kepmta evidence renew --rehash)" in detail


def test_weak_algorithms_in_the_configuration(tmp_path: Path) -> None:
    devinit.create_identity(tmp_path / "d", Ports(1, 2, 3, 4))
    conf = tmp_path / "d" / devinit.CONFIG_NAME
    assert config.load(conf).weak_algorithms == {}
    text = conf.read_text()
    conf.write_text(text + '\n[evidence.weak_algorithms]\nsha256 = "2040-01-01"\nsha384 = 2050-06-30\n')
    assert config.load(conf).weak_algorithms == {"sha256": utc(2040, 1, 1), "sha384": utc(2050, 6, 30)}
    for wrong, message in (
        ('md5 = "2040-01-01"', "md5 is not sha256"),
        ('sha256 = "soon"', "sha256 must be a date"),
    ):
        conf.write_text(text + f"\n[evidence.weak_algorithms]\n{wrong}\n")
        with pytest.raises(ConfigError, match=message):
            config.load(conf)


def test_verify_takes_weak_from_the_command_line(
    at: Callable[[dt.datetime], None], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = World()

    async def made() -> tuple[bytes, archive.EvidenceRecord]:
        der = await _old_evidence(w, at)
        return der, await _rehashed(w, at, der)

    der, er = asyncio.run(made())
    at(NOW)
    (tmp_path / "e.p7m").write_bytes(der)
    (tmp_path / "e.ers").write_bytes(er.dump())
    for name, cert in (("ca.pem", w.provider_ca.cert), ("tsa.pem", w.tsa_ca.cert)):
        (tmp_path / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    args = ["evidence", "verify", str(tmp_path / "e.p7m"), "--ers", str(tmp_path / "e.ers")]
    args += ["--ca", str(tmp_path / "ca.pem"), "--tsa-ca", str(tmp_path / "tsa.pem")]
    assert main([*args, "--weak", "sha256=2030-01-01"]) == 0
    capsys.readouterr()
    assert main([*args, "--weak", "sha256=2023-06-01"]) == 1
    assert "SHA-256 is weak since 2023-06-01" in capsys.readouterr().out
    assert main([*args, "--weak", "md5=2023-06-01"]) != 0
