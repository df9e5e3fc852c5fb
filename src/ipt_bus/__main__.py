"""`python -m ipt_bus`: the `ipt-bus` command, for environments without the console script."""

import sys

from ipt_bus.cli import main

sys.exit(main())
