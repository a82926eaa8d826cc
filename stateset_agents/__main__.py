"""``python -m stateset_agents`` is the ``stateset-agents`` command."""

import sys

from .cli import main

sys.exit(main())
