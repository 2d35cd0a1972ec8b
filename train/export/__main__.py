import sys

from train.export.cli import main

sys.exit(main())
