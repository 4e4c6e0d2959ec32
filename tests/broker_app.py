"""A plain Werkzeug WSGI app around a Broker, used by the tests in-process
(Werkzeug's server) and by gunicorn (``broker_app:app``)."""
import json
import os
import threading

from werkzeug.wrappers import Request, Response

from gosse import Broker, Event, UnknownClientError
from servers import sse_view


def make_app(broker):
    @Request.application
    def _control(request):
        form = request.form
        event = Event(form.get("data", ""), event=form.get("event"), id=form.get("id"))
        path = request.path
        if path == "/broadcast":
            n = broker.broadcast(event)
        elif path.startswith("/send/"):
            try:
                n = broker.send(path[len("/send/"):], event)
            except UnknownClientError as exc:
                return Response(str(exc), status=404)
        elif path.startswith("/publish/"):
            n = broker.publish(path[len("/publish/"):], event)
        elif path == "/burst":   # n events of size bytes, as fast as possible
            count, size = int(form["n"]), int(form.get("size", 10))
            n = 0
            for i in range(count):
                n += broker.broadcast(Event(f"{i:08d}".ljust(size, "x"), id=str(i)))
        elif path == "/socket-calls-under-lock":   # a burst, watched
            count = int(form["n"])
            calls = socket_calls_under_lock(
                broker, lambda: [broker.broadcast(Event(f"{i:08d}", id=str(i)))
                                 for i in range(count)])
            return Response(json.dumps(calls), mimetype="application/json")
        elif path.startswith("/close/"):
            sessions = broker.sessions(path[len("/close/"):])
            for conn in sessions:
                conn.close()
            n = len(sessions)
        elif path == "/stats":
            return Response(json.dumps(broker.stats()), mimetype="application/json")
        elif path == "/process":
            return Response(json.dumps(process_stats()), mimetype="application/json")
        else:
            return Response("not found", status=404)
        return Response(str(n))

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/sse":
            return sse_view(broker, environ, start_response)
        return _control(environ, start_response)

    return app


def socket_calls_under_lock(broker, work):
    """Run ``work()`` in this thread with a profile hook that records every
    call of a socket method made while the broker's registry lock is held
    (a C call shows in ``sys.setprofile`` as "c_call"): what issue 12 calls
    syscalls under the lock.  Returns the names of those calls."""
    import socket
    import sys
    calls = []
    lock = broker._lock

    def hook(frame, event, arg):
        if (event == "c_call" and isinstance(getattr(arg, "__self__", None), socket.socket)
                and lock.locked()):
            calls.append(arg.__name__)

    sys.setprofile(hook)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def process_stats():
    """This process's threads, open fds and RSS, and the disconnect callback's
    bookkeeping (calls, distinct sessions)."""
    with open("/proc/self/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {"pid": os.getpid(), "threads": threading.active_count(),
            "fds": len(os.listdir("/proc/self/fd")), "rss_kib": rss_kib,
            "disconnects": DISCONNECTS["calls"], "distinct_disconnects": len(DISCONNECTS["seen"])}


# Session ids are hashed into a set of ints to count distinct calls without
# the bookkeeping itself growing the heap much.
DISCONNECTS = {"calls": 0, "seen": set()}


def _disconnected(client_id, session_id):
    DISCONNECTS["calls"] += 1
    DISCONNECTS["seen"].add(hash(session_id))

broker = Broker(heartbeat_interval=float(os.environ.get("GOSSE_TEST_HEARTBEAT", "15")),
                history=int(os.environ.get("GOSSE_TEST_HISTORY", "0")),
                queue_size=int(os.environ.get("GOSSE_TEST_QUEUE", "1024")),
                queue_bytes=int(os.environ.get("GOSSE_TEST_QUEUE_BYTES", str(8 << 20))),
                direct_write=os.environ.get("GOSSE_TEST_DIRECT", "1") == "1",
                max_connection_age=float(os.environ.get("GOSSE_TEST_MAX_AGE", "0")) or None)
broker.set_disconnect_callback(_disconnected)
app = make_app(broker)
