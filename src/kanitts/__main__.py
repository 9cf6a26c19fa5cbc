"""`python -m kanitts` (also what `accelerate launch -m kanitts train` runs)."""

import sys

from kanitts.cli import main

sys.exit(main())
