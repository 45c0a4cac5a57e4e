"""``python -m anti_i2v`` runs the command line."""

import sys

from .cli import main

sys.exit(main())
