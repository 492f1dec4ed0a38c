"""`python -m nnxp` runs the command line (same as the `nnxp` console script)."""

import sys

from .cli import main

sys.exit(main())
