"""The live demo behind ``gosse demo``: two pages driven by one broker.

Routes of the WSGI app:

* ``GET /``: the events page (``gosse/static/``).  It opens an
  ``EventSource`` on ``sse`` and lists the events it receives.
* ``GET /live``: the jobs and chat page: background jobs with a progress bar
  and a small chat, on one ``EventSource`` (``sse?topic=jobs``).
* ``GET /sse``: the event stream: a ``clock`` event every second, and every
  event anyone publishes or chats; ``?topic=NAME`` (repeatable) also joins
  topics, e.g. ``jobs``.  A reconnecting page resumes by ``Last-Event-ID``
  (the broker keeps a history and numbers every event).
* ``POST /publish``: form or JSON fields ``data`` (required), ``event`` and
  ``id`` (optional); broadcasts the event and answers
  ``{"delivered": <sessions reached>}``.
* ``POST /chat``: fields ``text`` (required) and ``name``; broadcasts a
  ``chat`` event whose data is JSON ``{"name", "text", "time"}``.
* ``POST /jobs``: optional field ``steps`` (1-100); starts a background job
  that publishes ``job`` events (JSON ``{"job", "done", "total", "state"}``)
  on topic ``jobs`` and answers 202 ``{"job": ID, ...}``.  ``GET /jobs``
  lists the jobs.
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
import re
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from .broker import Broker
from .errors import BrokerClosedError
from .event import Event, JSONEvent

__all__ = ["CHAT_EVENT", "CLOCK_EVENT", "JOBS_TOPIC", "JOB_EVENT", "MAX_BODY_BYTES",
           "MAX_RUNNING_JOBS", "DemoApp", "app", "create_app"]

log = logging.getLogger("gosse.demo")

#: The event type of the clock ticks.
CLOCK_EVENT = "clock"
#: The event type of chat messages (``POST /chat``).
CHAT_EVENT = "chat"
#: The event type of job progress (``POST /jobs``).
JOB_EVENT = "job"
#: The topic job progress is published on: ``GET /sse?topic=jobs``.
JOBS_TOPIC = "jobs"
#: Largest accepted ``POST`` body.
MAX_BODY_BYTES = 64 * 1024
#: Jobs that may run at once; ``POST /jobs`` answers 429 beyond.
MAX_RUNNING_JOBS = 4
#: Finished jobs that ``GET /jobs`` still lists.
_KEEP_FINISHED_JOBS = 20
_MAX_CHAT_TEXT = 500
_MAX_CHAT_NAME = 40
_MAX_TOPICS = 8
_TOPIC = re.compile(r"[A-Za-z0-9_.-]{1,64}")

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
                 history: int = 1000, job_interval: float = 0.2):
        if broker is None:
            # auto_id + history: a page that reconnects (server restart
            # aside) resumes exactly where it left off.
            broker = Broker(history=history, auto_id=True, retry=2000)
        self.broker = broker
        self.clock_interval = clock_interval
        #: Seconds between two steps of a job.
        self.job_interval = job_interval
        self._static = _load_static()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clock: Optional[threading.Thread] = None
        self._closed = False
        # The jobs by id (insertion order = start order), each a dict with
        # "job", "done", "total", "state": written by the job's own thread
        # and by POST /jobs, always under self._lock.
        self._jobs: Dict[str, Dict[str, Any]] = {}
        self._job_threads: List[threading.Thread] = []   # under self._lock
        self._next_job = 0

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
            jobs = list(self._job_threads)
        self._stop.set()
        for thread in ([clock] if clock is not None else []) + jobs:
            if thread is not threading.current_thread():
                thread.join(timeout)
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

    # -- jobs --------------------------------------------------------------------

    def start_job(self, steps: int = 20) -> Dict[str, Any]:
        """Start a background job of ``steps`` steps that publishes its
        progress on topic :data:`JOBS_TOPIC`; return its state.  Raises
        :class:`~gosse.errors.BrokerClosedError` once closed and
        :class:`LookupError` when :data:`MAX_RUNNING_JOBS` are running."""
        if type(steps) is not int or not 1 <= steps <= 100:
            raise ValueError(f"steps must be an int from 1 to 100, not {steps!r}")
        with self._lock:
            if self._closed:
                raise BrokerClosedError("the demo is shutting down")
            running = sum(1 for j in self._jobs.values() if j["state"] == "running")
            if running >= MAX_RUNNING_JOBS:
                raise LookupError(f"{running} jobs are running (at most "
                                  f"{MAX_RUNNING_JOBS}): start one when another is done")
            self._next_job += 1
            job_id = str(self._next_job)
            job: Dict[str, Any] = {"job": job_id, "done": 0, "total": steps,
                                   "state": "running"}
            self._jobs[job_id] = job
            finished = [k for k, j in self._jobs.items() if j["state"] != "running"]
            for key in finished[:-_KEEP_FINISHED_JOBS]:
                del self._jobs[key]
            thread = threading.Thread(target=self._run_job, args=(job,),
                                      name=f"gosse-demo-job-{job_id}", daemon=True)
            # Started under the lock, so close() never joins an unstarted thread.
            thread.start()
            self._job_threads = [t for t in self._job_threads if t.is_alive()] + [thread]
            first = dict(job)
        return first

    def jobs(self) -> List[Dict[str, Any]]:
        """The state of the recent jobs, oldest first."""
        with self._lock:
            return [dict(j) for j in self._jobs.values()]

    def _run_job(self, job: Dict[str, Any]) -> None:
        total = job["total"]
        with self._lock:
            state = dict(job)
        for done in range(total + 1):
            if done:
                if self._stop.wait(self.job_interval):  # the "work" of one step
                    with self._lock:
                        job["state"] = "stopped"
                    return
                with self._lock:
                    job["done"] = done
                    if done == total:
                        job["state"] = "done"
                    state = dict(job)
            try:
                self.broker.publish(JOBS_TOPIC, JSONEvent(state, event=JOB_EVENT))
            except BrokerClosedError:
                return
            except Exception:  # never let a job die silently
                log.exception("job %s: publishing its progress failed", job["job"])

    # -- WSGI ------------------------------------------------------------------

    def __call__(self, environ: Dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.start()
        if environ.get("PATH_INFO") == "/sse":
            return self._sse(environ, start_response)
        request = _Request(environ)
        try:
            response = self._route(request)
        except HTTPException as exc:  # e.g. 413 from a too large body
            response = _error(exc.code or 400, exc.description or exc.name)
        return response(environ, start_response)

    def _sse(self, environ: Dict[str, Any],
             start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        if request.method == "HEAD":  # headers only: no session
            return Response(b"", content_type="text/event-stream; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})(environ, start_response)
        if request.method != "GET":
            return _error(405, "use GET for the event stream",
                          {"Allow": "GET, HEAD"})(environ, start_response)
        client = request.args.get("client", "")[:100] or (
            f"{environ.get('REMOTE_ADDR', '?')}:{environ.get('REMOTE_PORT', '?')}")
        topics = request.args.getlist("topic")
        bad = [t for t in topics if not _TOPIC.fullmatch(t)]
        if bad or len(topics) > _MAX_TOPICS:
            return _error(400, f"topic: up to {_MAX_TOPICS} names of 1-64 letters, digits, "
                               "'_', '.' or '-' (e.g. ?topic=jobs)")(environ, start_response)
        try:
            conn = self.broker.connect(client, environ, topics=topics)
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
        if path == "/chat":
            if request.method != "POST":
                return _error(405, "POST form or JSON fields: text (required), name",
                              {"Allow": "POST"})
            return self._chat(request)
        if path == "/jobs" and request.method == "POST":
            return self._start_job(request)
        if path in ("/", "/index.html"):
            name = "index.html"
        elif path in ("/live", "/live.html"):
            name = "live.html"
        elif path.startswith("/static/"):
            name = path[len("/static/"):]
        elif path in ("/stats", "/jobs"):
            name = None
        else:
            return _error(404, f"no such page: {path}")
        if request.method not in ("GET", "HEAD"):
            allow = "GET, HEAD, POST" if path == "/jobs" else "GET, HEAD"
            return _error(405, f"{request.method} is not allowed here", {"Allow": allow})
        if path == "/jobs":
            return _json({"jobs": self.jobs()})
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
        fields = _fields(request)
        if fields is None:
            return _error(400, "the body must be a JSON object with a \"data\" field")
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
        return self._broadcast(lambda: Event(data, event=event, id=event_id))

    def _chat(self, request: Request) -> Response:
        fields = _fields(request)
        if fields is None:
            return _error(400, "the body must be a JSON object with a \"text\" field")
        text, name = fields.get("text"), fields.get("name") or "anonymous"
        if not isinstance(text, str) or not text.strip():
            return _error(400, "missing field \"text\" (form field or JSON key): "
                               "the chat message")
        if not isinstance(name, str):
            return _error(400, "field \"name\" must be a string")
        text, name = text.strip(), name.strip() or "anonymous"
        if len(text) > _MAX_CHAT_TEXT or len(name) > _MAX_CHAT_NAME:
            return _error(400, f"a chat message has at most {_MAX_CHAT_TEXT} characters "
                               f"and a name at most {_MAX_CHAT_NAME}")
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        return self._broadcast(lambda: JSONEvent(
            {"name": name, "text": text, "time": now}, event=CHAT_EVENT))

    def _broadcast(self, make: Callable[[], Event]) -> Response:
        """Broadcast the event ``make()`` builds; answer how many streams it
        reached, 400 for a value that cannot be an event, 503 once closing."""
        try:
            delivered = self.broker.broadcast(make())
        except BrokerClosedError:
            return _error(503, "the demo is shutting down")
        except ValueError as exc:  # e.g. a lone surrogate from JSON
            return _error(400, str(exc))
        return _json({"delivered": delivered})

    def _start_job(self, request: Request) -> Response:
        fields = _fields(request)
        if fields is None:
            return _error(400, "the body must be a JSON object (field: steps)")
        raw = fields.get("steps")
        steps = 20 if raw in (None, "") else _whole_number(raw)
        if steps is None or not 1 <= steps <= 100:
            return _error(400, "field \"steps\" must be a whole number from 1 to 100")
        try:
            job = self.start_job(steps)
        except BrokerClosedError:
            return _error(503, "the demo is shutting down")
        except LookupError as exc:
            return _error(429, str(exc), {"Retry-After": "1"})
        return _json({**job, "topic": JOBS_TOPIC}, status=202)


def _whole_number(value: Any) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _fields(request: Request) -> Optional[Any]:
    """The form fields of a request, or its JSON object (None if the JSON
    body is not an object)."""
    if not request.is_json:
        return request.form
    fields = request.get_json(silent=True)
    return fields if isinstance(fields, dict) else None


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value) + "\n", status=status, mimetype="application/json",
                    headers={"Cache-Control": "no-cache"})


def _error(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> Response:
    return Response(message + "\n", status=status, mimetype="text/plain", headers=headers)


def create_app(broker: Optional[Broker] = None, *, clock_interval: float = 1.0,
               history: int = 1000, job_interval: float = 0.2) -> DemoApp:
    """A new demo app (see :class:`DemoApp`); pass your own ``broker`` to
    change its settings.  ``job_interval``: seconds per step of a job."""
    return DemoApp(broker, clock_interval=clock_interval, history=history,
                   job_interval=job_interval)


#: The app for WSGI servers: ``gunicorn -k gthread --threads 100 -w 1
#: -c python:gosse.demo gosse.demo:app``.
app = create_app()


# -- gunicorn server hooks (loaded by ``-c python:gosse.demo``) ---------------
# gunicorn reads only the module names that are its settings: these four, from
# gosse.contrib.gunicorn.  On SIGTERM they close the demo's broker at once
# (its clock thread stops at its next tick), so the worker stops in about a
# second instead of after --graceful-timeout.
from .contrib.gunicorn import post_worker_init, worker_abort, worker_exit, worker_int  # noqa: E402,F401
