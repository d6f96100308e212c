"""`python -m pitscope.cli ...`: the `pitscope` command (what torchrun and the benchmarks start)."""

import sys

from pitscope.cli import main

sys.exit(main())
