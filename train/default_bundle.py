"""Old name of ``python -m train.export.default_bundle`` (kept so earlier commands run)."""

import sys

from train.export.default_bundle import main

if __name__ == "__main__":
    sys.exit(main())
