import sys

from smtpfilter.cli import main

sys.exit(main())
