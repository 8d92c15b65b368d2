"""``python -m smtpfilter``: the same command line as the ``smtpfilter`` entry point."""

import sys

from smtpfilter.cli import main

sys.exit(main())
