"""`python -m stts ...` runs the `stts` command (torchrun uses this form)."""

import sys

from stts.cli import main

sys.exit(main())
