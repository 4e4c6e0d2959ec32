"""Fan-out contender: gosse's Broker under gunicorn ``-k gthread`` (or any
WSGI server).  GET /sse?client=ID streams; POST /broadcast?seq=S broadcasts
one event whose data is ``"S <time.monotonic() at broadcast> <pad>"``.

The queue bound is raised (FANOUT_QUEUE, default 1,000,000) so that the
saturation phase measures throughput, not gosse's slow-reader cut-off; the
other contenders' queues are unbounded.  FANOUT_DIRECT=0 turns direct
writes off (the ``gosse-queue`` contender)."""
import os
import sys
import time

from gosse import Broker, Event

PAD = "x" * 70
if os.environ.get("FANOUT_SWITCH_INTERVAL"):     # an experiment: the GIL's switch interval
    sys.setswitchinterval(float(os.environ["FANOUT_SWITCH_INTERVAL"]))
broker = Broker(queue_size=int(os.environ.get("FANOUT_QUEUE", "1000000")),
                heartbeat_interval=60,
                direct_write=os.environ.get("FANOUT_DIRECT", "1") == "1")
monotonic = time.monotonic
OK = [("Content-Type", "text/plain"), ("Content-Length", "2")]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sse":
        client = environ.get("QUERY_STRING", "").partition("client=")[2] or "anon"
        return broker.connect(client, environ)(environ, start_response)
    if path == "/broadcast":
        seq = environ["QUERY_STRING"][4:]                     # "seq=N"
        broker.broadcast(Event(f"{seq} {monotonic():.6f} {PAD}"))
        start_response("200 OK", OK)
        return [b"ok"]
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]
