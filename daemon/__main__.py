"""``python -m daemon`` is the ``ivanti-xmatters`` command."""

import sys

from daemon.cli import main

sys.exit(main())
