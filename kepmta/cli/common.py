"""What every `kepmta` subcommand shares."""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_DATA = Path("kepmta-dev")


def die(message: str, code: int = 2) -> int:
    """Print one line for a person and return the exit code."""
    print(f"kepmta: {message}", file=sys.stderr)
    return code
