"""gunicorn server hooks that end gosse streams as soon as a worker is told
to stop.

An SSE response never ends by itself.  On ``SIGTERM`` (a deploy, a restart,
``docker stop``, a ``max_requests`` recycle) gunicorn's gthread worker stops
accepting and waits for its open requests until ``--graceful-timeout``; then
the master kills it, and every client sees its stream cut.  These hooks
close every :class:`~gosse.Broker` of the worker instead, at once: each
stream writes what it has queued and ends cleanly (clients see an orderly
end of the response and reconnect, to another worker or server, resuming
by ``Last-Event-ID``), the worker exits within about a second, and a Redis
backplane withdraws the worker's presence on the way out.

Use it as gunicorn's config module::

    gunicorn -k gthread --threads 100 -c python:gosse.contrib.gunicorn app:app

or, with a config file of your own, import the hooks into it::

    # gunicorn.conf.py
    from gosse.contrib.gunicorn import (post_worker_init, worker_int,
                                        worker_abort, worker_exit)

If you have hooks of the same names, call ours from yours
(``gosse.contrib.gunicorn.post_worker_init(worker)``, ...), or call
:func:`close_brokers` from a hook of your own.

Every broker of the worker process is closed: the ones the app created at
import (or that a ``--preload`` master created before forking) and any made
later.  A broker registers itself when it is created and leaves the
registry when it is closed (:func:`gosse.broker.live_brokers`).
"""
from __future__ import annotations

import _thread
import logging
import os
import signal
import threading
from typing import Any, Optional

from ..broker import live_brokers

__all__ = ["post_worker_init", "worker_int", "worker_abort", "worker_exit",
           "close_brokers"]

_log = logging.getLogger("gosse.contrib.gunicorn")

#: Seconds a closing broker waits for its streams to write what is queued
#: before it shuts their sockets down (``Broker.close(timeout)``).
CLOSE_TIMEOUT = 1.0

# Set once by the SIGTERM handler (only the worker's main thread runs it):
# the Event the closing thread or greenlet sets when it is done.
_closed: Optional[threading.Event] = None


def close_brokers(timeout: float = CLOSE_TIMEOUT) -> int:
    """Close every open :class:`~gosse.Broker` of this process, side by
    side; return how many there were.  Returns within about ``timeout``
    seconds (plus what a Redis backplane needs to withdraw presence).
    Errors are logged, never raised: this runs while a worker stops."""
    brokers = live_brokers()
    if len(brokers) == 1:
        _close_one(brokers[0], timeout)
        return 1
    threads = [threading.Thread(target=_close_one, args=(b, timeout),
                                name="gosse-close-broker", daemon=True) for b in brokers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5.0)
    return len(brokers)


def _close_one(broker: Any, timeout: float) -> None:
    try:
        broker.close(timeout)
    except Exception:  # never let a stopping worker die of this
        _log.exception("closing %r failed", broker)


def _close_in_background() -> None:
    """Start closing the brokers without waiting (for a signal handler,
    which must not block: the worker's main loop has to keep running).

    ``threading.Thread.start()`` waits until the new thread runs.  Under
    gevent and eventlet the handler may run in the event loop itself, where
    waiting is forbidden (gevent's ``BlockingSwitchOutError``, eventlet's
    "Cannot switch to MAINLOOP from MAINLOOP"): the worker crashed and cut
    every stream.  ``_thread.start_new_thread`` returns at once; both
    libraries patch it to spawn a greenlet, which is what runs the close
    there (its waits are cooperative)."""
    global _closed
    if _closed is not None:   # a second SIGTERM: the first close is running
        return
    done = _closed = threading.Event()

    def run() -> None:
        try:
            close_brokers()
        finally:
            done.set()

    _thread.start_new_thread(run, ())


def _wait_for_closer(timeout: float) -> None:
    done = _closed
    if done is not None:
        done.wait(timeout)


# -- the hooks (gunicorn takes these module names as its settings) -------------

def post_worker_init(worker: Any) -> None:
    """Make the worker's ``SIGTERM`` (graceful stop) end the streams at once,
    then stop as gunicorn would (its own handler still runs)."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        _close_in_background()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn had it


def worker_int(worker: Any) -> None:
    """``SIGINT``/``SIGQUIT`` (quick stop): end the streams before the worker
    exits, waiting at most half a second for them."""
    _wait_for_closer(0.5)
    close_brokers(timeout=0.5)


def worker_abort(worker: Any) -> None:
    """``SIGABRT`` (the worker missed its heartbeat, ``--timeout``): end the
    streams quickly before the worker exits."""
    close_brokers(timeout=0.2)


def worker_exit(server: Any, worker: Any) -> None:
    """When the worker process ends: finish a close that ``SIGTERM`` started
    and close whatever is still open, so a backplane withdraws this worker's
    presence.  gunicorn also calls this hook in the master for each worker it
    reaps: there it does nothing (the master's brokers, if the app was
    preloaded, are the ones the next workers inherit)."""
    if getattr(worker, "pid", None) != os.getpid():
        return
    _wait_for_closer(CLOSE_TIMEOUT + 3.0)
    close_brokers(timeout=0.5)

