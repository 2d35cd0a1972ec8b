import sys

from train.evaluate.modes import main

sys.exit(main())
