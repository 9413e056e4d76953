"""`python -m callsgw ...` is the same as the `callsgw` command."""

import sys

from callsgw.cli import main

sys.exit(main())
