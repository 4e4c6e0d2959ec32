"""The live demo behind ``gosse demo``: a page that shows an event stream.

Routes of the WSGI app:

* ``GET /``: the page (``gosse/static/``).  It opens an ``EventSource`` on
  ``sse`` and lists the events it receives.
* ``GET /sse``: the event stream: a ``clock`` event every second, and every
  message anyone publishes.  A reconnecting page resumes by
  ``Last-Event-ID`` (the broker keeps a history and numbers every event).
* ``POST /publish``: form or JSON fields ``data`` (required), ``event`` and
  ``id`` (optional); broadcasts the event and answers
  ``{"delivered": <sessions reached>}``.
* ``GET /stats``: ``broker.stats()`` as JSON.

Serve it with ``gosse demo`` (Werkzeug's threaded server), ``gosse demo
--gunicorn``, or gunicorn directly::

    gunicorn -k gthread --threads 100 -w 1 -c python:gosse.demo gosse.demo:app

One worker: the broker lives in the worker's memory.  ``-c python:gosse.demo``
loads the gunicorn server hooks of :mod:`gosse.contrib.gunicorn`, which end
the streams as soon as the worker is told to stop instead of after
gunicorn's ``--graceful-timeout``.
"""
from __future__ import annotations

import datetime
import json
import logging
import mimetypes
import pathlib
import threading
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from .broker import Broker
from .errors import BrokerClosedError
from .event import Event

__all__ = ["DemoApp", "create_app", "app", "CLOCK_EVENT", "MAX_BODY_BYTES"]

log = logging.getLogger("gosse.demo")

#: The event type of the clock ticks.
CLOCK_EVENT = "clock"
#: Largest accepted ``POST /publish`` body.
MAX_BODY_BYTES = 64 * 1024

# The page may load only its own files and talk only to its own origin; with
# no inline script allowed, injected markup could not run code either.
_PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; "
                                "object-src 'none'; base-uri 'none'; "
                                "frame-ancestors 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class _Request(Request):
    max_content_length = MAX_BODY_BYTES
    max_form_memory_size = MAX_BODY_BYTES


def _load_static() -> Dict[str, Tuple[bytes, str]]:
    """The files of ``gosse/static/``: name -> (content, content type)."""
    files: Dict[str, Tuple[bytes, str]] = {}
    # Next to this module, not under whatever ``import gosse`` finds: gunicorn
    # puts its working directory first on sys.path, and in the folder that
    # holds a checkout named gosse/ that name is a namespace package which
    # hides an editable install (whose finder comes after the path finder).
    root = pathlib.Path(__file__).resolve().parent / "static"
    for entry in root.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            ctype = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype in ("application/javascript",):
                ctype += "; charset=utf-8"
            files[entry.name] = (entry.read_bytes(), ctype)
    return files


class DemoApp:
    """The demo as a WSGI application around a :class:`~gosse.Broker`.

    The clock thread starts with :meth:`start` or, lazily, with the first
    request (so that importing the module, for example in a gunicorn master
    before it forks, starts no thread).  :meth:`close` stops the clock, ends
    every stream and refuses new ones.
    """

    def __init__(self, broker: Optional[Broker] = None, *, clock_interval: float = 1.0,
                 history: int = 1000):
        if broker is None:
            # auto_id + history: a page that reconnects (server restart
            # aside) resumes exactly where it left off.
            broker = Broker(history=history, auto_id=True, retry=2000)
        self.broker = broker
        self.clock_interval = clock_interval
        self._static = _load_static()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clock: Optional[threading.Thread] = None
        self._closed = False

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the clock thread (idempotent; no-op once closed)."""
        if self._clock is not None or self._closed or not self.clock_interval:
            return
        with self._lock:
            if self._clock is None and not self._closed:
                self._clock = threading.Thread(target=self._tick, name="gosse-demo-clock",
                                               daemon=True)
                self._clock.start()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the clock, end every stream (what is queued is written
        first) and refuse new streams.  Idempotent; returns within about
        ``timeout`` seconds."""
        with self._lock:
            self._closed = True
            clock = self._clock
        self._stop.set()
        if clock is not None and clock is not threading.current_thread():
            clock.join(timeout)
        self.broker.close(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def _tick(self) -> None:
        interval = self.clock_interval
        while True:
            now = datetime.datetime.now().astimezone()
            # Tick on whole multiples of the interval, like a wall clock.
            wait = interval - (now.timestamp() % interval)
            if wait < interval / 10:  # woke just before the boundary: skip it
                wait += interval
            if self._stop.wait(wait):
                return
            now = datetime.datetime.now().astimezone()
            try:
                self.broker.broadcast(Event(now.isoformat(timespec="seconds"),
                                            event=CLOCK_EVENT))
            except BrokerClosedError:
                return
            except Exception:  # never let the clock die silently
                log.exception("clock tick failed")

    # -- WSGI ------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        self.start()
        if environ.get("PATH_INFO") == "/sse":
            return self._sse(environ, start_response)
        request = _Request(environ)
        try:
            response = self._route(request)
        except HTTPException as exc:  # e.g. 413 from a too large body
            response = _error(exc.code or 400, exc.description or exc.name)
        return response(environ, start_response)

    def _sse(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        if request.method == "HEAD":  # headers only: no session
            return Response(b"", content_type="text/event-stream; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})(environ, start_response)
        if request.method != "GET":
            return _error(405, "use GET for the event stream",
                          {"Allow": "GET, HEAD"})(environ, start_response)
        client = request.args.get("client", "")[:100] or (
            f"{environ.get('REMOTE_ADDR', '?')}:{environ.get('REMOTE_PORT', '?')}")
        try:
            conn = self.broker.connect(client, environ)
        except BrokerClosedError:
            return _error(503, "the demo is shutting down")(environ, start_response)
        return conn(environ, start_response)

    def _route(self, request: Request) -> Response:
        path = request.path
        if path == "/publish":
            if request.method != "POST":
                return _error(405, "POST form or JSON fields: data (required), event, id",
                              {"Allow": "POST"})
            return self._publish(request)
        if path in ("/", "/index.html"):
            name = "index.html"
        elif path.startswith("/static/"):
            name = path[len("/static/"):]
        elif path == "/stats":
            name = None
        else:
            return _error(404, f"no such page: {path}")
        if request.method not in ("GET", "HEAD"):
            return _error(405, f"{request.method} is not allowed here",
                          {"Allow": "GET, HEAD"})
        if name is None:
            return _json(self.broker.stats())
        return self._file(name)

    def _file(self, name: str) -> Response:
        found = self._static.get(name)
        if found is None:
            return _error(404, f"no such file: {name}")
        content, ctype = found
        return Response(content, content_type=ctype, headers=_PAGE_HEADERS)

    def _publish(self, request: Request) -> Response:
        if request.is_json:
            fields = request.get_json(silent=True)
            if not isinstance(fields, dict):
                return _error(400, "the body must be a JSON object with a \"data\" field")
        else:
            fields = request.form
        data = fields.get("data")
        if data is None:
            return _error(400, "missing field \"data\" (form field or JSON key): "
                               "the text of the event to publish")
        if not isinstance(data, str):  # JSON numbers, objects...: send as JSON
            data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        event = fields.get("event") or None
        event_id = fields.get("id") or None
        for name, value in (("event", event), ("id", event_id)):
            if value is not None and not isinstance(value, str):
                return _error(400, f"field \"{name}\" must be a string")
        try:
            delivered = self.broker.broadcast(Event(data, event=event, id=event_id))
        except BrokerClosedError:
            return _error(503, "the demo is shutting down")
        except ValueError as exc:  # e.g. a lone surrogate from JSON
            return _error(400, str(exc))
        return _json({"delivered": delivered})


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value) + "\n", status=status, mimetype="application/json",
                    headers={"Cache-Control": "no-cache"})


def _error(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> Response:
    return Response(message + "\n", status=status, mimetype="text/plain", headers=headers)


def create_app(broker: Optional[Broker] = None, *, clock_interval: float = 1.0,
               history: int = 1000) -> DemoApp:
    """A new demo app (see :class:`DemoApp`); pass your own ``broker`` to
    change its settings."""
    return DemoApp(broker, clock_interval=clock_interval, history=history)


#: The app for WSGI servers: ``gunicorn -k gthread --threads 100 -w 1
#: -c python:gosse.demo gosse.demo:app``.
app = create_app()


# -- gunicorn server hooks (loaded by ``-c python:gosse.demo``) ---------------
# gunicorn reads only the module names that are its settings: these four, from
# gosse.contrib.gunicorn.  On SIGTERM they close the demo's broker at once
# (its clock thread stops at its next tick), so the worker stops in about a
# second instead of after --graceful-timeout.
from .contrib.gunicorn import (post_worker_init, worker_abort,  # noqa: E402,F401
                               worker_exit, worker_int)
