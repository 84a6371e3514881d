"""The evidence model: event and reason tables, and construction-time validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from evidence_fixtures import sample_evidence

from kepmta.evidence.model import Event, Party, Provider, Reason


def test_event_uris_and_ptt_codes() -> None:
    assert Event.SUBMISSION_ACCEPTANCE.uri == "http://uri.etsi.org/19522/Event/SubmissionAcceptance"
    codes = {e.value: e.ptt_code for e in Event}
    assert codes == {
        "SubmissionAcceptance": 10,
        "SubmissionRejection": 11,
        "RelayAcceptance": 20,
        "RelayRejection": 21,
        "RelayFailure": 31,
        "ContentConsignment": 40,
        "ContentConsignmentFailure": 41,
        "ContentHandover": 60,
    }
    assert Event.from_uri(Event.CONTENT_HANDOVER.uri) is Event.CONTENT_HANDOVER
    with pytest.raises(ValueError, match="unknown ERDS event"):
        Event.from_uri("http://uri.etsi.org/19522/Event/Nope")


def test_only_submission_events_cover_the_whole_message() -> None:
    whole = {e for e in Event if not e.per_recipient}
    assert whole == {Event.SUBMISSION_ACCEPTANCE, Event.SUBMISSION_REJECTION}


@pytest.mark.parametrize(
    ("prefix", "events"),
    [
        ("RA", {Event.SUBMISSION_ACCEPTANCE, Event.SUBMISSION_REJECTION}),
        ("RB", {Event.RELAY_ACCEPTANCE, Event.RELAY_REJECTION, Event.RELAY_FAILURE}),
        ("RD", {Event.CONTENT_CONSIGNMENT, Event.CONTENT_CONSIGNMENT_FAILURE}),
        ("RE", {Event.CONTENT_HANDOVER}),
    ],
)
def test_reason_families_map_to_their_events(prefix: str, events: set[Event]) -> None:
    reasons = [r for r in Reason if r.value.startswith(prefix)]
    assert reasons
    assert {r.event for r in reasons} == events


def test_reason_table_matches_evidence_md() -> None:
    assert Reason.RA01.event is Event.SUBMISSION_ACCEPTANCE
    assert [r.value for r in Reason if r.event is Event.SUBMISSION_REJECTION] == [
        "RA02",
        "RA03",
        "RA04",
        "RA05",
    ]
    assert [r.value for r in Reason if r.event is Event.RELAY_FAILURE] == ["RB07", "RB08", "RB09", "RB10"]
    assert [r.value for r in Reason if r.event is Event.CONTENT_CONSIGNMENT] == ["RD01", "RD02"]
    assert Reason.RB09.uri == "http://uri.etsi.org/19522/EventReason/R_ERDS_Unreachable"
    assert Reason.RD01.uri.endswith("/MessageConsignedToRecipient")
    assert all(r.uri.startswith("http://uri.etsi.org/19522/EventReason/") for r in Reason)
    assert all(r.label.endswith(".") for r in Reason)


def test_valid_sample_and_derived_recipient() -> None:
    ev = sample_evidence()
    assert ev.recipient == ev.recipients[0]
    assert (
        sample_evidence(
            event=Event.SUBMISSION_ACCEPTANCE, reason=Reason.RA01, refers_to_recipient=None
        ).recipient
        is None
    )


def test_times_are_truncated_to_whole_seconds_and_lists_become_tuples() -> None:
    ev = sample_evidence(
        event_time=datetime(2024, 1, 1, 0, 0, 0, 999999, tzinfo=UTC),
        policy_ids=["urn:a"],
        recipients=[Party("a@b.kep.tr")],
    )
    assert ev.event_time == datetime(2024, 1, 1, tzinfo=UTC)
    assert ev.policy_ids == ("urn:a",)
    assert isinstance(ev.recipients, tuple)
    hash(ev)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reason": Reason.RA01}, "RA01 belongs to SubmissionAcceptance, not to ContentConsignment"),
        ({"refers_to_recipient": None}, "issued per recipient"),
        ({"refers_to_recipient": 3}, r"outside 1\.\.2"),
        ({"refers_to_recipient": 0}, r"outside 1\.\.2"),
        ({"refers_to_recipient": True}, "must be an int"),
        (
            {"event": Event.SUBMISSION_ACCEPTANCE, "reason": Reason.RA01, "refers_to_recipient": 1},
            "covers the whole message",
        ),
        ({"event_time": datetime(2024, 1, 1)}, "event_time must be timezone-aware"),
        ({"submission_time": datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=3)))}, "must be in UTC"),
        ({"sender_auth_time": datetime(2024, 1, 1)}, "sender_auth_time must be timezone-aware"),
        ({"digest_sha256": b"abc"}, "32 bytes"),
        ({"message_type": "urgent"}, "message_type must be one of"),
        ({"policy_ids": ()}, "at least one policy"),
        ({"subject": "bad\x00subject"}, "U\\+0000"),
        ({"details": "line\r\nbreak"}, "U\\+000D"),
        ({"details": ""}, "details must not be empty"),
        ({"evidence_id": "<id@x>"}, "angle brackets"),
        ({"message_id": "has space@x"}, "whitespace"),
        ({"ua_message_id": ""}, "ua_message_id must not be empty"),
        ({"sender": "a@b"}, "sender must be a Party"),
        ({"external_provider": "peer.kep.tr"}, "external_provider must be a Provider"),
    ],
)
def test_invalid_evidence_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_evidence(**changes)


@pytest.mark.parametrize(
    ("address", "name", "message"),
    [
        ("no-at-sign", None, "local@domain"),
        ("@domain", None, "local@domain"),
        ("a@", None, "local@domain"),
        ("a b@c", None, "whitespace"),
        ("a@b", "", "name must not be empty"),
    ],
)
def test_invalid_party_is_refused(address: str, name: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Party(address, name)


@pytest.mark.parametrize(
    ("name", "domain", "message"),
    [
        ("", "peer.kep.tr", "provider name must not be empty"),
        ("Peer\nA.Ş.", "peer.kep.tr", "U\\+000A"),
        ("Peer A.Ş.", "", "provider domain must not be empty"),
        ("Peer A.Ş.", "peer kep.tr", "whitespace"),
    ],
)
def test_invalid_provider_is_refused(name: str, domain: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Provider(name, domain)
