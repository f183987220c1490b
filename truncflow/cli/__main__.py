"""``python -m truncflow.cli``: the command line, as ``python -m truncflow``."""
import sys

from . import main

sys.exit(main())
