"""``python -m lrobridge.cli``: the same as the ``lrobridge`` command."""

import sys

from lrobridge.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
