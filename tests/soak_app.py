"""The app of the "nothing lost" tests (tests/test_soak.py), run by gunicorn
gthread (``soak_app:app``).

Configured from the environment:

* ``GOSSE_REDIS_URL`` (and ``GOSSE_REDIS_PREFIX``): use a RedisBackplane
  (``auto_id``: ids are the Redis stream's); without it, an in-process
  broker keeping ``GOSSE_TEST_HISTORY`` events for replay.
* ``GOSSE_TEST_MAX_AGE``: ``max_connection_age`` in seconds (streams end
  cleanly at random ages, so clients resume by ``Last-Event-ID``).
* ``GOSSE_TEST_HEARTBEAT``: heartbeat interval.

Routes:

* ``GET /sse?client=ID``: the stream (``Last-Event-ID`` resumes); every
  stream response carries ``X-Worker-Pid``.
* ``POST /pump?count=N&rate=R``: broadcast events ``0`` .. ``N-1`` (data and,
  without Redis, id = the number) at ``R`` events/s from a thread of this
  worker; ``GET /pump``: ``{"sent": k, "done": bool}``.
* ``GET /stats``: the broker's stats plus ``pid``.
"""
import json
import os
import threading
import time

from werkzeug.wrappers import Request, Response

from gosse import Broker, BrokerClosedError, Event

PID = os.getpid()
_redis_url = os.environ.get("GOSSE_REDIS_URL")
_max_age = os.environ.get("GOSSE_TEST_MAX_AGE")
_options = dict(heartbeat_interval=float(os.environ.get("GOSSE_TEST_HEARTBEAT", "15")),
                headers={"X-Worker-Pid": str(PID)},
                max_connection_age=float(_max_age) if _max_age else None)
if _redis_url:
    from gosse.backplane.redis import RedisBackplane
    broker = Broker(auto_id=True, backplane=RedisBackplane(
        _redis_url, prefix=os.environ.get("GOSSE_REDIS_PREFIX", "soak"), presence_ttl=3.0,
        max_backoff=0.5), **_options)
else:
    broker = Broker(history=int(os.environ.get("GOSSE_TEST_HISTORY", "20000")), **_options)

_pump = {"sent": 0, "done": False, "thread": None}


def pump(count, rate, stop=None):
    """Broadcast ``count`` numbered events at ``rate`` per second, paced on
    the monotonic clock (late ticks are caught up, not skipped)."""
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if stop is not None and stop.is_set():
            break
        broker.broadcast(Event(str(i), id=None if _redis_url else str(i)))
        _pump["sent"] = i + 1
    _pump["done"] = True


@Request.application
def _control(request):
    if request.path == "/pump":
        if request.method == "POST":
            if _pump["thread"] is not None:
                return Response("already pumping", status=409)
            count = int(request.args["count"])
            rate = float(request.args.get("rate", "200"))
            t = threading.Thread(target=pump, args=(count, rate), daemon=True)
            _pump["thread"] = t
            t.start()
            return Response("started")
        return Response(json.dumps({"sent": _pump["sent"], "done": _pump["done"]}),
                        mimetype="application/json")
    if request.path == "/stats":
        return Response(json.dumps({**broker.stats(), "pid": PID}), mimetype="application/json")
    return Response("not found", status=404)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/sse":
        client = Request(environ).args.get("client", "anon")
        try:
            conn = broker.connect(client, environ)
        except BrokerClosedError:   # this worker is stopping: try another
            start_response("503 Service Unavailable",
                           [("Content-Type", "text/plain"), ("Retry-After", "0")])
            return [b"stopping\n"]
        return conn(environ, start_response)
    return _control(environ, start_response)
