"""``python -m fusekernels``: the command line of :mod:`fusekernels.cli`."""
import sys

from .cli import main

sys.exit(main())
