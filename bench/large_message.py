"""Peak resident memory while one signed 100 MB message is accepted, kepmta beside bare aiosmtpd.

kepmta: `kepmta serve --dev` in a fresh folder; after a small warm-up message (which also starts
the worker processes) a client connects over STARTTLS and logs in (scrypt's 32 MiB belong to the
login, not the message), the peak-RSS counters of the server and of its worker processes are reset
(/proc/PID/clear_refs), the 100 MB message is submitted, and the peaks are read once the dispatch
is in the recipient's Maildir (so the S/MIME check, the evidence and the delivery are all inside
the window). kepmta's figures are the sums over the server and its workers: the sum of peaks
counts each process at its own worst moment, so it can only overstate. Reference: `python -m
aiosmtpd` with its default handler, plain SMTP, the same message.

    .venv/bin/python bench/large_message.py [--mb 100]

Prints idle RSS, peak RSS and the increase for both. Goal for kepmta: an increase of at most 64 MB.
"""

from __future__ import annotations

import argparse
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import family, reset_peak, rss_mib
from kepclient import DevServer, free_port_base, port_open, signed_message, smtp, wait_for


def dispatches(inbox: Path) -> list[Path]:
    return [p for p in inbox.iterdir() if not p.name.startswith("Kquota-")]


def big_message(sender: dict[str, str], to: str, subject: str, size: int) -> bytes:
    body = "\n".join(
        ["Bu satir buyuk bir ileti icindir; 100 MB sinirini olcmek icin yazildi...."] * (size // 75)
    )
    return signed_message(sender["address"], [to], subject, body, sender["cert"], sender["key"])


def measure_kepmta(tmp: Path, size: int) -> tuple[float, float, int]:
    srv = DevServer(tmp / "data").start()
    try:
        assert srv.proc
        pid = srv.proc.pid
        ali, ayse = srv.account(0), srv.account(1)
        inbox = Path(srv.info["data"]) / "mail" / "kep.test" / "ayse.kaya" / "new"  # type: ignore[index]
        with smtp(srv, ali) as s:
            s.sendmail(
                ali["address"], [ayse["address"]], big_message(ali, ayse["address"], "warm-up", 10_000)
            )
        wait_for(lambda: dispatches(inbox))
        msg = big_message(ali, ayse["address"], "large", size)
        with smtp(srv, ali) as s:
            time.sleep(1)
            processes = family(pid)
            idle = sum(rss_mib(p, "VmRSS") for p in processes)
            for p in processes:
                reset_peak(p)
            s.sendmail(ali["address"], [ayse["address"]], msg)
        # Dispatches only: the 100 MB message may also bring a quota warning into the INBOX.
        wait_for(lambda: len(dispatches(inbox)) == 2, timeout=600)
        print(f"kepmta: the server and {len(processes) - 1} worker processes")
        return idle, sum(rss_mib(p, "VmHWM") for p in processes), len(msg)
    finally:
        srv.stop()


def measure_aiosmtpd(msg_size: int, size: int) -> tuple[float, float]:
    port = free_port_base()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-s", str(2 * size), "-l", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open(port))
        with smtplib.SMTP("127.0.0.1", port, timeout=600) as s:
            s.sendmail("a@b.test", ["c@d.test"], b"Subject: warm-up\r\n\r\nx\r\n")
        time.sleep(1)
        idle = rss_mib(proc.pid, "VmRSS")
        reset_peak(proc.pid)
        payload = b"Subject: large\r\n\r\n" + (b"x" * 998 + b"\r\n") * (msg_size // 1000)
        with smtplib.SMTP("127.0.0.1", port, timeout=600) as s:
            s.sendmail("a@b.test", ["c@d.test"], payload)
        return idle, rss_mib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100, help="message size in MB (default 100)")
    args = ap.parse_args()
    size = args.mb * 1024 * 1024 - 64 * 1024  # room for headers and the signature below the limit
    with tempfile.TemporaryDirectory() as tmp:
        idle, peak, msg_size = measure_kepmta(Path(tmp), size)
    print(f"message: {msg_size / 1024**2:.1f} MB, signed, one recipient")
    print(
        f"kepmta    idle {idle:7.1f} MiB  peak {peak:7.1f} MiB  increase {peak - idle:7.1f} MiB  (goal <= 64)"
    )
    b_idle, b_peak = measure_aiosmtpd(msg_size, size)
    print(f"aiosmtpd  idle {b_idle:7.1f} MiB  peak {b_peak:7.1f} MiB  increase {b_peak - b_idle:7.1f} MiB")
    print(f"ratio of increases kepmta / aiosmtpd: {(peak - idle) / max(b_peak - b_idle, 0.1):.2f}")


if __name__ == "__main__":
    main()
