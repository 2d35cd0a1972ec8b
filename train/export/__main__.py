import sys

from train.export import main

sys.exit(main())
