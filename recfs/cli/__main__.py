"""`python -m recfs.cli ...`: the same as the `recfs` command."""

import sys

from recfs.cli.main import main

sys.exit(main())
