"""`python -m arr` (used by `accelerate launch -m arr train ...`)."""

import sys

from arr.cli import main

sys.exit(main())
