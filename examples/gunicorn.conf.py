"""gunicorn settings for SSE with gosse:

    gunicorn -c examples/gunicorn.conf.py --chdir examples broadcast_message:app

Each open stream holds one thread of the gthread worker, so ``threads`` is
the number of concurrent streams (plus ordinary requests) one worker serves.
One worker per broker unless a Redis backplane joins the workers.

Under this worker a Broker writes broadcasts straight to each stream's socket
(``Broker(direct_write=True)``, the default) instead of waking each stream's
thread: keep TLS in a proxy in front (gunicorn's own ``certfile`` turns that
off) and check ``broker.stats()["sessions_direct"]``.

The hooks imported from gosse.contrib.gunicorn end every stream as soon as a
worker is told to stop (SIGTERM: deploys, restarts), so clients reconnect
at once instead of being cut after graceful_timeout.
"""
from gosse.contrib.gunicorn import post_worker_init, worker_abort, worker_exit, worker_int  # noqa: F401

worker_class = "gthread"
workers = 1
threads = 200
# gthread's --timeout is the worker heartbeat, not a request timeout: a
# streaming response does not trip it.  Keep the default or larger.
timeout = 60
graceful_timeout = 5          # streams end at once on shutdown (the hooks above)
keepalive = 5
worker_connections = 2000
bind = "127.0.0.1:8080"
