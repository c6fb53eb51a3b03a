"""``python -m smoothing_hf.report``: the report command line, kept under the name the README and published
scripts use; the command lives in ``smoothing_hf.reporting.cli``."""

import sys

from .reporting.cli import main

if __name__ == "__main__":
    sys.exit(main())
