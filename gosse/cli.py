"""The ``gosse`` command line (``gosse listen``, ``gosse demo``, ``gosse publish``)."""
from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: gosse COMMAND [ARGS]

commands:
  demo      serve a live demo page (not yet available)
  listen    print the events of an SSE feed (not yet available)
"""


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``gosse`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    print(USAGE, end="", file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
