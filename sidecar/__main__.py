"""``python -m sidecar``: the ``checkpoint-sidecar`` command line."""

import sys

from sidecar.server.cli import main

sys.exit(main())
