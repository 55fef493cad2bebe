"""`python -m generator`: see generator/cli.py and `--help`."""

import sys

from generator.cli import main

sys.exit(main())
