"""The app of the delivery-defect tests (tests/test_delivery_defects.py,
tests/test_stress_delivery.py): a Broker with every session and every
disconnect callback recorded, served by gunicorn (``defects_app:app``) or
in-process by Werkzeug (``make_app``).

Configured from the environment (gunicorn) or ``make_app``'s arguments:
``GOSSE_T_HEARTBEAT``, ``GOSSE_T_QUEUE``, ``GOSSE_T_QUEUE_BYTES``,
``GOSSE_T_MAX_AGE`` (Broker options) and ``GOSSE_T_WRAP=gen`` (wrap the
app in a middleware that does not forward ``close()``).

Routes:

* ``GET /sse?client=ID[&timeout=S]``: a stream (``timeout``: first call
  ``settimeout(S)`` on ``gunicorn.socket``, as some apps do).
* ``GET /bad/<case>?client=ID``: a session that is never served: ``other``
  (the view connects, then returns another response), ``reject`` (the
  ``start_response`` it is given rejects the headers); ``/flask/sse`` and
  ``/flask/bad/<case>`` are the same through Flask, where ``after`` is an
  ``after_request`` that raises.
* ``GET /whoami``: ``REMOTE_PORT`` (which connection carried the request).
* ``POST /burst?n=N&size=S&tag=T&first=F``: broadcast events
  ``payload(T, i, S)`` (id ``T-i``) for i from F (0) to F+N-1; answers
  ``{"n": delivered, "seconds": elapsed}``.
* ``POST /close/<client>?timeout=S``, ``POST /broker-close``:
  ``conn.close()`` of the client's sessions (``conn.close(timeout=S)`` if
  given), ``broker.close()``.
* ``POST /big-then?size=S&then=close|broker|none&client=ID``: one event of
  ``S`` bytes, then (in the same request) end the client's sessions.
* ``POST /race?client=ID&size=S&then=close|broker``: one event of ``S``
  bytes, and from another thread the end of the client's sessions while
  the kernel takes that event's bytes; ``GET /ending/<client>`` is
  ``True`` from the moment that end starts.
* ``POST /pump?client=ID&size=S&most=N``: events of ``S`` bytes until the
  client has no session (at most ``N``, 8 by default, and 5 s).
* ``GET /conns/<client>``: every session that client ever had: ``done``,
  ``end_reason``, disconnect ``callbacks``.
* ``GET /stats``: ``broker.stats()`` plus the callback totals.
"""
import fcntl
import json
import os
import struct
import termios
import threading
import time
from collections import Counter

from werkzeug.wrappers import Request, Response

from gosse import Broker, Event


def payload(tag, i, size=0):
    """The data of event ``i`` of burst ``tag``: multi-line, non-ASCII,
    padded to at least ``size`` characters; byte-exact checks compare it."""
    head = f"{tag}-{i:08d}\nligne 2 é ✓ 雪\n"
    return head + "x" * max(0, size - len(head))


def make_event(tag, i, size=0):
    return Event(payload(tag, i, size), id=f"{tag}-{i}")


class Record:
    """Every session the app opened and every disconnect callback.
    Owned by the app; ``lock`` guards both maps (request threads and the
    broker's callback write them)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.conns = {}              # client id -> [ClientConnection]
        self.callbacks = Counter()   # session id -> calls
        self.socks = {}              # session id -> the server's client socket
        self.ending = set()          # client ids /race is ending now

    def add(self, conn, environ):
        with self.lock:
            self.conns.setdefault(conn.id, []).append(conn)
            self.socks[conn.session_id] = environ.get("gunicorn.socket")

    def disconnected(self, client_id, session_id):
        with self.lock:
            self.callbacks[session_id] += 1

    def describe(self, client_id):
        with self.lock:
            return [{"session": c.session_id, "done": c.done.is_set(),
                     "end_reason": c.end_reason, "callbacks": self.callbacks[c.session_id]}
                    for c in self.conns.get(client_id, ())]

    def totals(self):
        with self.lock:
            return {"callbacks": sum(self.callbacks.values()),
                    "callback_sessions": len(self.callbacks),
                    "callbacks_max": max(self.callbacks.values(), default=0)}


def unsent_bytes(sock):
    """Bytes in ``sock``'s kernel send queue not yet acknowledged (Linux
    SIOCOUTQ), or 0 if unknown."""
    if sock is None:
        return 0
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return struct.unpack("i", buf)[0]


def no_close_middleware(app):
    """A middleware that iterates the app's body in a plain generator and
    does not forward ``close()`` (as many hand-written ones do)."""
    def wrapped(environ, start_response):
        body = app(environ, start_response)
        for chunk in body:   # noqa: UP028 - ``yield from`` would forward close()
            yield chunk
    return wrapped


def rejecting_start_response(start_response):
    def start(status, headers, exc_info=None):
        raise ValueError("this server rejects a header")
    return start


def make_app(broker, record, wrap=None):
    """The WSGI app of this module around ``broker``; ``record`` sees every
    session; ``wrap="gen"`` adds :func:`no_close_middleware`."""
    broker.set_disconnect_callback(record.disconnected)

    def connect(environ):
        args = Request(environ).args
        timeout = args.get("timeout")
        if timeout:
            environ["gunicorn.socket"].settimeout(float(timeout))
        conn = broker.connect(args.get("client", "anon"), environ)
        if not conn.refused:
            record.add(conn, environ)
        return conn

    @Request.application
    def control(request):
        path, args = request.path, request.args
        if path == "/whoami":
            return Response(str(request.environ.get("REMOTE_PORT")))
        if path == "/burst":
            n, size, tag = int(args["n"]), int(args.get("size", 0)), args.get("tag", "b")
            first = int(args.get("first", 0))
            start = time.monotonic()
            sent = sum(broker.broadcast(make_event(tag, i, size))
                       for i in range(first, first + n))
            return Response(json.dumps({"n": sent, "seconds": time.monotonic() - start}),
                            mimetype="application/json")
        if path.startswith("/close/"):
            conns = broker.sessions(path[len("/close/"):])
            timeout = {"timeout": float(args["timeout"])} if "timeout" in args else {}
            for conn in conns:
                conn.close(**timeout)
            return Response(str(len(conns)))
        if path == "/broker-close":
            broker.close()
            return Response("closed")
        if path == "/big-then":
            client, then = args["client"], args.get("then", "none")
            n = broker.broadcast(make_event("big", 0, int(args["size"])))
            if then == "close":
                for conn in broker.sessions(client):
                    conn.close()
            elif then == "broker":
                broker.close()
            return Response(str(n))
        if path == "/race":
            # One big broadcast and the end of the client's sessions from two
            # threads at once: the end lands while the kernel is taking the
            # broadcast's bytes (the socket's send queue starts growing).
            client, then = args["client"], args.get("then", "close")
            conns = broker.sessions(client)
            socks = [record.socks[c.session_id] for c in conns]
            barrier = threading.Barrier(2, timeout=5)

            def end():
                barrier.wait()
                deadline = time.monotonic() + 2
                while (not any(unsent_bytes(s) > 0 for s in socks)
                       and time.monotonic() < deadline):
                    pass   # busy: the send it waits for lasts about a millisecond
                with record.lock:
                    record.ending.add(client)
                if then == "broker":
                    broker.close()
                else:
                    for conn in conns:
                        conn.close()

            ender = threading.Thread(target=end)
            ender.start()
            barrier.wait()
            n = broker.broadcast(make_event("big", 0, int(args["size"])))
            ender.join(10)
            return Response(str(n))
        if path == "/pump":
            # Big broadcasts until the client has no session (bounded).
            client, size, most = args["client"], int(args["size"]), int(args.get("most", 8))
            count = 0
            deadline = time.monotonic() + 5
            while broker.sessions(client) and count < most and time.monotonic() < deadline:
                broker.broadcast(make_event("pump", count, size))
                count += 1
            return Response(str(count))
        if path.startswith("/ending/"):
            with record.lock:
                return Response(str(path[len("/ending/"):] in record.ending))
        if path.startswith("/conns/"):
            return Response(json.dumps(record.describe(path[len("/conns/"):])),
                            mimetype="application/json")
        if path == "/stats":
            return Response(json.dumps({**broker.stats(), **record.totals()}),
                            mimetype="application/json")
        return Response("not found", status=404)

    def plain(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/sse":
            return connect(environ)(environ, start_response)
        if path == "/bad/other":
            connect(environ)
            return Response("something else")(environ, start_response)
        if path == "/bad/reject":
            return connect(environ)(environ, rejecting_start_response(start_response))
        return control(environ, start_response)

    flask = make_flask_app(connect)

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path.startswith("/flask/"):
            if path == "/flask/bad/reject":
                start_response = rejecting_start_response(start_response)
            return flask(environ, start_response)
        return plain(environ, start_response)

    return no_close_middleware(app) if wrap == "gen" else app


def make_flask_app(connect):
    from flask import Flask, request

    flask = Flask(__name__)

    @flask.route("/flask/sse")
    @flask.route("/flask/bad/reject")
    def sse():
        return connect(request.environ)

    @flask.route("/flask/bad/after")
    def after():
        return connect(request.environ)

    @flask.route("/flask/bad/other")
    def other():
        connect(request.environ)
        return "something else"

    @flask.after_request
    def fail_after(response):
        if request.path == "/flask/bad/after":
            raise RuntimeError("after_request failed")
        return response

    return flask


def broker_from_env():
    max_age = os.environ.get("GOSSE_T_MAX_AGE")
    queue_bytes = os.environ.get("GOSSE_T_QUEUE_BYTES")   # only if set: older Brokers lack it
    return Broker(heartbeat_interval=float(os.environ.get("GOSSE_T_HEARTBEAT", "15")),
                  queue_size=int(os.environ.get("GOSSE_T_QUEUE", "1024")),
                  max_connection_age=float(max_age) if max_age else None,
                  **({"queue_bytes": int(queue_bytes)} if queue_bytes else {}))


broker = broker_from_env()
record = Record()
app = make_app(broker, record, wrap=os.environ.get("GOSSE_T_WRAP"))
