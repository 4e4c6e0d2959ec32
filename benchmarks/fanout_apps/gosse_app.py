"""Fan-out contender: gosse's Broker under gunicorn ``-k gthread`` (or any
WSGI server).  GET /sse?client=ID streams; POST /broadcast?seq=S broadcasts
one event whose data is ``"S <time.monotonic() at broadcast> <pad>"``.

The queue bound is raised (FANOUT_QUEUE, default 1,000,000) so that the
saturation phase measures throughput, not gosse's slow-reader cut-off; the
other contenders' queues are unbounded.  FANOUT_DIRECT=0 turns direct
writes off (the ``gosse-queue`` contender).

FANOUT_PROBE=1 (bench_fanout.py ``--only lockprobe``) adds the lock-wait
probe: ``POST /probe/start`` starts a thread that calls ``broker.stats()``
every FANOUT_PROBE_INTERVAL s (default 0.001) and times each call, and right
after it the same amount of Python work without the broker's lock (the
"control": what the GIL alone costs a call in this process); the view times
``broker.connect()`` for every client id starting with ``probe``; ``POST
/probe/stop`` stops the thread and answers every sample since the start as
JSON ``{"stats": [[t, secs], ...], "control": [...], "connect": [...]}``
(t = ``time.monotonic()`` at the call: one clock with the load process)."""
import json
import os
import sys
import threading
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
        if PROBE is not None and client.startswith("probe"):
            t = monotonic()
            conn = broker.connect(client, environ)
            PROBE.connect.append((t, monotonic() - t))
            return conn(environ, start_response)
        return broker.connect(client, environ)(environ, start_response)
    if path == "/broadcast":
        seq = environ["QUERY_STRING"][4:]                     # "seq=N"
        broker.broadcast(Event(f"{seq} {monotonic():.6f} {PAD}"))
        start_response("200 OK", OK)
        return [b"ok"]
    if PROBE is not None and path in ("/probe/start", "/probe/stop"):
        body = json.dumps(PROBE.start() if path == "/probe/start" else PROBE.stop()).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]


class Probe:
    """The lock-wait probe (see the module docstring).  Its lists are
    appended to by the probe thread (stats, control) and by request threads
    (connect; ``list.append`` is atomic); ``start``/``stop`` swap them, from
    the one driver connection that calls them one at a time."""

    MAX_SAMPLES = 200_000            # ~200 s at the default interval
    MAX_SECS = 300.0                 # the thread ends by itself after this

    def __init__(self, interval):
        self.interval = interval
        self.stats, self.control, self.connect = [], [], []
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self.stop()
        self.stats, self.control, self.connect = [], [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(self._stop,),
                                        name="fanout-stats-probe", daemon=True)
        self._thread.start()
        return {"started": True}

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        out = {"stats": self.stats, "control": self.control, "connect": self.connect}
        self.stats, self.control, self.connect = [], [], []
        return out

    def _loop(self, stop):
        stats, control = self.stats, self.control
        end = monotonic() + self.MAX_SECS
        work = 0
        while not stop.wait(self.interval) and len(stats) < self.MAX_SAMPLES:
            t = monotonic()
            if t > end:
                break
            work = broker.stats()["sessions"]
            t1 = monotonic()
            stats.append((t, t1 - t))
            sum(1 for _ in range(work))      # ~ stats()'s per-session loop, no lock
            control.append((t1, monotonic() - t1))


PROBE = (Probe(float(os.environ.get("FANOUT_PROBE_INTERVAL", "0.001")))
         if os.environ.get("FANOUT_PROBE") == "1" else None)
