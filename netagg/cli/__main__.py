"""``python -m netagg.cli``: the same as the ``netagg`` script (what the launchers and tests run)."""

import sys

from netagg.cli.main import main

sys.exit(main())
