"""The Maildir base names deliveries use: fixed by the message id, so a retried delivery finds its
earlier attempt, and made only of what Maildir.unique_name takes, whatever id a peer gave."""

from __future__ import annotations

import pytest

from kepmta.delivery import _token
from kepmta.maildir import Maildir


@pytest.mark.parametrize(
    ("message_id", "token"),
    [
        ("20261203T090730Z.7f3a@kep.test", "20261203T090730Z-7f3a"),
        ("ileti.Öğrenci_çalışma@peer.kep.tr", "ileti---renci--al--ma"),
        ("a/b\\c..d@x", "a-b-c--d"),
    ],
)
def test_any_message_id_gives_a_safe_name(message_id: str, token: str) -> None:
    assert _token(message_id) == token
    name = Maildir.unique_name(f"{_token(message_id)}-d7")
    assert name.startswith(f"K{token}-d7.") and "/" not in name
