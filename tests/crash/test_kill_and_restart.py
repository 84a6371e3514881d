"""Crash safety: SIGKILL the whole server (main process and workers) at random moments under steady
submission, delivery and reading, restart it on the same folder, and after every round check that
nothing the clients were told is contradicted, lost, doubled or orphaned (crash_fixtures.problems).

KEPMTA_CRASH_ROUNDS sets the number of kills (12 by default, as in CI: about 9 s each on two cores,
and the whole suite must finish within 15 minutes there); KEPMTA_CRASH_SEED replays
the kill moments and the recipients chosen by a failed run, whose seed the failure names.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from crash_fixtures import Load, Outcome, audit, drain, problems
from kepclient import DevServer

ROUNDS = int(os.environ.get("KEPMTA_CRASH_ROUNDS", "12"))
SEED = int(os.environ.get("KEPMTA_CRASH_SEED") or random.SystemRandom().randrange(2**32))


def audited(n: int) -> bool:
    """The ledger audit verifies every signature and grows with the ledger: after rounds 1, 2, 4, 8 …
    and the last, it costs about twice one final audit however many rounds run. Records are never
    changed, so a later audit still sees what an earlier round wrote."""
    return n & (n - 1) == 0 or n == ROUNDS


def test_sigkill_under_load_loses_doubles_and_orphans_nothing(tmp_path: Path) -> None:
    print(f"crash seed {SEED} (replay: KEPMTA_CRASH_SEED={SEED}), {ROUNDS} rounds")
    rng = random.Random(SEED)
    srv = DevServer(tmp_path / "data").start()
    data = tmp_path / "data"
    load = Load(srv, SEED)
    began = time.monotonic()
    try:
        load.start()
        for n in range(1, ROUNDS + 1):
            time.sleep(rng.uniform(0.2, 2.0))
            assert srv.proc is not None
            os.killpg(srv.proc.pid, signal.SIGKILL)  # the group: worker processes die with it
            srv.proc.wait()
            srv.start()
            where = f"round {n} (seed {SEED})"
            assert load.pause(), f"{where}: the clients never came to rest"
            drain(data)
            assert not load.errors, f"{where}: a client failed: {load.errors!r}"
            found = problems(srv, load)
            assert not found, f"{where}:\n" + "\n".join(found)
            if audited(n):
                assert (failed := audit(srv)) is None, f"{where}: kepmta evidence audit:\n{failed}"
            print(f"{where}: {len(load.snapshot()[0])} submissions, {time.monotonic() - began:.0f} s")
            load.resume()
        submissions, reads = load.snapshot()
    finally:
        load.stop()
        srv.stop()
    counts = {o: sum(s.outcome is o for s in submissions) for o in Outcome}
    print(f"{ROUNDS} kills in {time.monotonic() - began:.0f} s: {counts}, {len(reads)} reads")
    # The load was real: messages were accepted and opened between the kills.
    assert counts[Outcome.ACCEPTED] >= ROUNDS and reads
