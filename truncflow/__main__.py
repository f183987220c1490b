"""``python -m truncflow``: the command line (see truncflow.cli)."""
import sys

from .cli import main

sys.exit(main())
