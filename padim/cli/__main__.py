"""`python -m padim.cli` (the same as `python -m padim` and the `padim` script)."""

import sys

from padim.cli import main

sys.exit(main())
