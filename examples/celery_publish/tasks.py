"""A Celery task that reports its progress to the browser that asked for it.

The task runs in a Celery worker: no broker, no sessions, no listener thread
there.  It appends each progress event to the Redis stream of the web app's
``RedisBackplane`` with a :class:`gosse.backplane.redis.Publisher`; whichever
gunicorn worker holds the client's stream delivers it.

    celery -A tasks worker --pool solo --loglevel info

See README.md beside this file.
"""
import logging
import os
import time

from celery import Celery

from gosse import BackplaneError, JSONEvent, UnknownClientError
from gosse.backplane.redis import Publisher

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# The prefix of the web app's RedisBackplane (its history applies by itself).
PREFIX = os.environ.get("GOSSE_PREFIX", "gosse-celery")

app = Celery("tasks", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"))
app.conf.broker_connection_retry_on_startup = True

# One publisher per worker process, created at import: it connects on first
# use, and a prefork child opens its own connections.
publisher = Publisher(REDIS_URL, prefix=PREFIX)
log = logging.getLogger(__name__)


def report(client_id: str, event: JSONEvent) -> bool:
    """Send ``event`` to the client's streams.  Progress is best effort: the
    job goes on when the client is connected to no web worker right now, or
    when Redis cannot take the event (False)."""
    try:
        publisher.send(client_id, event)
        return True
    except UnknownClientError:
        log.info("client %s is not connected; progress not shown", client_id)
    except BackplaneError as exc:   # Redis unreachable, refused, or no answer
        log.warning("progress of %s not published: %s", client_id, exc)
    return False


@app.task
def export(job_id: str, client_id: str, steps: int = 5, delay: float = 0.2) -> str:
    """A long job (here: sleeping ``delay`` s per step) that sends a
    ``progress`` event after each step and a ``done`` event at the end."""
    for step in range(1, steps + 1):
        time.sleep(delay)   # the real work
        report(client_id, JSONEvent({"job": job_id, "done": step, "total": steps},
                                    event="progress"))
    report(client_id, JSONEvent({"job": job_id, "result": f"/exports/{job_id}.csv"},
                                event="done"))
    return job_id
