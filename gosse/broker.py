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
Werkzeug's threaded server), blocked on its own queue, or parked while the
broker's writer thread owns its socket (:mod:`gosse.writer`, gunicorn only).
A janitor thread runs while the broker has sessions: it expires sessions no
server serves and ends streams that stopped being served.  With a shared backplane
(``Broker(backplane=RedisBackplane(url))``, see :mod:`gosse.backplane`)
events, presence, metadata and replay span every process attached to it;
the backplane runs a listener and a heartbeat thread per process.
"""
from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
import uuid
import weakref
from collections.abc import Mapping as _MappingABC
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union, cast
from urllib.parse import parse_qs

from .backplane import Backplane, InProcessBackplane
from .body import SessionStream
from .errors import BrokerClosedError, ConnectHookError, SSEError, UnknownClientError
from .event import RESET_EVENT, Event, encode_comment, reset_event
from .registry import History, Registry
from .session import (
    ENDED_BY_APP,
    ENDED_BY_BROKER,
    ENDED_BY_CLIENT,
    ENDED_NOT_SERVED,
    ENDED_SLOW,
    Mailbox,
    Session,
)
from .writer import SocketWriter, frame_chunk

__all__ = ["Broker", "ClientConnection", "Refusal", "RESET_EVENT", "live_brokers"]

log = logging.getLogger("gosse.broker")

# Every Broker of this process that is not closed yet, so that a server hook
# (gosse.contrib.gunicorn) can end all streams when the process is told to
# stop.  Weak: registering keeps no broker alive.
_live: weakref.WeakSet[Broker] = weakref.WeakSet()


def live_brokers() -> List[Broker]:
    """The brokers of this process that are not closed (in creation order
    is not guaranteed).  A process forked from one that had brokers (a
    gunicorn worker of an app loaded with ``--preload``) has their copies."""
    return [b for b in list(_live) if not b._closed]


# A fork copies the locks as they are: one held by another thread (a
# backplane's listener delivering, a request publishing) would stay held in
# the child, where that thread does not exist, and the child's first
# publish or connect would hang.  So the forking thread takes every
# broker's locks, in their order, before the fork, and releases them on
# both sides: the child gets them free, with the state they guard whole.
# (These are Locks, not RLocks: the child's only thread may release them.)
_forking: List[Tuple[threading.Lock, threading.Lock]] = []   # the forking thread's only


def _before_fork() -> None:
    for broker in list(_live):
        broker._deliver_lock.acquire()
        broker._lock.acquire()
        _forking.append((broker._deliver_lock, broker._lock))


def _after_fork() -> None:
    while _forking:
        deliver_lock, lock = _forking.pop()
        lock.release()
        deliver_lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                        after_in_child=_after_fork)

_STREAM_HEADERS = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache, no-transform"),
    ("X-Accel-Buffering", "no"),
]
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
               "te", "trailer", "trailers", "transfer-encoding", "upgrade"}

#: Seconds a clean end (``ClientConnection.close``, ``Broker.close``) may
#: take to write what is queued before the connection is cut.
CLOSE_TIMEOUT = 1.0
#: Seconds a session may wait for a server to begin sending its response
#: (a response nobody holds any more is released at once; see the janitor
#: for how a busy process stretches this).
PENDING_TIMEOUT = 5.0
#: A served stream whose server has spent this long writing one piece of it
#: (outside next()) is taken for stuck on a reader that stopped reading.
STALL_GRACE = 60.0
#: The most a busy process stretches those limits by (seconds).
MAX_ALLOWANCE = 120.0
JANITOR_INTERVAL = 0.5
#: Headers as ``{name: value}`` or ``[(name, value), ...]``.
HeaderItems = Union[Mapping[str, str], Iterable[Tuple[str, str]]]
ConnectHook = Callable[[Dict[str, Any]], Optional[Tuple[Any, ...]]]


class Refusal:
    """A WSGI app answering with an error instead of a stream: what
    :meth:`Broker.connect` returns when ``on_connect`` refuses the request or
    a session cap is reached.  ``status`` is e.g. ``"503 Service Unavailable"``.

    ``status`` is an int 400-599 or a str ``"NNN Reason"`` with NNN in
    400-599; ``headers`` (a mapping or a list of pairs, e.g.
    ``WWW-Authenticate`` or ``Retry-After``) are checked like
    ``Broker(headers=...)`` and must not set ``Content-Type`` or
    ``Content-Length``.  ValueError or TypeError otherwise."""

    refused = True

    def __init__(self, status: Union[int, str], message: str, headers: HeaderItems = ()):
        if not isinstance(message, str):
            raise TypeError(f"a refusal's message must be a str, not {type(message).__name__}")
        self.status = _status_line(status)
        self.message = message
        self.headers = _header_items(headers, refused=_REFUSAL_FIXED, mapping_only=False)

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
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
    __slots__ = ("_broker", "session", "_stream", "_stream_ref", "id", "session_id",
                 "topics", "_headers", "_called", "__weakref__")

    def __init__(self, broker: Broker, session: Session, stream: SessionStream,
                 headers: List[Tuple[str, str]]):
        self._broker = broker
        self.session = session
        # Who keeps whom alive: before the call the connection holds its
        # stream; after it the server holds the stream and the stream holds
        # the connection (the connection only a weak reference back).  No
        # cycle, so a response that nobody serves is freed at once and the
        # broker, which holds connections weakly, learns it (see Broker).
        self._stream: Optional[SessionStream] = stream
        self._stream_ref: Optional[weakref.ref[SessionStream]] = None
        self.id = session.client_id
        self.session_id = session.session_id
        self.topics = session.topics
        self._headers = headers
        self._called = False

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if self._called:
            raise SSEError("a ClientConnection serves one response; call Broker.connect again")
        self._called = True
        start_response("200 OK", self._headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            # Headers only: a server drops a HEAD response's body, so a stream
            # would hold its thread without ever finding the client gone.
            self.session.release(ENDED_BY_APP)
            return []
        stream = self._stream
        assert stream is not None
        stream.conn = self
        self._stream_ref = weakref.ref(stream)
        self._stream = None
        return stream

    @property
    def stream(self) -> Optional[SessionStream]:
        """The WSGI body of this session (None once the server dropped it)."""
        if self._stream is not None:
            return self._stream
        return self._stream_ref() if self._stream_ref is not None else None

    def send(self, event: Event) -> bool:
        """Send an event to this session only.  Returns False if the session
        has ended (or was just ended because it does not keep up).  With
        ``auto_id`` or an id it is kept in the replay history, and replayed to
        a session of the same client that resumes from before it."""
        return self._broker._send_session(self.session, event)

    @property
    def done(self) -> threading.Event:
        """A :class:`threading.Event` set when the session has ended."""
        return self.session.done

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the session ends (or ``timeout`` seconds pass); return
        whether it ended."""
        return self.done.wait(timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """End this session's response: the stream writes what is already
        queued, then finishes; the disconnect callback runs once.  Returns at
        once.  A stream that has not finished within ``timeout`` seconds (its
        reader stopped reading) has its connection cut, so the session always
        ends within about ``timeout`` seconds."""
        self._broker._end_session(self.session, ENDED_BY_APP, timeout)

    @property
    def end_reason(self) -> Optional[str]:
        """Why the session ended ("disconnected", "closed", "broker closed",
        "slow reader", "max age", "not served"), or None while it is open."""
        return self.session.end_reason if self.session.finished else None

    def __repr__(self) -> str:
        state = "open" if not self.session.finished else f"ended: {self.end_reason}"
        return f"<ClientConnection {self.id!r} {self.session_id} {state}>"


class Broker:
    """Holds the open SSE sessions and delivers events to them.

    * ``headers``: extra response headers for every stream (e.g. CORS).
    * ``heartbeat_interval``: seconds of silence after which a stream writes
      a comment, so proxies keep it open and dead peers are found.
    * ``queue_size`` / ``queue_bytes``: events and bytes a session may have
      waiting; a session whose reader falls further behind is disconnected
      (and resumes by ``Last-Event-ID``) so that no broadcast ever blocks on
      it.  A replay is bounded by ``queue_bytes`` too: a client that missed
      more gets the reset event instead.
    * ``history``: how many events with ids to keep for replay to a client
      reconnecting with ``Last-Event-ID``; ``auto_id=True`` gives every event
      sent without an id one (``broadcast``, ``send``, ``publish`` and
      ``ClientConnection.send``), unique across broker lifetimes, so
      everything is resumable.
    * ``retry``: reconnection time (ms) sent to clients as the first bytes.
    * ``on_connect(environ)``: return None to accept a stream, or
      ``(status, message)`` or ``(status, message, headers)`` to refuse it
      before any header is sent (status: an int 400-599 or ``"NNN Reason"``;
      headers: a mapping or list of pairs such as ``WWW-Authenticate`` or
      ``Retry-After``).  Anything else makes :meth:`connect` raise
      :class:`~gosse.errors.ConnectHookError` (a ValueError) at that request.
    * ``max_sessions`` / ``max_sessions_per_client``: None or an int >= 1;
      caps answered with ``503`` and ``Retry-After: retry_after`` (an int >= 0).
      Set them: by default one client may open as many streams as the
      server has threads.
    * ``headers`` must map str names (HTTP tokens) to str values without CR,
      LF, NUL or other control characters (ValueError naming the header);
      ``Content-Type`` and hop-by-hop headers are refused.
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
      raise :class:`~gosse.errors.BackplaneError` when the backplane is
      unreachable.  ``close()`` closes the backplane too.
    * ``direct_write``: under gunicorn's gthread or sync worker, HTTP/1.1
      and nothing between gunicorn and the stream that could rewrite the
      body, a stream hands its socket to the broker's writer thread, which
      sends each event to every such stream without waking their threads
      (see :mod:`gosse.writer` for the exact conditions).  Everywhere else
      (Werkzeug, waitress, uWSGI, gevent/eventlet, TLS, HTTP/1.0, the
      uwsgi protocol, body-rewriting middleware) streams use the WSGI
      iterable.  False always uses the iterable.
    """

    def __init__(self, headers: Optional[Mapping[str, str]] = None, *,
                 heartbeat_interval: float = 15.0, queue_size: int = 1024,
                 queue_bytes: int = 8 << 20,
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
        if type(queue_bytes) is not int or queue_bytes < 1:
            raise ValueError(f"queue_bytes must be a positive int, not {queue_bytes!r}")
        if type(history) is not int or history < 0:
            raise ValueError(f"history must be a non-negative int, not {history!r}")
        if max_connection_age is not None:
            _positive("max_connection_age", max_connection_age)
        _count("max_sessions", max_sessions, 1, optional=True)
        _count("max_sessions_per_client", max_sessions_per_client, 1, optional=True)
        _count("retry_after", retry_after, 0)
        _check_callable("on_connect", on_connect)
        self.headers = _stream_headers(headers)
        self.heartbeat_interval = float(heartbeat_interval)
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.auto_id = auto_id
        self.on_connect = on_connect
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client
        self.max_connection_age = max_connection_age
        self.retry_after = retry_after
        self.direct_write = direct_write
        self._first_bytes = (Event(None, retry=retry).encode() if retry is not None
                             else b":ok\n\n")
        # Two locks, always taken in this order: the delivery lock orders the
        # fan-out of events (it is held while events are put into mailboxes
        # or handed to the writer, never across a socket call); the registry
        # lock guards the registry, history, ids, metadata and counters, and
        # is held only for O(1) work (or a bounded replay scan).
        self._deliver_lock = threading.Lock()
        self._lock = threading.Lock()
        self._registry = Registry()
        # Weak: a connection that nobody serves or holds any more is freed,
        # and its session marked abandoned for the janitor (registry lock).
        self._conns: Dict[Session, weakref.ref[ClientConnection]] = {}
        self._metadata: Dict[str, Any] = {}
        self._history: Optional[History] = History(history) if history else None
        # Auto ids are "<epoch>-<n>": a new epoch per broker, so that an id of
        # a previous process never names a new event.
        self._epoch = _new_epoch()
        self._next_id = 0
        self._on_disconnect: Optional[Callable[[str, str], Any]] = None
        self._closed = False
        # "events_delivered" is written under the delivery lock, the other
        # counters under the registry lock.
        self._counts = {"events_delivered": 0, "sessions_dropped_slow": 0,
                        "sessions_total": 0, "sessions_not_served": 0}
        self._writer: Optional[SocketWriter] = None   # under the delivery lock
        self._janitor: Optional[threading.Thread] = None   # under the registry lock
        if backplane is None:
            backplane = InProcessBackplane()
        elif not isinstance(backplane, Backplane):
            raise TypeError("backplane must be a gosse.backplane.Backplane "
                            f"(e.g. RedisBackplane), not {type(backplane).__name__}")
        backplane.bind(self)
        self._backplane: Backplane = backplane
        self._shared = bool(backplane.shared)
        if self._shared:
            if self._history is not None:
                log.debug("Broker(history=%d) is ignored: the backplane %r keeps the "
                          "history", history, backplane)
            self._history = None   # the backplane keeps the history
        _live.add(self)

    @property
    def backplane(self) -> Backplane:
        """The backplane this broker publishes through."""
        return self._backplane

    # -- sessions ----------------------------------------------------------

    def connect(self, client_id: str, environ: Dict[str, Any], *,
                heartbeat_interval: Optional[float] = None,
                topics: Iterable[str] = ()) -> Union[ClientConnection, Refusal]:
        """Open a new session of ``client_id`` for this request.

        Returns a :class:`ClientConnection` (a WSGI app streaming the
        session), or a :class:`Refusal` (a WSGI app answering 4xx/5xx) when
        ``on_connect`` refuses or a session cap is reached.  Resumes from the
        request's ``Last-Event-ID`` header (or ``lastEventId`` query
        parameter) when the broker keeps history.  Raises
        :class:`BrokerClosedError` after :meth:`close`, and
        :class:`~gosse.errors.ConnectHookError` when ``on_connect`` returns
        something other than None or a valid refusal.

        The session is registered at once (``send``, presence and metadata
        work immediately), but a session whose response no server begins
        to send within a few seconds (the view returned something else, a
        later hook raised) expires with end reason ``"not served"``.
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
                return _hook_refusal(refusal)
        deadline = None
        if self.max_connection_age is not None:
            deadline = time.monotonic() + self.max_connection_age * random.uniform(0.9, 1.0)
        sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        session = Session(client_id, str(uuid.uuid4()), topics,
                          Mailbox(self.queue_size, self.queue_bytes), heartbeat, deadline,
                          sock, self._session_released)
        stream = SessionStream(session, self._first_bytes, environ,
                               self._hand_over if self.direct_write else None)
        conn = ClientConnection(self, session, stream, self.headers)
        last_id = _last_event_id(environ)
        shared = self._shared
        resume = None
        if shared:
            # May talk to Redis: outside the lock.
            resume = self._backplane.prepare_replay(last_id, client_id, session.topics)
        with self._lock:
            if self._closed:
                raise BrokerClosedError("the broker is closed; it accepts no new streams")
            over = self._over_limit(client_id)
            if over is not None:
                return over
            first = self._registry.add(session)
            self._counts["sessions_total"] += 1
            self._conns[session] = weakref.ref(conn, session.abandon)
            if shared:
                if resume is not None:
                    self._backplane.complete_replay(conn, resume)
            elif last_id is not None and self._history is not None:
                missed = self._history.after(last_id, client_id, topics, self.queue_bytes)
                session.preload([reset_event(last_id).encode()] if missed is None else missed)
            start_janitor = self._janitor is None
            if start_janitor:
                self._janitor = threading.Thread(target=self._janitor_loop,
                                                 name="gosse-janitor", daemon=True)
        if start_janitor:
            self._janitor.start()   # type: ignore[union-attr]
        if shared and first:
            self._backplane.client_joined(client_id)
        return conn

    def _over_limit(self, client_id: str) -> Optional[Refusal]:
        headers = [("Retry-After", str(self.retry_after))]
        registry = self._registry
        if self.max_sessions is not None and len(registry.sessions) >= self.max_sessions:
            return Refusal("503 Service Unavailable",
                           f"too many open streams (max_sessions={self.max_sessions})", headers)
        if (self.max_sessions_per_client is not None
                and len(registry.clients.get(client_id, ())) >= self.max_sessions_per_client):
            return Refusal("503 Service Unavailable",
                           "too many open streams for this client "
                           f"(max_sessions_per_client={self.max_sessions_per_client})", headers)
        return None

    def _session_released(self, session: Session) -> None:
        # Session.release() calls this exactly once per session.
        with self._lock:
            last = self._registry.remove(session)
            self._conns.pop(session, None)
            if last:
                self._metadata.pop(session.client_id, None)
            if session.end_reason == ENDED_SLOW:
                self._counts["sessions_dropped_slow"] += 1
            elif session.end_reason == ENDED_NOT_SERVED:
                self._counts["sessions_not_served"] += 1
            callback = self._on_disconnect
        if last is None:
            return
        if last and self._shared:
            try:
                self._backplane.client_left(session.client_id)
            except Exception:
                log.exception("backplane failed to record that client %r left",
                              session.client_id)
        session.mark_done()
        if callback is not None:
            try:
                callback(session.client_id, session.session_id)
            except Exception:
                log.exception("disconnect callback failed for client %r session %s",
                              session.client_id, session.session_id)

    def _end_session(self, session: Session, reason: str, timeout: float) -> None:
        """Ask ``session`` to finish, and make sure it does within about
        ``timeout`` seconds (the janitor cuts a stream that is stuck)."""
        session.end(reason)
        # Read under the delivery lock: a hand-over checks ``ending`` and sets
        # ``handed_over`` under it, so either it saw this end (and kept the
        # stream on the iterable) or the writer is told here.
        with self._deliver_lock:
            handed = session.handed_over
            writer = self._writer
        if handed:
            if writer is not None:
                writer.finish(session, timeout)
        elif not session.served:
            # No server sends it (yet): nothing else would end it.  What is
            # queued still goes out if a server iterates it later.
            session.release(reason)
        else:
            session.close_by = time.monotonic() + timeout

    def _hand_over(self, session: Session, sock: Any) -> Optional[Tuple[Any, SocketWriter]]:
        """The stream thread's request to give ``sock`` to the writer (see
        :mod:`gosse.writer`); None keeps the stream on the WSGI iterable."""
        with self._deliver_lock:
            if session.ending or self._closed:
                return None
            writer = self._writer
            if writer is None or not writer.alive or writer.pid != os.getpid():
                writer = self._writer = SocketWriter(CLOSE_TIMEOUT)
            pending = session.mailbox.retire()
            session.handed_over = True
            finished = writer.adopt(session, sock, pending)
        return finished, writer

    # -- the janitor -------------------------------------------------------

    def _janitor_loop(self) -> None:
        """Every half second while sessions exist: release sessions whose
        response nobody holds any more, expire sessions no server serves,
        end streams the server stopped iterating (a middleware that drops
        close(), a thread stuck writing to a stalled reader) and cut the ones
        that did not finish by their close deadline.

        Judging by wall time must never end a healthy stream of a process so
        busy that its serving threads wait long for the GIL (10,000 streams
        opening at once): every limit is stretched by an allowance, four
        times the longest recent delay seen (the janitor's own lateness, or
        a session's wait between connect() and being served), decaying."""
        allowance = 0.0
        last = time.monotonic()
        while True:
            time.sleep(JANITOR_INTERVAL)
            with self._lock:
                sessions = self._registry.recipients("all", None)
                if not sessions:
                    self._janitor = None
                    return
            now = time.monotonic()
            delay = now - last - JANITOR_INTERVAL
            last = now
            for s in sessions:
                if s.served and now - s.served_at <= 2 * JANITOR_INTERVAL + delay:
                    delay = max(delay, s.served_at - s.created)   # served since the last tick
            allowance = min(MAX_ALLOWANCE, max(4 * delay, allowance * 0.95))
            for s in sessions:
                if s.released:
                    continue
                if s.abandoned:
                    # Nobody holds its response any more: it was never
                    # served, or a server dropped the body without close().
                    s.end(ENDED_BY_CLIENT if s.served else ENDED_NOT_SERVED, abort=True)
                    s.release()
                    continue
                if s.handed_over:
                    continue
                if not s.served:
                    if now - s.created > PENDING_TIMEOUT + allowance:
                        s.end(ENDED_NOT_SERVED, abort=True)
                        s.release(ENDED_NOT_SERVED)
                elif s.socket_closed():
                    # The server closed the connection without telling the
                    # body (a middleware that drops close()).
                    s.end(ENDED_BY_CLIENT, abort=True)
                    s.release()
                elif ((s.close_by is not None and now > s.close_by)
                      or (not s.in_next and now - s.last_next > STALL_GRACE + allowance)):
                    # Past its close deadline, or the server has been writing
                    # one piece of it for a minute: a reader that stopped.
                    s.end(ENDED_BY_CLIENT, abort=True)
                    s.shutdown_socket()
                    s.release()

    # -- delivery ----------------------------------------------------------

    def broadcast(self, event: Event) -> int:
        """Send ``event`` to every open session.  Returns the number of
        sessions it was queued for.  Never blocks on a slow reader."""
        if self._shared:
            return self._backplane.publish(("all", None), event)
        return self._deliver("all", None, event)

    def send(self, client_id: str, event: Event) -> int:
        """Send ``event`` to every session of ``client_id``; raise
        :class:`UnknownClientError` if it has none (the event is then
        neither recorded nor numbered)."""
        if self._shared:
            return self._backplane.publish(("client", client_id), event)
        return self._deliver("client", client_id, event)

    def publish(self, topic: str, event: Event) -> int:
        """Send ``event`` to every session that joined ``topic``.  Returns
        the number of sessions reached (0 if nobody listens)."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        if self._shared:
            return self._backplane.publish(("topic", topic), event)
        return self._deliver("topic", topic, event)

    def _send_session(self, session: Session, event: Event) -> bool:
        return self._deliver("client", session.client_id, event, session=session) > 0

    def _deliver(self, kind: str, name: Optional[str], event: Event,
                 session: Optional[Session] = None) -> int:
        if not isinstance(event, Event):
            raise TypeError(f"expected a gosse.Event, not {type(event).__name__}")
        if self._closed:
            raise BrokerClosedError("the broker is closed")
        body = event.encode()           # cached on the event; outside every lock
        event_id = event.id
        auto = self.auto_id and event_id is None
        with self._deliver_lock:
            with self._lock:
                if session is not None:
                    recipients: Tuple[Session, ...] = (session,) if not session.released else ()
                    if not recipients:
                        return 0
                else:
                    recipients = self._registry.recipients(kind, name)
                    if kind == "client" and not recipients:
                        raise UnknownClientError(cast(str, name))   # "client" has a name
                if auto:
                    self._next_id += 1
                    event_id = f"{self._epoch}-{self._next_id}"
                    wire = b"id: %s\n%s" % (event_id.encode(), body)
                else:
                    wire = body
                if self._history is not None and event_id is not None:
                    self._history.append(event_id, kind, name, wire)
            n, slow = self._fan_out(wire, recipients)
        if slow:
            self._drop_slow(slow)
        return n

    def deliver_local(self, batch: Iterable[Tuple[Any, str, Optional[str], bytes]], *,
                      floors: Optional[Dict[Session, Any]] = None,
                      commit: Optional[Callable[[], None]] = None) -> int:
        """Deliver already-encoded events to this broker's own sessions, in
        order: the interface through which a shared backplane's listener
        hands over what it received.

        ``batch`` holds ``(position, kind, name, wire)``; ``floors`` maps a
        session resuming ahead of this process to the position up to which
        it must skip (entries are dropped from it once passed).  ``commit``
        is called under the registry lock together with the snapshot of the
        recipients: a session registered after it misses none of the batch
        (its replay covers it) and one registered before gets it live.
        Returns the number of deliveries.
        """
        if self._closed:
            if commit is not None:
                with self._lock:
                    commit()
            return 0
        with self._deliver_lock:
            with self._lock:
                recipients = self._registry.recipients
                work = [(pos, wire, recipients(kind, name)) for pos, kind, name, wire in batch]
                if commit is not None:
                    commit()
            n = 0
            slow: List[Session] = []
            # Consecutive entries for the same recipients go out joined: one
            # queue put (one wake-up) per session per run, not per entry.
            run: List[bytes] = []
            run_targets: Tuple[Session, ...] = ()
            for pos, wire, targets in work:
                if floors:
                    targets = tuple(s for s in targets
                                    if (floors.get(s) is None or pos > floors[s]))
                if run and targets != run_targets:
                    k, dropped = self._fan_out(b"".join(run), run_targets, len(run))
                    n += k
                    slow += dropped
                    run = []
                run.append(wire)
                run_targets = targets
            if run:
                k, dropped = self._fan_out(b"".join(run), run_targets, len(run))
                n += k
                slow += dropped
            if floors and work:
                last = work[-1][0]
                for s in [s for s, f in floors.items() if f <= last or s.released]:
                    del floors[s]
        if slow:
            self._drop_slow(slow)
        return n

    def _fan_out(self, wire: bytes, recipients: Tuple[Session, ...],
                 events: int = 1) -> Tuple[int, List[Session]]:
        """Under the delivery lock: queue ``wire`` (``events`` encoded
        events) for each recipient, and hand it (framed once) to the writer
        for the handed-over ones.  Returns the deliveries, in events."""
        n = handed = 0
        slow: List[Session] = []
        for s in recipients:
            if s.handed_over:
                handed += 1
            elif s.end_reason is None:
                if s.mailbox.put(wire):
                    n += 1
                else:
                    slow.append(s)
        if handed:
            writer = self._writer
            if writer is not None:
                writer.deliver(frame_chunk(wire), recipients)
                n += handed
        n *= events
        self._counts["events_delivered"] += n
        return n, slow

    def _drop_slow(self, sessions: List[Session]) -> None:
        """Outside the locks: end sessions whose queue overflowed; cut the
        connection of one being served (its thread may be stuck writing)."""
        for s in sessions:
            if s.end(ENDED_SLOW, abort=True):
                if s.served:
                    s.shutdown_socket()
                else:
                    s.release(ENDED_SLOW)

    # -- clients -----------------------------------------------------------

    def is_client_present(self, client_id: str) -> bool:
        """Whether ``client_id`` has at least one open session (in any
        process, with a shared backplane)."""
        if client_id in self._registry.clients:
            return True
        return self._shared and self._backplane.is_client_present(client_id)

    def has_local_client(self, client_id: str) -> bool:
        """Whether ``client_id`` has an open session in this broker."""
        return client_id in self._registry.clients

    def local_clients(self) -> List[str]:
        """The ids of the clients with an open session in this broker."""
        with self._lock:
            return list(self._registry.clients)

    def local_count(self, kind: str, name: Optional[str]) -> int:
        """How many of this broker's sessions ``(kind, name)`` reaches."""
        with self._lock:
            return self._registry.count(kind, name)

    def sessions(self, client_id: str) -> List[ClientConnection]:
        """The open sessions of ``client_id`` (empty if none)."""
        with self._lock:
            found = self._registry.clients.get(client_id, {})
            refs = [self._conns.get(s) for s in found.values()]
        conns = [ref() for ref in refs if ref is not None]
        return [c for c in conns if c is not None]

    def set_client_metadata(self, client_id: str, metadata: Any) -> None:
        """Attach any value to a connected client; it is dropped with the
        client's last session.  :class:`UnknownClientError` if not connected.
        With a shared backplane the value is serialised (JSON by default)
        and seen by every process; it is dropped with the client's last
        session anywhere."""
        if self._shared:
            return self._backplane.set_client_metadata(client_id, metadata)
        with self._lock:
            if client_id not in self._registry.clients:
                raise UnknownClientError(client_id)
            self._metadata[client_id] = metadata

    def get_client_metadata(self, client_id: str) -> Any:
        """The value set by :meth:`set_client_metadata` (None if none);
        :class:`UnknownClientError` if the client is not connected."""
        if self._shared:
            return self._backplane.get_client_metadata(client_id)
        with self._lock:
            if client_id not in self._registry.clients:
                raise UnknownClientError(client_id)
            return self._metadata.get(client_id)

    def set_disconnect_callback(self, callback: Optional[Callable[[str, str], Any]]) -> None:
        """Call ``callback(client_id, session_id)`` once when each session
        ends, outside the broker's lock; exceptions are logged.  None
        removes it; anything else not callable is a TypeError."""
        _check_callable("the disconnect callback", callback)
        self._on_disconnect = callback

    def on_disconnect(self, callback: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
        """Decorator form of :meth:`set_disconnect_callback` (TypeError for
        anything not callable)."""
        if not callable(callback):
            raise TypeError(f"on_disconnect decorates a function, not {type(callback).__name__}")
        self.set_disconnect_callback(callback)
        return callback

    def stats(self) -> Dict[str, int]:
        """Counters: open ``clients`` and ``sessions``, ``sessions_direct``
        (sessions whose socket the writer holds, see ``direct_write``),
        ``queued`` events, ``events_delivered`` (per session),
        ``sessions_dropped_slow``, ``sessions_not_served`` (expired before a
        server sent them), ``sessions_total`` (ever opened)."""
        with self._lock:
            sessions = self._registry.recipients("all", None)
            stats = {"clients": len(self._registry.clients), "sessions": len(sessions),
                     **self._counts}
        stats["sessions_direct"] = sum(1 for s in sessions if s.handed_over and not s.released)
        stats["queued"] = sum(len(s.mailbox) for s in sessions)
        writer = self._writer
        if writer is not None:
            stats["queued"] += writer.queued()
        if self._shared:
            stats.update(self._backplane.stats())
        return stats

    # -- shutdown ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """End every open stream and refuse new ones.

        Streams finish cleanly (what is queued is written first); a stream
        that has not finished after ``timeout`` seconds (a reader that
        stopped reading) has its connection cut.  Returns within about
        ``timeout`` seconds.
        """
        with self._lock:
            self._closed = True
            sessions = self._registry.recipients("all", None)
        _live.discard(self)
        for s in sessions:
            self._end_session(s, ENDED_BY_BROKER, timeout)
        deadline = time.monotonic() + timeout
        for s in sessions:
            if not s.done.wait(max(0.0, deadline - time.monotonic())):
                if not s.handed_over:
                    s.end(ENDED_BY_BROKER, abort=True)
                    s.shutdown_socket()
                    s.release()
        with self._deliver_lock:
            writer = self._writer
        if writer is not None:
            writer.stop()
            for s in sessions:   # the writer's own deadline cuts what is left
                s.done.wait(max(0.0, deadline + 1.0 - time.monotonic()))
        self._backplane.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def comment(self, text: str = "") -> int:
        """Write a comment to every open session (receivers ignore it)."""
        wire = encode_comment(text)
        with self._deliver_lock:
            with self._lock:
                recipients = self._registry.recipients("all", None)
            n, slow = self._fan_out(wire, recipients)
        if slow:
            self._drop_slow(slow)
        return n


def _new_epoch() -> str:
    """A short prefix unique to this broker's lifetime: milliseconds since
    the epoch and 16 random bits, in base 36."""
    value = (int(time.time() * 1000) << 16) | random.getrandbits(16)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while value:
        value, r = divmod(value, 36)
        out = digits[r] + out
    return out


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


def _count(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if type(value) is not int or value < minimum:   # type(): bool is refused
        none = "None or " if optional else ""
        raise ValueError(f"{name} must be {none}an int >= {minimum}, not {value!r}")


def _check_callable(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be None or a callable, not {type(value).__name__}")


# RFC 9110 5.1 (field names are tokens) and 5.5 (a field value holds no
# control character but HTAB); PEP 3333: header strings are latin-1.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")
_CHAR_NAMES = {"\r": "a CR", "\n": "an LF", "\0": "a NUL"}
# Header names a stream's or a refusal's own headers fix.
_STREAM_FIXED = {"content-type": "an event stream's Content-Type is fixed "
                                 "(text/event-stream; charset=utf-8)"}
_REFUSAL_FIXED = {"content-type": "a refusal's body is text/plain",
                  "content-length": "a refusal sets its own Content-Length"}


def _check_header(name: Any, value: Any, refused: Mapping[str, str]) -> None:
    """TypeError/ValueError for a header a WSGI app must not send.  The
    message names the header and the reason, never the value (it may be a
    secret)."""
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError("header names and values must be str, not "
                        f"{type(name).__name__}: {type(value).__name__}")
    if not _TOKEN.match(name):
        raise ValueError(f"header name {name[:64]!r} is not an HTTP token (RFC 9110)")
    lower = name.lower()
    if lower in _HOP_BY_HOP:
        raise ValueError(f"{name!r} is a hop-by-hop header, which a WSGI app "
                         "must not set (PEP 3333)")
    if lower in refused:
        raise ValueError(f"header {name!r} cannot be set: {refused[lower]}")
    bad = _BAD_VALUE_CHAR.search(value)
    if bad is not None:
        char = bad.group()
        what = _CHAR_NAMES.get(char) or (f"control character U+{ord(char):04X}"
                                         if ord(char) < 0x100 else "a non-latin-1 character")
        raise ValueError(f"the value of header {name!r} contains {what} at index "
                         f"{bad.start()}; header values must be one line of latin-1 text")


def _header_items(headers: Any, refused: Mapping[str, str],
                  mapping_only: bool) -> List[Tuple[str, str]]:
    """``headers`` (a mapping, or unless ``mapping_only`` a list of pairs)
    as a checked list of pairs."""
    if isinstance(headers, _MappingABC):
        items = list(headers.items())
    elif not mapping_only and isinstance(headers, (list, tuple)) and all(
            isinstance(item, (list, tuple)) and len(item) == 2 for item in headers):
        items = [tuple(item) for item in headers]
    else:
        kinds = "a mapping" if mapping_only else "a mapping or a list of (name, value) pairs"
        raise TypeError(f"headers must be {kinds} of str, not {type(headers).__name__}")
    for name, value in items:
        _check_header(name, value, refused)
    return items


def _stream_headers(headers: Optional[Mapping[str, str]]) -> List[Tuple[str, str]]:
    result = list(_STREAM_HEADERS)
    if headers is not None:
        for name, value in _header_items(headers, _STREAM_FIXED, mapping_only=True):
            # Cache-Control and X-Accel-Buffering may be replaced.
            result = [(n, v) for n, v in result if n.lower() != name.lower()]
            result.append((name, value))
    return result


_STATUS_LINE = re.compile(r"([0-9]{3}) [\t\x20-\x7e\x80-\xff]+\Z")


def _status_line(status: Union[int, str]) -> str:
    """The WSGI status line of a refusal: ValueError unless ``status`` is an
    int 400-599 or a str ``"NNN Reason"`` with NNN in 400-599."""
    if type(status) is int and 400 <= status <= 599:
        from http import HTTPStatus
        try:
            return f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            return f"{status} Refused"
    if isinstance(status, str):
        match = _STATUS_LINE.match(status)
        if match is not None and 400 <= int(match.group(1)) <= 599:
            return status
    raise ValueError("a refusal's status must be an int 400-599 or a str like "
                     f"'403 Forbidden', not {status!r:.80}")


def _hook_refusal(result: Any) -> Refusal:
    """The :class:`Refusal` for a non-None ``on_connect`` result, or
    :class:`ConnectHookError` saying what is wrong with it."""
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise ConnectHookError(
            "on_connect must return None, (status, message) or (status, message, "
            f"headers), not {type(result).__name__}"
            + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""))
    try:
        return Refusal(*result)
    except (TypeError, ValueError) as exc:
        raise ConnectHookError(f"on_connect returned an invalid refusal: {exc}") from exc


def _last_event_id(environ: Dict[str, Any]) -> Optional[str]:
    """The Last-Event-ID of the request (header, else ``lastEventId`` query
    parameter), or None.  WSGI gives header values as latin-1 decoded
    strings; the id was sent as UTF-8."""
    value: Optional[str] = environ.get("HTTP_LAST_EVENT_ID")
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
