"""`python -m padim` (also what `torchrun -m padim` runs)."""

import sys

from padim.cli import main

sys.exit(main())
