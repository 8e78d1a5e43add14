"""``python -m crossjax ...``: the same command line as the ``crossjax`` script (:mod:`crossjax.cli`)."""

import sys

from crossjax.cli import main

sys.exit(main())
