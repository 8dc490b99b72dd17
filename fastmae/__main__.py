"""``python -m fastmae`` is the ``fastmae`` command."""

import sys

from fastmae.cli import main

sys.exit(main())
