"""``python -m sparsecnn.perf NETWORK ...`` == ``sparsecnn model NETWORK ...``."""

import sys

from .cli import main

sys.exit(main())
