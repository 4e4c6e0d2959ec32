"""The server side: a :class:`Broker` of SSE sessions for WSGI apps.

::

    broker = Broker()

    @app.route("/sse")
    def sse():
        return broker.connect(current_user_id, request.environ)

    broker.broadcast(Event("hello"))          # every session
    broker.send(user_id, Event("just you"))   # every session of one client
    broker.publish("news", Event("topic"))    # sessions that joined "news"

Each open stream occupies one server thread (gunicorn ``-k gthread``,
Werkzeug's threaded server), blocked on its own queue; the broker itself
starts no thread.  With a shared backplane
(``Broker(backplane=RedisBackplane(url))``, see :mod:`gosse.backplane`)
events, presence, metadata and replay span every process attached to it;
the backplane runs a listener and a heartbeat thread per process.
"""
from __future__ import annotations

import logging
import random
import threading
import time
import uuid
import weakref
from collections import deque
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple,
                    Union)
from urllib.parse import parse_qs

from .backplane import Backplane, InProcessBackplane
from .errors import BrokerClosedError, SSEError, UnknownClientError
from .event import Event, encode_comment
from .stream import (ENDED_BY_APP, ENDED_BY_BROKER, ENDED_SLOW, SessionStream,
                     direct_write_possible, frame_chunk)

__all__ = ["Broker", "ClientConnection", "Refusal", "RESET_EVENT", "live_brokers"]

log = logging.getLogger("gosse.broker")

# Every Broker of this process that is not closed yet, so that a server hook
# (gosse.contrib.gunicorn) can end all streams when the process is told to
# stop.  Weak: registering keeps no broker alive.
_live: "weakref.WeakSet[Broker]" = weakref.WeakSet()


def live_brokers() -> List["Broker"]:
    """The brokers of this process that are not closed (in creation order
    is not guaranteed).  A process forked from one that had brokers (a
    gunicorn worker of an app loaded with ``--preload``) has their copies."""
    return [b for b in list(_live) if not b._closed]

#: The event type a stream starts with when the ``Last-Event-ID`` it was asked
#: to resume from is not in the broker's history (unknown, or too old): events
#: may have been missed and the client should reload its state.  Its data is
#: the ``Last-Event-ID`` the client sent.
RESET_EVENT = "gosse-reset"

#: A ``Last-Event-ID`` longer than this (UTF-8 bytes) is not echoed back in
#: the reset event's data: a stream is not an amplifier.
RESET_ECHO_MAX = 256


def reset_event(last_id: str) -> Event:
    """The :data:`RESET_EVENT` a stream starts with when ``last_id`` cannot
    be resumed from (its data is the id, if at most 256 bytes)."""
    echo = last_id if len(last_id.encode("utf-8", "replace")) <= RESET_ECHO_MAX else ""
    return Event(echo, event=RESET_EVENT)

_STREAM_HEADERS = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache, no-transform"),
    ("X-Accel-Buffering", "no"),
]
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
               "te", "trailer", "trailers", "transfer-encoding", "upgrade"}

# A delivery target: (kind, name) with kind "all", "client" or "topic".
Target = Tuple[str, Optional[str]]
ConnectHook = Callable[[dict], Optional[Tuple[Union[int, str], str]]]


class Refusal:
    """A WSGI app answering with an error instead of a stream: what
    :meth:`Broker.connect` returns when ``on_connect`` refuses the request or
    a session cap is reached.  ``status`` is e.g. ``"503 Service Unavailable"``."""

    refused = True

    def __init__(self, status: str, message: str, headers: Iterable[Tuple[str, str]] = ()):
        self.status = status
        self.message = message
        self.headers = list(headers)

    def __call__(self, environ: dict, start_response: Callable) -> List[bytes]:
        body = (self.message.rstrip("\n") + "\n").encode("utf-8")
        start_response(self.status, [("Content-Type", "text/plain; charset=utf-8"),
                                     ("Content-Length", str(len(body)))] + self.headers)
        return [body]

    def __repr__(self) -> str:
        return f"Refusal({self.status!r}, {self.message!r})"


class ClientConnection:
    """One SSE session of a client: a WSGI application whose response body
    streams the session's events.

    Return it from a view (Flask, Werkzeug) or call it as
    ``conn(environ, start_response)``.  ``id`` is the client id given to
    :meth:`Broker.connect`, ``session_id`` a fresh uuid4 string, ``done`` a
    :class:`threading.Event` set when the session has ended.
    """

    refused = False

    def __init__(self, broker: "Broker", client_id: str, session_id: str,
                 stream: SessionStream, topics: frozenset, headers: List[Tuple[str, str]]):
        self._broker = broker
        self.id = client_id
        self.session_id = session_id
        self.stream = stream
        self.topics = topics
        self.done = threading.Event()
        self._headers = headers
        self._called = False

    def __call__(self, environ: dict, start_response: Callable) -> SessionStream:
        if self._called:
            raise SSEError("a ClientConnection serves one response; call Broker.connect again")
        self._called = True
        start_response("200 OK", self._headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            # Headers only: a server drops a HEAD response's body, so a stream
            # would hold its thread without ever finding the client gone.
            self.close()
            return []
        return self.stream

    def send(self, event: Event) -> bool:
        """Send an event to this session only.  Returns False if the session
        has ended (or was just ended because it does not keep up)."""
        return self._broker._send_session(self, event)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the session ends (or ``timeout`` seconds pass); return
        whether it ended."""
        return self.done.wait(timeout)

    def close(self) -> None:
        """End this session's response promptly: the stream writes what is
        already queued, then finishes; the disconnect callback runs once."""
        self.stream.end(ENDED_BY_APP)
        if not self.stream.started:
            # Never handed to a server (or not iterated yet): nobody else will
            # call close() on the body.
            self.stream.close()

    @property
    def end_reason(self) -> Optional[str]:
        """Why the session ended ("disconnected", "closed", "broker closed",
        "slow reader", "max age"), or None while it is open."""
        return self.stream.end_reason if self.stream.closed else None

    def __repr__(self) -> str:
        state = "open" if not self.done.is_set() else f"ended: {self.end_reason}"
        return f"<ClientConnection {self.id!r} {self.session_id} {state}>"


class Broker:
    """Holds the open SSE sessions and delivers events to them.

    * ``headers``: extra response headers for every stream (e.g. CORS).
    * ``heartbeat_interval``: seconds of silence after which a stream writes
      a comment, so proxies keep it open and dead peers are found.
    * ``queue_size``: events a session may have waiting; a session whose
      reader falls further behind is disconnected (and resumes by
      ``Last-Event-ID``) so that no broadcast ever blocks on it.
    * ``history``: how many events with ids to keep for replay to a client
      reconnecting with ``Last-Event-ID``; ``auto_id=True`` numbers every
      event that has no id, so everything is resumable.
    * ``retry``: reconnection time (ms) sent to clients as the first bytes.
    * ``on_connect(environ)``: return None to accept a stream, or
      ``(status, message)`` to refuse it before any header is sent.
    * ``max_sessions`` / ``max_sessions_per_client``: caps answered with
      ``503`` and ``Retry-After: retry_after``.
    * ``max_connection_age``: seconds (with up to 10 % jitter below) after
      which a stream ends cleanly so the client reconnects, freeing threads
      and rebalancing load.
    * ``backplane``: what carries events, presence, metadata and replay
      history beyond this broker; None is the in-process default
      (:class:`gosse.backplane.InProcessBackplane`).  With
      :class:`gosse.backplane.redis.RedisBackplane` every process on the
      same Redis delivers ``broadcast``/``send``/``publish`` to its own
      sessions in one global order, the replay history is the backplane's
      (``Broker(history=...)`` is not used) and ``auto_id`` ids are the
      stream's.  Delivery is then asynchronous: those methods return the
      number of sessions *of this process* the event is addressed to, and
      raise :class:`gosse.backplane.BackplaneError` when the backplane is
      unreachable.  ``close()`` closes the backplane too.
    * ``direct_write``: under gunicorn's gthread (or sync) worker on plain
      HTTP/1.1, deliver each event by writing it to the stream's socket from
      the thread that broadcasts it, without waking the stream's thread
      (which only finishes writes the socket could not take at once).  This
      is what makes a broadcast to thousands of threaded streams cheap; it
      bypasses WSGI middleware that rewrites response bodies, so set it to
      False if such middleware wraps your streams (compressing middleware
      already breaks event streams by buffering them), and under gunicorn's
      ``--protocol uwsgi``.  Other servers always use the WSGI iterable.
    """

    def __init__(self, headers: Optional[Mapping[str, str]] = None, *,
                 heartbeat_interval: float = 15.0, queue_size: int = 1024,
                 history: int = 0, auto_id: bool = False, retry: Optional[int] = None,
                 on_connect: Optional[ConnectHook] = None,
                 max_sessions: Optional[int] = None,
                 max_sessions_per_client: Optional[int] = None,
                 max_connection_age: Optional[float] = None,
                 retry_after: int = 5,
                 backplane: Any = None,
                 direct_write: bool = True):
        _positive("heartbeat_interval", heartbeat_interval)
        if type(queue_size) is not int or queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, not {queue_size!r}")
        if type(history) is not int or history < 0:
            raise ValueError(f"history must be a non-negative int, not {history!r}")
        if max_connection_age is not None:
            _positive("max_connection_age", max_connection_age)
        self.headers = _stream_headers(headers)
        self.heartbeat_interval = float(heartbeat_interval)
        self.queue_size = queue_size
        self.auto_id = auto_id
        self.on_connect = on_connect
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client
        self.max_connection_age = max_connection_age
        self.retry_after = retry_after
        self.direct_write = direct_write
        self._first_bytes = (Event(None, retry=retry).encode() if retry is not None
                             else b":ok\n\n")
        self._lock = threading.Lock()
        self._sessions: Dict[SessionStream, ClientConnection] = {}
        self._clients: Dict[str, Dict[str, ClientConnection]] = {}
        self._topics: Dict[str, Dict[SessionStream, None]] = {}
        self._metadata: Dict[str, Any] = {}
        self._history: Optional[deque] = deque(maxlen=history) if history else None
        self._next_id = 0
        self._on_disconnect: Optional[Callable[[str, str], Any]] = None
        self._closed = False
        self._counts = {"events_delivered": 0, "sessions_dropped_slow": 0,
                        "sessions_total": 0}
        if backplane is None:
            backplane = InProcessBackplane()
        elif not isinstance(backplane, Backplane):
            raise TypeError("backplane must be a gosse.backplane.Backplane "
                            f"(e.g. RedisBackplane), not {type(backplane).__name__}")
        backplane.bind(self)
        self._backplane = backplane
        self._shared = bool(backplane.shared)
        if self._shared:
            self._history = None   # the backplane keeps the history
        _live.add(self)

    @property
    def backplane(self) -> Backplane:
        """The backplane this broker publishes through."""
        return self._backplane

    # -- sessions ----------------------------------------------------------

    def connect(self, client_id: str, environ: dict, *,
                heartbeat_interval: Optional[float] = None,
                topics: Iterable[str] = ()) -> Union[ClientConnection, Refusal]:
        """Open a new session of ``client_id`` for this request.

        Returns a :class:`ClientConnection` (a WSGI app streaming the
        session), or a :class:`Refusal` (a WSGI app answering 4xx/5xx) when
        ``on_connect`` refuses or a session cap is reached.  Resumes from the
        request's ``Last-Event-ID`` header (or ``lastEventId`` query
        parameter) when the broker keeps history.  Raises
        :class:`BrokerClosedError` after :meth:`close`.
        """
        if not isinstance(client_id, str):
            raise TypeError(f"client_id must be a str, not {type(client_id).__name__}")
        if not isinstance(environ, dict):
            raise TypeError("environ must be the WSGI environ dict (Flask: request.environ)")
        if isinstance(topics, str):
            raise TypeError("topics must be a list of names, not a str")
        topics = frozenset(topics)
        heartbeat = self.heartbeat_interval if heartbeat_interval is None else heartbeat_interval
        _positive("heartbeat_interval", heartbeat)
        if self._closed:
            raise BrokerClosedError("the broker is closed; it accepts no new streams")
        if self.on_connect is not None:
            refusal = self.on_connect(environ)
            if refusal is not None:
                status, message = refusal
                return Refusal(_status_line(status), message)
        deadline = None
        if self.max_connection_age is not None:
            deadline = time.monotonic() + self.max_connection_age * random.uniform(0.9, 1.0)
        sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        direct = self.direct_write and direct_write_possible(environ, self.headers)
        stream = SessionStream(self._first_bytes, heartbeat, self.queue_size,
                               self._stream_closed, sock=sock, deadline=deadline,
                               direct=direct)
        session_id = str(uuid.uuid4())
        conn = ClientConnection(self, client_id, session_id, stream, topics, self.headers)
        last_id = _last_event_id(environ)
        shared = self._shared
        resume = None
        if shared:
            # May talk to Redis: outside the lock.
            resume = self._backplane.prepare_replay(last_id)
        with self._lock:
            if self._closed:
                raise BrokerClosedError("the broker is closed; it accepts no new streams")
            refusal = self._over_limit(client_id)
            if refusal is not None:
                return refusal
            self._sessions[stream] = conn
            sessions = self._clients.get(client_id)
            first = sessions is None
            if first:
                sessions = self._clients[client_id] = {}
            sessions[session_id] = conn
            for topic in topics:
                self._topics.setdefault(topic, {})[stream] = None
            self._counts["sessions_total"] += 1
            if shared:
                if resume is not None:
                    self._backplane.complete_replay(conn, resume)
            elif last_id is not None and self._history is not None:
                self._replay(conn, last_id)
        if shared and first:
            self._backplane.client_joined(client_id)
        return conn

    def _over_limit(self, client_id: str) -> Optional[Refusal]:
        headers = [("Retry-After", str(self.retry_after))]
        if self.max_sessions is not None and len(self._sessions) >= self.max_sessions:
            return Refusal("503 Service Unavailable",
                           f"too many open streams (max_sessions={self.max_sessions})", headers)
        if (self.max_sessions_per_client is not None
                and len(self._clients.get(client_id, ())) >= self.max_sessions_per_client):
            return Refusal("503 Service Unavailable",
                           "too many open streams for this client "
                           f"(max_sessions_per_client={self.max_sessions_per_client})", headers)
        return None

    def _replay(self, conn: ClientConnection, last_id: str) -> None:
        # Under self._lock: history and live delivery cannot interleave.
        history = self._history
        start = None
        for i in range(len(history) - 1, -1, -1):
            if history[i][0] == last_id:
                start = i + 1
                break
        if start is None:
            missed = [reset_event(last_id).encode()]
        else:
            missed = [wire for _, target, wire in list(history)[start:]
                      if self._entitled(conn, target)]
        conn.stream.preload(missed)

    @staticmethod
    def _entitled(conn: ClientConnection, target: Target) -> bool:
        kind, name = target
        return (kind == "all" or (kind == "client" and name == conn.id)
                or (kind == "topic" and name in conn.topics))

    def _stream_closed(self, stream: SessionStream) -> None:
        # SessionStream.close() calls this exactly once per session.
        last = False
        with self._lock:
            conn = self._sessions.pop(stream, None)
            if conn is None:
                return
            sessions = self._clients.get(conn.id)
            if sessions is not None:
                sessions.pop(conn.session_id, None)
                if not sessions:
                    del self._clients[conn.id]
                    self._metadata.pop(conn.id, None)
                    last = True
            for topic in conn.topics:
                members = self._topics.get(topic)
                if members is not None:
                    members.pop(stream, None)
                    if not members:
                        del self._topics[topic]
            if stream.end_reason == ENDED_SLOW:
                self._counts["sessions_dropped_slow"] += 1
            callback = self._on_disconnect
        if last and self._shared:
            try:
                self._backplane.client_left(conn.id)
            except Exception:
                log.exception("backplane failed to record that client %r left", conn.id)
        conn.done.set()
        if callback is not None:
            try:
                callback(conn.id, conn.session_id)
            except Exception:
                log.exception("disconnect callback failed for client %r session %s",
                              conn.id, conn.session_id)

    # -- delivery ----------------------------------------------------------

    def broadcast(self, event: Event) -> int:
        """Send ``event`` to every open session.  Returns the number of
        sessions it was queued for.  Never blocks on a slow reader."""
        if self._shared:
            return self._backplane.publish(("all", None), event)
        return self._deliver(("all", None), event)

    def send(self, client_id: str, event: Event) -> int:
        """Send ``event`` to every session of ``client_id``; raise
        :class:`UnknownClientError` if it has none."""
        if self._shared:
            return self._backplane.publish(("client", client_id), event)
        n = self._deliver(("client", client_id), event)
        if n == 0 and client_id not in self._clients:
            raise UnknownClientError(client_id)
        return n

    def publish(self, topic: str, event: Event) -> int:
        """Send ``event`` to every session that joined ``topic``.  Returns
        the number of sessions reached (0 if nobody listens)."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        if self._shared:
            return self._backplane.publish(("topic", topic), event)
        return self._deliver(("topic", topic), event)

    def _deliver(self, target: Target, event: Event) -> int:
        if not isinstance(event, Event):
            raise TypeError(f"expected a gosse.Event, not {type(event).__name__}")
        if self._closed:
            raise BrokerClosedError("the broker is closed")
        kind, name = target
        with self._lock:
            if self.auto_id and event.id is None:
                self._next_id += 1
                event = event.replace(id=str(self._next_id))
            wire = event.encode()
            if self._history is not None and event.id is not None:
                self._history.append((event.id, target, wire))
            if kind == "all":
                streams = self._sessions
            elif kind == "client":
                sessions = self._clients.get(name)
                streams = [c.stream for c in sessions.values()] if sessions else ()
            else:
                streams = self._topics.get(name, ())
            framed = frame_chunk(wire)   # once, for streams that write directly
            n = 0
            for stream in streams:
                if stream.put(wire, framed):
                    n += 1
            self._counts["events_delivered"] += n
        return n

    def _put_batch(self, batch: List[Tuple[Any, str, Optional[str], bytes]],
                   floors: Optional[Dict[SessionStream, Any]]) -> int:
        """Under ``self._lock``: queue already-encoded events, in order, for
        the local sessions each one targets (a shared backplane's listener
        delivers a batch of entries per lock).  ``batch`` holds
        ``(position, kind, name, wire)``; ``floors`` maps a stream resuming
        ahead of this process to the position up to which it must skip."""
        sessions = self._sessions
        clients = self._clients
        topics = self._topics
        n = 0
        for seq, kind, name, wire in batch:
            if kind == "all":
                streams = sessions
            elif kind == "client":
                found = clients.get(name)
                streams = [c.stream for c in found.values()] if found else ()
            else:
                streams = topics.get(name, ())
            framed = frame_chunk(wire)
            if floors:
                for stream in streams:
                    floor = floors.get(stream)
                    if floor is not None and seq <= floor:
                        continue
                    if stream.put(wire, framed):
                        n += 1
            else:
                for stream in streams:
                    if stream.put(wire, framed):
                        n += 1
        if floors and batch:
            last = batch[-1][0]
            for stream in [s for s, f in floors.items() if f <= last or s not in sessions]:
                del floors[stream]
        self._counts["events_delivered"] += n
        return n

    def _send_session(self, conn: ClientConnection, event: Event) -> bool:
        if not isinstance(event, Event):
            raise TypeError(f"expected a gosse.Event, not {type(event).__name__}")
        wire = event.encode()
        with self._lock:
            ok = conn.stream.put(wire)
            self._counts["events_delivered"] += ok
        return ok

    # -- clients -----------------------------------------------------------

    def is_client_present(self, client_id: str) -> bool:
        """Whether ``client_id`` has at least one open session (in any
        process, with a shared backplane)."""
        if client_id in self._clients:
            return True
        return self._shared and self._backplane.is_client_present(client_id)

    def sessions(self, client_id: str) -> List[ClientConnection]:
        """The open sessions of ``client_id`` (empty if none)."""
        with self._lock:
            return list(self._clients.get(client_id, {}).values())

    def set_client_metadata(self, client_id: str, metadata: Any) -> None:
        """Attach any value to a connected client; it is dropped with the
        client's last session.  :class:`UnknownClientError` if not connected.
        With a shared backplane the value is serialised (JSON by default)
        and seen by every process; it is dropped with the client's last
        session anywhere."""
        if self._shared:
            return self._backplane.set_client_metadata(client_id, metadata)
        with self._lock:
            if client_id not in self._clients:
                raise UnknownClientError(client_id)
            self._metadata[client_id] = metadata

    def get_client_metadata(self, client_id: str) -> Any:
        """The value set by :meth:`set_client_metadata` (None if none);
        :class:`UnknownClientError` if the client is not connected."""
        if self._shared:
            return self._backplane.get_client_metadata(client_id)
        with self._lock:
            if client_id not in self._clients:
                raise UnknownClientError(client_id)
            return self._metadata.get(client_id)

    def set_disconnect_callback(self, callback: Optional[Callable[[str, str], Any]]) -> None:
        """Call ``callback(client_id, session_id)`` once when each session
        ends, outside the broker's lock; exceptions are logged."""
        self._on_disconnect = callback

    def on_disconnect(self, callback: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
        """Decorator form of :meth:`set_disconnect_callback`."""
        self.set_disconnect_callback(callback)
        return callback

    def stats(self) -> Dict[str, int]:
        """Counters: open ``clients`` and ``sessions``, ``sessions_direct``
        (sessions writing events straight to their socket, see
        ``direct_write``), ``queued`` events, ``events_delivered`` (per
        session), ``sessions_dropped_slow``, ``sessions_total`` (ever opened)."""
        with self._lock:
            streams = list(self._sessions)
            stats = {"clients": len(self._clients), "sessions": len(streams),
                     "sessions_direct": sum(s.direct for s in streams),
                     "queued": sum(s.queued() for s in streams), **self._counts}
        if self._shared:
            stats.update(self._backplane.stats())
        return stats

    # -- shutdown ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self, timeout: float = 1.0) -> None:
        """End every open stream and refuse new ones.

        Streams finish cleanly (what is queued is written first); a stream
        whose server thread is still stuck after ``timeout`` seconds (a reader
        that stopped reading) has its socket shut down.  Returns within about
        ``timeout`` seconds.
        """
        with self._lock:
            self._closed = True
            conns = list(self._sessions.values())
        _live.discard(self)
        for conn in conns:
            conn.stream.end(ENDED_BY_BROKER)
            if not conn.stream.started:
                conn.stream.close()
        deadline = time.monotonic() + timeout
        for conn in conns:
            if not conn.done.wait(max(0.0, deadline - time.monotonic())):
                conn.stream.shutdown_socket()
        self._backplane.close()

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def comment(self, text: str = "") -> int:
        """Write a comment to every open session (receivers ignore it)."""
        wire = encode_comment(text)
        with self._lock:
            return sum(1 for s in self._sessions if s.put(wire))


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


def _stream_headers(headers: Optional[Mapping[str, str]]) -> List[Tuple[str, str]]:
    result = list(_STREAM_HEADERS)
    if headers:
        fixed = {name.lower() for name, _ in result}
        for name, value in dict(headers).items():
            if name.lower() in _HOP_BY_HOP:
                raise ValueError(f"{name!r} is a hop-by-hop header, which a WSGI app "
                                 "must not set (PEP 3333)")
            if name.lower() in fixed:
                result = [(n, v) for n, v in result if n.lower() != name.lower()]
            result.append((name, value))
    return result


def _status_line(status: Union[int, str]) -> str:
    if isinstance(status, int):
        from http import HTTPStatus
        try:
            return f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            return f"{status} Refused"
    return status


def _last_event_id(environ: dict) -> Optional[str]:
    """The Last-Event-ID of the request (header, else ``lastEventId`` query
    parameter), or None.  WSGI gives header values as latin-1 decoded
    strings; the id was sent as UTF-8."""
    value = environ.get("HTTP_LAST_EVENT_ID")
    if value is None:
        query = environ.get("QUERY_STRING", "")
        if "lastEventId" in query:
            values = parse_qs(query).get("lastEventId")
            value = values[0] if values else None
        if value is None:
            return None
    else:
        try:
            value = value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return value
