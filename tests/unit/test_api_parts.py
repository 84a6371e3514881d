"""Parts of the integration API that need no server: the token bucket, the codes of refusals,
and the upload spool's size and line-ending checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from kepmta.api.errors import Step, refusal_code, refused
from kepmta.api.ratelimit import Buckets
from kepmta.api.service import _Spool
from kepmta.evidence.model import Reason
from kepmta.policy.refusal import Refusal
from kepmta.policy.size import too_big


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    buckets = Buckets(burst=3, per_minute=60, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [None, None, None]
    assert buckets.take("a") == pytest.approx(1.0)  # one request a second comes back
    assert buckets.take("b") is None  # each key has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.take("a") is None
    clock.now += 3600
    # Never more than the burst, however long the key waited.
    assert [buckets.take("a") for _ in range(4)][-1] == pytest.approx(1.0)


def test_every_refusal_the_policy_makes_has_its_own_code() -> None:
    size = too_big(26214400, peer=True).refusal
    assert refusal_code(Step.RECIPIENT, size) == refusal_code(Step.MESSAGE, size) == "message_too_big"
    body = refused(Step.MESSAGE, size).body()
    assert (refused(Step.MESSAGE, size).status, body["etsi_reason"], body["enhanced_status"]) == (
        413,
        "RA05",
        "5.3.4",
    )
    sender = Refusal(553, "5.7.1", Reason.RA05, "may not send as x", "x adına gönderemez")
    recipient = Refusal(550, "5.7.1", Reason.RA05, "not a KEP address", "KEP adresi değil")
    assert refusal_code(Step.SENDER, sender) == "sender_not_permitted"
    assert refusal_code(Step.RECIPIENT, recipient) == "recipient_not_kep"
    # A rule added later, that the table does not know yet, still gets a code of its step.
    unknown = Refusal(554, "5.7.9", Reason.RA05, "new rule", "yeni kural")
    assert refusal_code(Step.MESSAGE, unknown) == "message_refused"
    assert refused(Step.MESSAGE, unknown).status == 422
    later = Refusal(451, "4.3.0", Reason.RA05, "later", "sonra")
    assert refused(Step.MESSAGE, later).status == 503


def _spooled(tmp_path: Path, chunks: list[bytes], limit: int = 1000) -> tuple[_Spool, bytes]:
    spool = _Spool(tmp_path / "m.eml", limit)
    for chunk in chunks:
        spool.write(chunk)
    spool.close()
    return spool, spool.path.read_bytes()


def test_the_spool_finds_bare_line_ends_across_chunks(tmp_path: Path) -> None:
    good, stored = _spooled(tmp_path, [b"A: b\r", b"\n\r", b"\nbody\r\n"])
    assert not good.bare_line_end and stored == b"A: b\r\n\r\nbody\r\n"
    for chunks in ([b"A: b\n\r\nx\r\n"], [b"A: b\r", b"x\r\n"], [b"A: b\r\n\r\nx\r"]):
        assert _spooled(tmp_path, chunks)[0].bare_line_end, chunks


def test_the_spool_ends_the_message_with_crlf_as_smtp_does(tmp_path: Path) -> None:
    spool, stored = _spooled(tmp_path, [b"A: b\r\n\r\nlast line"])
    assert stored == b"A: b\r\n\r\nlast line\r\n" and spool.size == len(stored)


def test_the_spool_stops_writing_at_its_limit_but_counts_on(tmp_path: Path) -> None:
    spool, stored = _spooled(tmp_path, [b"x" * 600 + b"\r\n", b"y" * 600 + b"\r\n"], limit=1000)
    assert spool.too_big and spool.size == 1204 and len(stored) == 1000
