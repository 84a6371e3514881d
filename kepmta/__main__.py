"""`python -m kepmta`."""

import sys

from kepmta.cli import main

sys.exit(main())
