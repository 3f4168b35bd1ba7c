"""``python -m fsmtl ...``: the same program as the ``fsmtl`` command."""

import sys

from fsmtl.cli import main
if __name__ == "__main__":
    sys.exit(main())
