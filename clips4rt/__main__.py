import sys

from clips4rt.cli import main

sys.exit(main())
