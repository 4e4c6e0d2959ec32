"""End every gosse stream cleanly when a server without gosse hooks is told
to stop (Werkzeug's server, Django's ``runserver``, waitress).

An SSE response never ends by itself: on ``SIGTERM`` these servers die at
once (Werkzeug, ``runserver``: the default action) or stop their loop with
responses half-written, and every client sees its stream cut.  Call
:func:`close_on_sigterm` once at import, in the process that serves::

    from gosse.contrib.signals import close_on_sigterm
    close_on_sigterm()

On ``SIGTERM`` every :class:`~gosse.Broker` of the process is closed (each
stream writes what it has queued and ends with the last chunk), then the
server is stopped as by Ctrl-C (``SIGINT``: ``KeyboardInterrupt`` in the
main thread, which all three servers take as "stop").  The handler itself
returns at once: waitress's main thread is the one that writes every
response, so it must keep running while the streams end.

(gunicorn: use :mod:`gosse.contrib.gunicorn` instead.  uWSGI kills its
workers on ``SIGTERM`` with ``--die-on-term``; see docs/guides/gunicorn.rst.)
"""
from __future__ import annotations

import _thread
import os
import signal
import threading
import time
from typing import Any, Optional

from .gunicorn import CLOSE_TIMEOUT, close_brokers

__all__ = ["close_on_sigterm"]

#: Seconds between the end of the streams and the stop of the server: time
#: for a server whose main loop writes the responses (waitress) to send the
#: last chunks it was handed.
FLUSH_GRACE = 0.3

# Set by the handler (the main thread only): the close that is running.
_closing: Optional[threading.Event] = None


def close_on_sigterm(timeout: float = CLOSE_TIMEOUT, then: int = signal.SIGINT) -> None:
    """Install a ``SIGTERM`` handler (call from the main thread) that closes
    every broker of the process within about ``timeout`` seconds, then sends
    the process ``then`` (``SIGINT`` by default: the server stops as on
    Ctrl-C).  A second ``SIGTERM`` while closing is ignored."""

    def on_term(signum: int, frame: Any) -> None:
        global _closing
        if _closing is not None:
            return
        done = _closing = threading.Event()

        def run() -> None:
            try:
                close_brokers(timeout)
                time.sleep(FLUSH_GRACE)   # let the server's loop send the last chunks
            finally:
                done.set()
                os.kill(os.getpid(), then)

        # Not threading.Thread().start(): it waits for the thread, which a
        # signal handler must not do under gevent/eventlet (see the gunicorn hooks).
        _thread.start_new_thread(run, ())

    signal.signal(signal.SIGTERM, on_term)
