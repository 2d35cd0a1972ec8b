import sys

from train.toyworld.world import main

sys.exit(main())
