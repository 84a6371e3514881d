"""Pieces the benchmarks share: the messages they send, the demo quotas they raise, and the
resident memory of a server and its worker processes, read from /proc (Linux)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from kepclient import DevServer, accounts_cli, children, signed_message


def bench_body(size: int) -> str:
    """A plain-text body of about `size` bytes, in short lines."""
    return "\n".join(["Bu bir ölçüm iletisidir; satırlar kısa tutulur."] * (size // 52))


def messages_of(sender: dict[str, str], rcpt: dict[str, str], body: str, subject: str) -> list[bytes]:
    """64 messages from `sender` to `rcpt`, S/MIME-signed with the sender's certificate."""
    return [
        signed_message(
            sender["address"], [rcpt["address"]], f"{subject} {i}", body, sender["cert"], sender["key"]
        )
        for i in range(64)
    ]


def raise_quotas(srv: DevServer) -> None:
    # A run at full speed files more than the 100 MB default quota holds.
    for acct in srv.info["accounts"]:  # type: ignore[index]
        code, _, err = accounts_cli(srv.data, "set-quota", acct["address"], "20GB")
        assert code == 0, err


def rss_mib(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status in MiB: VmRSS now, VmHWM the peak (proc(5))."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def family(pid: int) -> list[int]:
    """`pid` and its descendants: the server, the forker of its workers, and the workers."""
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo += children(out[-1])
    return out


def reset_peak(pid: int) -> None:
    # Linux: writing 5 resets the process's VmHWM to its current RSS (proc(5), clear_refs).
    Path(f"/proc/{pid}/clear_refs").write_text("5")
