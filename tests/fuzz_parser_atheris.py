#!/usr/bin/env python3
"""Coverage-guided fuzzing of the client parser with atheris (optional; the
suite does not need it: tests/test_fuzz.py runs the same checks with
hypothesis).

    python3 -m pip install atheris
    python3 tests/fuzz_parser_atheris.py -atheris_runs=200000      # or -max_total_time=60

Each input is split into limits (first 2 bytes), cut positions (next 8
bytes) and the stream (the rest); ``fuzz_harness.check_chunkings`` feeds it
whole, byte by byte and cut, and fails on any exception other than
``EventStreamError``, any difference between the feedings, or a buffer over
its limit.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris

with atheris.instrument_imports():
    import gosse.parser  # noqa: F401

from fuzz_harness import check_chunkings


def one_input(data: bytes) -> None:
    if len(data) < 10:
        return
    limits = {"max_line_bytes": 1 + data[0] % 64,
              "max_event_size": None if data[1] & 0x80 else 1 + data[1] % 96}
    cuts = list(data[2:10])
    check_chunkings(data[10:], cuts, **limits)
    check_chunkings(data[10:], cuts)  # default limits


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
