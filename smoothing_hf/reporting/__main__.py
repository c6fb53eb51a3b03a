"""``python -m smoothing_hf.reporting``: the report command line (``cli.py``)."""

import sys

from .cli import main

sys.exit(main())
