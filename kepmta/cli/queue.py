"""`kepmta queue …`: the durable job queue as the operator sees it, and the operator's hand on it."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from kepmta import config
from kepmta.cli.accounts import _table
from kepmta.cli.common import add_config_options, die, settings_from
from kepmta.db.engine import opened
from kepmta.events import TIMESTAMP_JOB
from kepmta.queue import jobs
from kepmta.queue.jobs import QueuedJob, QueueRefused

KINDS = (
    jobs.DELIVER,
    jobs.RECEIPT,
    jobs.RELAY,
    jobs.RELAY_WAIT,
    jobs.PEER_RECEIPT,
    jobs.FILE_RECEIVED,
    jobs.NOTIFY,
    TIMESTAMP_JOB,
)
_SHOWN_RECIPIENTS = 3
# Below this the last error says nothing; past it a line may wrap rather than say nothing.
_MIN_ERROR_WIDTH = 24
_FLAT_WIDTH = 72


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _time(at: dt.datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}"


def _addresses(payload: dict[str, Any], limit: int | None = None) -> str:
    addresses = [str(address) for _, address in payload.get("recipients", [])]
    if limit is not None and len(addresses) > limit:
        return ", ".join(addresses[:limit]) + f" +{len(addresses) - limit} more"
    return ", ".join(addresses)


def purpose(job: QueuedJob, limit: int | None = None) -> str:
    """What the job is for, in a few words: its recipient, peer, or evidence."""
    p = job.payload
    if job.kind == jobs.DELIVER:
        return f"{p['address']} (from a peer)" if p.get("relayed") else str(p["address"])
    if job.kind == jobs.RELAY:
        return f"{p['domain']}: {_addresses(p, limit)}"
    if job.kind == jobs.RELAY_WAIT:
        return f"{p['stage']} · {p['domain']}: {_addresses(p, limit)}"
    if job.kind == jobs.FILE_RECEIVED:
        return f"{p['file']} for {p['address']}"
    if job.kind == jobs.NOTIFY:
        return f"{p['channel']} notice to {p['address']}"
    if "seq" in p:
        return f"evidence #{p['seq']}"
    return json.dumps(p, ensure_ascii=False)


def _next(job: QueuedJob, now: dt.datetime) -> str | None:
    if job.state != jobs.PENDING:
        return None
    return "due" if job.next_at <= now else _time(job.next_at)


def _as_json(job: QueuedJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "message_id": job.message_id,
        "payload": job.payload,
        "attempts": job.attempts,
        "next_at": job.next_at.isoformat(),
        "last_error": job.last_error,
        "sender": job.sender,
        "subject": job.subject,
        "submitted_at": job.submitted_at.isoformat(),
    }


def pretty(value: Any, indent: str = "") -> str:
    """JSON, indented, with short lists and objects kept on one line: a recipient stays
    `[1, "a@b.test"]`, not four lines."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(indent) + len(flat) <= _FLAT_WIDTH or not isinstance(value, dict | list) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {pretty(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    return "[\n" + ",\n".join(f"{inner}{pretty(v, inner)}" for v in value) + f"\n{indent}]"


def _cut(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


async def _list(args: argparse.Namespace, engine: AsyncEngine) -> int:
    states = (jobs.PENDING, jobs.FAILED, jobs.DONE) if args.all else (jobs.PENDING,)
    found = await jobs.queued(engine, states, args.kind)
    if args.json:
        print(json.dumps([_as_json(j) for j in found], ensure_ascii=False))
        return 0
    if not found:
        which = "no jobs" if args.all else "no pending jobs"
        print(f"The queue has {which}{f' of kind {args.kind}' if args.kind else ''}.")
        return 0
    now = _now()
    rows = [
        {
            "id": j.id,
            "kind": j.kind,
            "state": j.state,
            "message": j.message_id,
            "sender": j.sender,
            "for": purpose(j, _SHOWN_RECIPIENTS),
            "tries": j.attempts,
            "next (utc)": _next(j, now),
        }
        for j in found
    ]
    # The last error gets what the terminal has left after the other columns.
    used = max(len(line) for line in _table(rows, list(rows[0])).splitlines()) + 2
    width = max(_MIN_ERROR_WIDTH, shutil.get_terminal_size().columns - used)
    for row, job in zip(rows, found, strict=True):
        row["last error"] = _cut(job.last_error, width) if job.last_error else None
    columns = list(rows[0])
    print(_table(rows, columns))
    return 0


async def _show(args: argparse.Namespace, engine: AsyncEngine) -> int:
    job = await jobs.queued_job(engine, args.id)
    if args.json:
        print(json.dumps(_as_json(job), ensure_ascii=False))
        return 0
    now = _now()
    due = " (due)" if job.state == jobs.PENDING and job.next_at <= now else ""
    fields = {
        "job": job.id,
        "kind": job.kind,
        "state": job.state,
        "for": purpose(job),
        "message": job.message_id,
        "sender": job.sender,
        "subject": job.subject,
        "submitted": f"{_time(job.submitted_at)} UTC",
        "attempts": job.attempts,
        "next attempt": f"{_time(job.next_at)} UTC{due}",
        "last error": job.last_error or "-",
    }
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        print(f"{key.ljust(width)}  {value}")
    print("payload")
    for line in pretty(job.payload).splitlines():
        print(f"  {line}")
    return 0


async def _retry(args: argparse.Namespace, engine: AsyncEngine) -> int:
    if args.all:
        done = await jobs.retry_all(engine)
        if not done.reopened and not done.advanced:
            print("No job was waiting for a retry: every failed job is pending and every pending one due.")
        else:
            print(
                f"{done.reopened} failed job(s) pending again and {done.advanced} pending job(s) brought "
                "forward: all due now, taken up by the running server within seconds."
            )
        if done.timers:
            print(f"{done.timers} relay timer(s) left at their moment (they are not retries).")
        return 0
    job = await jobs.retry(engine, args.id)
    was = f"was failed ({job.last_error or 'no error kept'}) and " if job.state == jobs.FAILED else ""
    print(
        f"Job {job.id} ({job.kind}, {purpose(job, _SHOWN_RECIPIENTS)}) {was}is pending and due now; "
        f"attempts so far: {job.attempts}. The running server takes it up within seconds."
    )
    return 0


async def _drop(args: argparse.Namespace, engine: AsyncEngine) -> int:
    job, made = await jobs.drop_relay(engine, args.id, args.note)
    count = len(job.payload["recipients"])
    print(
        f"Relay job {job.id} of {job.message_id} to {job.payload['domain']} is done, not sent "
        f"({jobs.DROPPED}). Job {made} (relay-wait, dropped) is due now: the running server "
        f"records RelayFailure (RB07) evidence for {count} recipient(s) ({_addresses(job.payload)}) "
        f"and sends {job.sender} its receipt. Note: {args.note}"
    )
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, AsyncEngine], Awaitable[int]]] = {
    "list": _list,
    "show": _show,
    "retry": _retry,
    "drop": _drop,
}


async def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    async with opened(settings.database_url) as engine:
        return await _COMMANDS[args.queue_command](args, engine)


def cmd_queue(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (QueueRefused, config.ConfigError, OSError) as e:
        return die(str(e), 1)


def _job_id(text: str) -> int:
    if not text.isdecimal():
        raise argparse.ArgumentTypeError(f"not a job id: {text!r} (a number, as `kepmta queue list` shows)")
    return int(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = sub.add_parser("queue", help="look at and act on the durable job queue")
    q_sub = queue.add_subparsers(dest="queue_command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser = q_sub.add_parser(name, help=help, description=help)
        add_config_options(parser)
        parser.set_defaults(func=cmd_queue)
        return parser

    listing = command(
        "list", "pending jobs, oldest first: what each is for, its attempts, next try, last error"
    )
    listing.add_argument("--all", action="store_true", help="failed and done jobs too")
    listing.add_argument("--kind", choices=KINDS, help="only jobs of this kind")
    listing.add_argument("--json", action="store_true", help="JSON for scripts")
    show = command("show", "one job: every field, its payload and its message")
    show.add_argument("id", type=_job_id)
    show.add_argument("--json", action="store_true", help="JSON for scripts")
    retry = command(
        "retry", "make a pending job due now, or a failed one pending again; its attempts stay as they are"
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=_job_id)
    which.add_argument("--all", action="store_true", help="every pending and failed job")
    drop = command(
        "drop",
        "end a pending relay to a peer provider without sending: RelayFailure (RB07) evidence for its "
        "recipients, and a receipt to the sender",
    )
    drop.add_argument("id", type=_job_id)
    drop.add_argument("--note", default=jobs.DROPPED, help="why, for the evidence (default: %(default)s)")
