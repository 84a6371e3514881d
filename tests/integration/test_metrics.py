"""Prometheus metrics of a running `kepmta serve --dev`, scraped over HTTP as Prometheus would, and
parsed with prometheus_client's own text parser."""

from __future__ import annotations

import os
import signal
import smtplib
import urllib.error
import urllib.request
import uuid

from kepclient import DevServer, imap, plain_message, signed_by, smtp, submit, wait_for, worker_processes
from kepclient import folder_messages as messages
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(srv: DevServer) -> Samples:
    url = f"http://127.0.0.1:{srv.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_dev_info_lists_the_metrics_port(srv: DevServer) -> None:
    assert "metrics" in srv.ports
    # Only /metrics is served.
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{srv.ports['metrics']}/", timeout=30)
        raise AssertionError("/ answered")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_counters_move_with_an_acceptance_a_refusal_and_a_read(srv: DevServer) -> None:
    before = scrape(srv)
    names = {name for name, _ in before}
    assert not [n for n in names if not n.startswith("kepmta_")]
    for expected in ("kepmta_ledger_head_seq", "kepmta_sessions", "kepmta_node_info"):
        assert expected in names

    ayse = srv.account(1)
    subj = "metrik-" + uuid.uuid4().hex[:10]
    submit(srv, 0, [ayse["address"]], signed_by(srv, 0, [ayse["address"]], subj))
    with smtp(srv, srv.account(0)) as s:
        s.mail(srv.account(0)["address"])
        s.rcpt(ayse["address"])
        code, _ = s.data(plain_message(srv.account(0)["address"], [ayse["address"]], subj + "-x", "imzasız"))
        assert code == 554
        try:
            s.mail(srv.account(0)["address"])
            assert s.rcpt("nobody-here@kep.test")[0] == 550
        except smtplib.SMTPServerDisconnected:
            raise AssertionError("the session ended") from None

    b = imap(srv, ayse)
    assert wait_for(lambda: messages(b, "INBOX", subj))
    during = scrape(srv)
    assert value(during, "kepmta_sessions", protocol="imap") >= 1
    b.select("INBOX")
    _, data = b.uid("SEARCH", None, "SUBJECT", f'"{subj}"')  # type: ignore[arg-type]
    b.uid("FETCH", data[0].split()[0].decode(), "(BODY[])")
    b.logout()

    def moved(event: str) -> float:
        after = scrape(srv)
        return value(after, "kepmta_evidence_total", event=event) - value(
            before, "kepmta_evidence_total", event=event
        )

    # Each evidence is counted once it is committed; the last ones follow the replies.
    assert wait_for(lambda: moved("ContentHandover") == 1)
    assert wait_for(lambda: moved("ContentConsignment") == 1)
    after = scrape(srv)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("kepmta_messages_accepted_total", source="submission") == 1
    # The unsigned message and the unknown recipient: both RA05 (EN 319 522-2).
    assert delta("kepmta_messages_refused_total", reason="RA05") == 2
    assert delta("kepmta_evidence_total", event="SubmissionAcceptance") == 1
    # One SubmissionRejection for the unsigned message, one for the transaction's refused RCPT.
    assert delta("kepmta_evidence_total", event="SubmissionRejection") == 2
    assert delta("kepmta_delivery_latency_seconds_count") == 1
    # Every evidence is time-stamped by the built-in TSA: five evidences, five requests at least.
    assert delta("kepmta_tsa_latency_seconds_count") >= 5
    assert sum(v for (name, _), v in after.items() if name == "kepmta_tsa_errors_total") == 0
    assert delta("kepmta_ledger_head_seq") >= 5
    for protocol in ("imap", "submission"):
        assert wait_for(lambda p=protocol: value(scrape(srv), "kepmta_sessions", protocol=p) == 0)  # type: ignore[misc]
    assert sum(v for (name, _), v in after.items() if name == "kepmta_worker_restarts_total") == 0


def test_queue_depth_is_read_from_the_database(srv: DevServer) -> None:
    """A message for a peer provider with no relay endpoint stays queued, retried later."""
    before = scrape(srv)
    subj = "kuyruk-" + uuid.uuid4().hex[:10]
    submit(srv, 0, ["someone@peer.test"], signed_by(srv, 0, ["someone@peer.test"], subj))
    after = scrape(srv)
    queued = value(before, "kepmta_queue_jobs", kind="relay")
    assert value(after, "kepmta_queue_jobs", kind="relay") == queued + 1
    assert value(after, "kepmta_queue_oldest_job_age_seconds", kind="relay") >= 0
    assert ("kepmta_queue_oldest_job_age_seconds", (("kind", "relay"),)) in after
    assert value(after, "kepmta_ledger_head_seq") > value(before, "kepmta_ledger_head_seq")


def test_a_dead_worker_process_is_replaced_and_counted(srv: DevServer) -> None:
    ayse = srv.account(1)
    submit(srv, 0, [ayse["address"]], signed_by(srv, 0, [ayse["address"]], "isci-once"))
    before = scrape(srv)
    killed = worker_processes(srv)
    assert killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    # Each check that finds its worker gone has it replaced: nothing is decided, and the client is
    # told to try again; once every dead one is replaced, the message is accepted.
    refused, code = 0, 0
    while code != 250 and refused <= len(killed):
        with smtp(srv, srv.account(0)) as s:
            s.mail(srv.account(0)["address"])
            s.rcpt(ayse["address"])
            code, _ = s.data(signed_by(srv, 0, [ayse["address"]], "isci-sonra"))
        assert code in (250, 451)
        refused += code == 451
    assert code == 250 and refused >= 1
    restarted = value(scrape(srv), "kepmta_worker_restarts_total", task="inspect")
    assert restarted == value(before, "kepmta_worker_restarts_total", task="inspect") + refused
    assert not set(killed) & set(worker_processes(srv))
