"""`python -m export_platform.tooling.cli`: the console script without the venv's bin on PATH."""

import sys

from . import main

sys.exit(main())
