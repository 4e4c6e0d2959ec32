"""gunicorn settings for the connection-scale runs (bench_fanout.py --only scale).

FANOUT_STACK_KIB=256 makes every thread the worker starts afterwards (the
gthread pool's, one per open stream) reserve a 256 KiB stack instead of
glibc's default (8 MiB, RLIMIT_STACK): ``threading.stack_size`` is called in
``post_fork``, i.e. in the worker before its thread pool exists.  Only
touched stack pages count in RSS, so this bounds virtual memory (5,000 x
8 MiB = 40 GiB reserved) more than resident memory; a stream's thread uses
well under 64 KiB of stack (the call depth of gunicorn -> WSGI app -> gosse
is ~20 frames).
"""
import os
import threading

_stack_kib = int(os.environ.get("FANOUT_STACK_KIB", "0") or 0)


def post_fork(server, worker):
    if _stack_kib:
        threading.stack_size(_stack_kib * 1024)
