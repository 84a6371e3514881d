"""CPU cost of the CMS operations every accepted message pays, single thread.

Signs with throw-away P-256 keys from `kepmta.pki`, the way the evidence signer, the built-in TSA and
the REM dispatch do: an attached CAdES-B-B signature over 2 KB with a chain of one, a detached one
from a precomputed digest, an RFC 3161 token from BuiltinTsa.timestamp, and the signature time-stamp
spliced in by add_signature_timestamp. For scale it also times loading the result: lazily, as
every signing call returns it, and fully, as `cms.load` checks received objects.

    .venv/bin/python bench/cms.py [--seconds 2]

Prints ms per operation and operations per second for each.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

from kepmta import pki
from kepmta.evidence.tsa import BuiltinTsa
from kepmta.smime import cms


def measure(fn: Callable[[], object], seconds: float) -> float:
    """Seconds per call of `fn`: the best of three runs of about `seconds` / 3 each."""
    fn()  # warm caches (certificate DER, per-signer pieces) the way a running server has them
    best = float("inf")
    for _ in range(3):
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            fn()
            calls += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - start) / calls)
    return best


def measure_async(fn: Callable[[], Awaitable[object]], seconds: float) -> float:
    async def run() -> float:
        await fn()
        best = float("inf")
        for _ in range(3):
            calls = 0
            start = time.perf_counter()
            deadline = start + seconds / 3
            while True:
                await fn()
                calls += 1
                now = time.perf_counter()
                if now >= deadline:
                    break
            best = min(best, (now - start) / calls)
        return best

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent on each operation")
    args = parser.parse_args()

    ca = pki.issue("Bench CA", pki.Role.CA, organization="Bench A.Ş.")
    signer = pki.issue("Bench İşlem Sertifikası", pki.Role.EVIDENCE, ca, organization="Bench A.Ş.")
    tsa_ca = pki.issue("Bench TSA CA", pki.Role.CA)
    tsa = BuiltinTsa(pki.issue("Bench TSA", pki.Role.TSA, tsa_ca), [tsa_ca.cert])
    content = bytes(range(256)) * 8
    digest = hashlib.sha256(content).digest()
    signed = cms.sign(signer, content=content, detached=False, chain=[ca.cert])
    token = asyncio.run(tsa.timestamp(hashlib.sha256(cms.signature_value(signed)).digest()))
    der = signed.dump()

    rows: list[tuple[str, float]] = [
        (
            "cms.sign attached 2 KB, chain 1",
            measure(lambda: cms.sign(signer, content=content, detached=False, chain=[ca.cert]), args.seconds),
        ),
        (
            "cms.sign detached from digest, chain 1",
            measure(
                lambda: cms.sign(signer, content_digest=digest, detached=True, chain=[ca.cert]), args.seconds
            ),
        ),
        ("BuiltinTsa.timestamp", measure_async(lambda: tsa.timestamp(digest), args.seconds)),
        (
            "cms.add_signature_timestamp",
            measure(lambda: cms.add_signature_timestamp(signed, token), args.seconds),
        ),
        (
            "DerContentInfo.load of the signed DER",
            measure(lambda: cms.DerContentInfo.load(der), args.seconds),
        ),
        (
            "cms.load of the signed DER (full parse, reading side)",
            measure(lambda: cms.load(der), args.seconds),
        ),
        (
            "evidence total (sign + timestamp + add)",
            measure_async(lambda: _evidence(signer, ca, tsa, content), args.seconds),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  {'ms/op':>8}  {'ops/s':>8}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds * 1e3:8.3f}  {1 / seconds:8.0f}")


async def _evidence(signer: pki.KeyPair, ca: pki.KeyPair, tsa: BuiltinTsa, content: bytes) -> bytes:
    signed = cms.sign(signer, content=content, detached=False, chain=[ca.cert])
    token = await tsa.timestamp(hashlib.sha256(cms.signature_value(signed)).digest())
    return bytes(cms.add_signature_timestamp(signed, token).dump())


if __name__ == "__main__":
    main()
