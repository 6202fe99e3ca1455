import sys

from vlaser.cli import main

sys.exit(main())
