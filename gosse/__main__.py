"""``python -m gosse``: the ``gosse`` command line."""
import sys

from .cli import main

sys.exit(main())
