"""Old name of ``python -m train.toyworld.teacher`` (kept so earlier commands run)."""

import sys

from train.toyworld.teacher import main

if __name__ == "__main__":
    sys.exit(main())
