"""`python -m vertedge_train` = the `vertedge-train` command."""

import sys

from .cli import main

sys.exit(main())
