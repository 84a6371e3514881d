"""What a reload puts in force, and what it keeps until a restart (kepmta.reload.in_force)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kepmta import config, devinit
from kepmta.config import Ports
from kepmta.reload import in_force


def test_reloadable_settings_change_and_the_rest_waits(tmp_path: Path) -> None:
    devinit.create_identity(tmp_path / "d", Ports(1, 2, 3, 4))
    old = config.load(tmp_path / "d" / devinit.CONFIG_NAME)
    new = dataclasses.replace(
        old,
        ports=Ports(5, 6, 7, 8),
        database_url="sqlite+aiosqlite:////elsewhere.db",
        tls_cert=tmp_path / "new.pem",
        qualified_ca=tmp_path / "qualified.pem",
        policy=dataclasses.replace(
            old.policy, max_refused_recipients=3, local_max_size=2048, evidence_folder="Evidence"
        ),
    )
    settings, waiting = in_force(old, new)
    assert waiting == ["ports", "database_url", "policy.evidence_folder"]
    assert settings.ports == old.ports and settings.database_url == old.database_url
    assert settings.tls_cert == tmp_path / "new.pem" and settings.qualified_ca == tmp_path / "qualified.pem"
    assert settings.policy.max_refused_recipients == 3 and settings.policy.local_max_size == 2048
    assert settings.policy.evidence_folder == old.policy.evidence_folder
    assert in_force(old, old) == (old, [])
