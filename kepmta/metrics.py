"""Prometheus metrics of a running server, served over plain HTTP on [ports] metrics.

Every name starts with `kepmta_`. Counters, histograms and the session gauge are this process's
own: with several nodes each exports its own, and Prometheus tells them apart by its `instance`
label (and `kepmta_node_info` names the node). The queue and ledger gauges are read from the
database at each scrape, so they are the same on every node of one database: aggregate them with
max(), never sum().

The code that counts calls the functions below, one call per thing counted; which metric that is,
and its labels, is decided here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time
from collections.abc import Awaitable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, make_asgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta.db import utc
from kepmta.db.schema import jobs, ledger
from kepmta.evidence.model import Event, Reason

log = logging.getLogger(__name__)
T = TypeVar("T")

REGISTRY = CollectorRegistry()
ProcessCollector(namespace="kepmta", registry=REGISTRY)

_NODE = Gauge("kepmta_node_info", "This node's [server] node name (value 1)", ["node"], registry=REGISTRY)
_SESSIONS = Gauge(
    "kepmta_sessions",
    "Client connections open now on this node, by protocol (submission, relay, imap)",
    ["protocol"],
    registry=REGISTRY,
)
for _protocol in ("submission", "relay", "imap"):
    _SESSIONS.labels(_protocol)  # listed at 0 before the first session
_ACCEPTED = Counter(
    "kepmta_messages_accepted",
    "Messages accepted (answered 250 with a provider message id), by where they came from",
    ["source"],
    registry=REGISTRY,
)
_REFUSED = Counter(
    "kepmta_messages_refused",
    "Submissions refused, by EN 319 522 reason code: each refused MAIL FROM, RCPT TO and message",
    ["reason"],
    registry=REGISTRY,
)
_EVIDENCE = Counter(
    "kepmta_evidence",
    "Evidence this node signed and committed to the ledger, by ERDS event",
    ["event"],
    registry=REGISTRY,
)
# From seconds (a local delivery) to the days a message may wait for a peer or a full disk.
_DELIVERY = Histogram(
    "kepmta_delivery_latency_seconds",
    "From a message's acceptance to its dispatch being in the recipient's mailbox",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600, 6 * 3600, 86400),
    registry=REGISTRY,
)
_TSA = Histogram(
    "kepmta_tsa_latency_seconds",
    "Time-stamp requests to the TSA (the built-in one or [tsa]), answered or failed",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
_TSA_ERRORS = Counter(
    "kepmta_tsa_errors", "Time-stamp requests that gave no token, by error", ["error"], registry=REGISTRY
)
_RESTARTS = Counter(
    "kepmta_worker_restarts",
    "Worker processes replaced after dying or being cancelled mid-request, by the request",
    ["task"],
    registry=REGISTRY,
)


def node(name: str) -> None:
    _NODE.labels(name).set(1)


def session_opened(protocol: str) -> None:
    _SESSIONS.labels(protocol).inc()


def session_closed(protocol: str) -> None:
    _SESSIONS.labels(protocol).dec()


def accepted(source: str) -> None:
    _ACCEPTED.labels(source).inc()


def refused(reason: Reason) -> None:
    _REFUSED.labels(reason.value).inc()


def evidence(event: Event) -> None:
    _EVIDENCE.labels(event.value).inc()


def delivered(accepted_at: dt.datetime) -> None:
    _DELIVERY.observe(max(0.0, (dt.datetime.now(dt.UTC) - accepted_at).total_seconds()))


async def tsa_request(request: Awaitable[T]) -> T:
    """`request` awaited, its time observed, and its failure counted (and raised on)."""
    start = time.monotonic()
    try:
        return await request
    except Exception as e:
        _TSA_ERRORS.labels(type(e).__name__).inc()
        raise
    finally:
        _TSA.observe(time.monotonic() - start)


def worker_restarted(task: str) -> None:
    _RESTARTS.labels(task).inc()


@dataclass
class _Database:
    """What the database said at the last scrape: pending jobs by kind, how long the longest-due of
    each has been due, and the ledger's last seq."""

    pending: dict[str, tuple[int, float]] = field(default_factory=dict)
    seq: int = 0
    kinds: set[str] = field(default_factory=set)  # every kind seen: one gone from the queue reads 0


_PENDING = (
    select(jobs.c.kind, func.count(), func.min(jobs.c.next_at))
    .where(jobs.c.state == "pending")
    .group_by(jobs.c.kind)
)
_HEAD = select(func.max(ledger.c.seq))


class DatabaseCollector(Collector):
    """The database-wide gauges, from the figures `refresh` read last."""

    def __init__(self) -> None:
        self.last = _Database()

    async def refresh(self, engine: AsyncEngine) -> None:
        # Two index reads (jobs by state, the ledger's primary key), on the event loop's own
        # connection pool: a scrape never touches the database from another thread.
        now = dt.datetime.now(dt.UTC)
        async with engine.connect() as conn:
            rows = (await conn.execute(_PENDING)).all()
            seq = (await conn.execute(_HEAD)).scalar()
        pending = {
            kind: (count, max(0.0, (now - utc(first)).total_seconds()) if first is not None else 0.0)
            for kind, count, first in rows
        }
        self.last = _Database(pending, seq or 0, self.last.kinds | pending.keys())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        last = self.last
        depth = GaugeMetricFamily(
            "kepmta_queue_jobs", "Pending jobs in the database, all nodes together, by kind", labels=["kind"]
        )
        age = GaugeMetricFamily(
            "kepmta_queue_oldest_job_age_seconds",
            "How long the pending job of each kind that fell due first has been due (0: none due yet), "
            "all nodes together",
            labels=["kind"],
        )
        for kind in sorted(last.kinds):
            count, waited = last.pending.get(kind, (0, 0.0))
            depth.add_metric([kind], count)
            age.add_metric([kind], waited)
        yield depth
        yield age
        yield GaugeMetricFamily(
            "kepmta_ledger_head_seq", "The seq of the ledger's last record (database-wide)", value=last.seq
        )


_DATABASE = DatabaseCollector()
REGISTRY.register(_DATABASE)


class _Server(uvicorn.Server):
    """The process's signals are kepmta's (kepmta.app.serve); it stops on `should_exit`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


Scope = MutableMapping[str, Any]


def asgi_app(engine: AsyncEngine) -> Any:
    """GET /metrics: the database gauges read again, then every metric in Prometheus' text format."""
    exposition = make_asgi_app(REGISTRY)

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"see /metrics\n"})
            return
        try:
            await _DATABASE.refresh(engine)
        except Exception as e:
            # The process's own figures are still worth a scrape; the database ones stay as last read.
            log.warning("metrics: the database could not be read: %s", e)
        await exposition(scope, receive, send)

    return app


class MetricsServer:
    """Plain HTTP on [server] metrics_listen and [ports] metrics, in kepmta's event loop."""

    def __init__(self) -> None:
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, engine: AsyncEngine, host: str, port: int) -> int:
        """Listen; returns the port bound."""
        sock = socket.create_server((host, port))
        cfg = uvicorn.Config(
            asgi_app(engine), log_config=None, access_log=False, lifespan="off", server_header=False
        )
        cfg.load()
        self._server = _Server(cfg)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="metrics")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise OSError("the metrics server stopped while starting")
            await asyncio.sleep(0.01)
        bound: int = sock.getsockname()[1]
        return bound

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.gather(self._task, return_exceptions=True)
