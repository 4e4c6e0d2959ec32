"""gunicorn settings for the Redis scale-out example:

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c gunicorn.conf.py app:app
"""
import os

worker_class = "gthread"
workers = int(os.environ.get("WORKERS", "3"))
threads = 200                  # one thread per open stream, per worker
timeout = 60                   # the worker heartbeat, not a request timeout
graceful_timeout = 5
keepalive = 5
bind = os.environ.get("BIND", "127.0.0.1:8080")


def worker_exit(server, worker):
    """End this worker's streams and withdraw its clients' presence at once
    (a worker that dies without this is forgotten after presence_ttl)."""
    import sys
    module = sys.modules.get("app")
    if module is not None:
        module.broker.close()
