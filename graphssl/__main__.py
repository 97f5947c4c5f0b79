import sys

from graphssl.cli import main

sys.exit(main())
