import sys

from train.export.graphs import main

sys.exit(main())
