"""`python -m kepmta`."""

import sys

from kepmta.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports this
    sys.exit(main())
