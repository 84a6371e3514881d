"""Every coverage-guided fuzz target of fuzz/run.py, for a fixed number of inputs (the bounded CI mode).

Each target runs in a process of its own (libFuzzer ends the process when it stops), two at a
time, with the script's own per-input bounds on time and memory. A crash, a stall past the
timeout or memory past the limit fails the target's test, which shows libFuzzer's report, the
input that did it and the command that runs it again. `fuzz/run.py --target NAME --seconds S` is
the same fuzzing for longer (README, "Tests").
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "fuzz" / "run.py"
TARGETS = (
    "bundle",
    "cms",
    "evidence-xml",
    "headers",
    "imap-command",
    "imap-list",
    "imap-reader",
    "mime",
    "rem",
    "smime",
    "smtp-address",
    "smtp-data",
)
# Inputs per target: the twelve took 31 s, two at a time, at 2000 on an idle two-core machine.
RUNS = 2000
# Far above what a run takes (seconds); only a fuzzer that hangs in a way libFuzzer's per-input
# timeout cannot see would reach it.
WALL = 600


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    output: str  # stdout and stderr, where libFuzzer reports
    artifacts: list[Path]


def _run(command: list[str], artifacts: Path) -> Outcome:
    done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=WALL)
    return Outcome(done.returncode, done.stdout, done.stdout + done.stderr, sorted(artifacts.iterdir()))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    jobs: dict[str, tuple[list[str], Path]] = {}
    for name in TARGETS:
        artifacts = tmp_path_factory.mktemp(f"{name}-artifacts")
        corpus = tmp_path_factory.mktemp(f"{name}-corpus")
        command = [sys.executable, str(SCRIPT), "--target", name, "--runs", str(RUNS)]
        jobs[name] = ([*command, "--corpus", str(corpus), "--artifacts", str(artifacts)], artifacts)
    listing = tmp_path_factory.mktemp("list")
    jobs["--list"] = ([sys.executable, str(SCRIPT), "--list"], listing)
    # Two at a time: the suite must finish on a two-core machine.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, command, where) for name, (command, where) in jobs.items()}
        yield {name: future.result() for name, future in futures.items()}


def test_the_script_names_every_target(outcomes: dict[str, Outcome]) -> None:
    listed = outcomes["--list"]
    assert listed.returncode == 0, listed.output[-2000:]
    assert tuple(listed.stdout.split()) == TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_no_input_crashes_stalls_or_bloats_the_parser(outcomes: dict[str, Outcome], target: str) -> None:
    outcome = outcomes[target]
    if outcome.returncode != 0 or outcome.artifacts:
        # The Python exception and libFuzzer's summary, without its progress and dictionary lines.
        report = [
            line
            for line in outcome.output.splitlines()
            if not line.startswith(("INFO: Instrumenting", "#", '"'))
        ]
        inputs = "\n".join(f"{path}: {path.read_bytes()[:2000]!r}" for path in outcome.artifacts)
        again = " ".join([sys.executable, str(SCRIPT), "--target", target, *map(str, outcome.artifacts)])
        pytest.fail(
            f"fuzz target {target} failed (exit {outcome.returncode})\n"
            + "\n".join(report[-60:])
            + f"\n\nreproducer:\n{inputs}\n\nrun it again: {again}",
            pytrace=False,
        )
    assert f"Done {RUNS} runs" in outcome.output
