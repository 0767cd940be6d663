import sys

from minicrate.cli import main

sys.exit(main())
