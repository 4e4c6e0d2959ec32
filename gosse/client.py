"""SSE client: a feed read by one background thread, handed to subscribers
through queues, reconnecting like a browser's ``EventSource``.

::

    from gosse import connect_with_sse_feed

    with connect_with_sse_feed("http://localhost:8080/sse") as feed:
        with feed.subscribe("message") as sub:
            for event in sub:
                print(event.id, event.event, event.data)

:func:`connect_with_sse_feed` connects at once (and raises if that fails);
then one daemon thread per feed reads the response, feeds the bytes to an
:class:`~gosse.parser.EventStreamParser` and puts each event on the queue of
every matching :class:`Subscription`.  When the stream ends or breaks, the
thread reconnects with ``Last-Event-ID``, transparently for subscribers.
"""
from __future__ import annotations

import http.client
import logging
import queue
import random
import re
import socket
import threading
import time
from typing import Any, Callable, Iterator, List, Mapping, Optional, Tuple, Union

import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from .errors import (EventStreamError, FeedClosedError, FeedConnectionError, FeedError,
                     ResponseError, SSEError)
from .event import Event
from .parser import DEFAULT_MAX_EVENT_SIZE, DEFAULT_MAX_LINE_BYTES, EventStreamParser

__all__ = ["connect_with_sse_feed", "SSEFeed", "Subscription", "Headers"]

log = logging.getLogger(__name__)

#: Extra request headers: a mapping, or a callable returning one (called on
#: every connect and reconnect, e.g. to refresh a token).
Headers = Union[Mapping[str, Any], Callable[[], Mapping[str, Any]], None]

_READ_SIZE = 65536
# Bytes taken from the connection per read when gosse undoes the HTTP framing
# itself: large, so that a fast stream is parsed and handed to subscribers in
# few, large batches (a read returns only what has arrived).
_BODY_READ_SIZE = 262144
_MAX_CHUNK_LINE = 4096
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
# How often a reader blocked on a full subscriber queue checks for close()
# even if nothing woke it.
_PUT_POLL = 0.25
# How long close() waits for the reader thread.
_JOIN_TIMEOUT = 0.9
# Floor of the delay that exponential backoff doubles, so that a stream
# saying "retry: 0" cannot turn failed reconnects into a busy loop.
_MIN_BACKOFF_BASE = 0.05

# Errors that mean "the connection is broken" while reading a response body.
_READ_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError,
                requests.RequestException)


def connect_with_sse_feed(
    url: str,
    headers: Headers = None,
    *,
    method: str = "GET",
    data: Any = None,
    json: Any = None,
    session: Optional[requests.Session] = None,
    timeout: float = 10.0,
    read_timeout: Optional[float] = None,
    reconnect: bool = True,
    max_retries: Optional[int] = None,
    queue_size: int = 1024,
    last_event_id: str = "",
    retry: int = 3000,
    max_backoff: float = 30.0,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_event_size: Optional[int] = DEFAULT_MAX_EVENT_SIZE,
) -> "SSEFeed":
    """Connect to the event stream at ``url`` and return the running
    :class:`SSEFeed` (Go: ``ConnectWithSSEFeed``).

    The first connection is made before this returns.  It raises
    :class:`~gosse.errors.FeedConnectionError` if the server cannot be
    reached (the ``requests`` error is the ``__cause__``) and
    :class:`~gosse.errors.ResponseError` if it answers with a status other
    than 200 or a content type other than ``text/event-stream``.

    * ``headers``: extra request headers, a mapping or a callable returning
      one, called on every (re)connect.  ``Accept: text/event-stream``,
      ``Cache-Control: no-cache`` and, once known, ``Last-Event-ID`` (UTF-8)
      are always sent.
    * ``method``, ``data``, ``json``: the request; the body is sent again on
      every reconnect, so it must be re-sendable (not a generator or a file).
    * ``session``: a :class:`requests.Session` for cookies, auth, adapters
      and TLS settings; it is not closed by the feed.  Without one the feed
      uses (and closes) its own.  Redirects are followed by ``requests``,
      which drops ``Authorization`` when the host, port or scheme changes,
      and the ``Cookie`` header on every redirect (jar cookies are re-added
      by domain).
    * ``timeout``: seconds to connect and to wait for the response headers.
    * ``read_timeout``: seconds without a byte from the server (heartbeat
      comments count) after which the connection is considered dead and is
      replaced; ``None`` waits forever.
    * ``reconnect``: reconnect when the stream ends or breaks, like
      ``EventSource``.  With ``False`` an orderly end of the stream ends the
      feed quietly and a broken connection ends it with a
      :class:`~gosse.errors.FeedConnectionError`.
    * ``max_retries``: after this many failed reconnection attempts in a
      row the feed gives up with a ``FeedConnectionError`` (``None``: never;
      ``0``: end with that error as soon as the stream is lost).
    * ``queue_size``: capacity of each subscription's queue.  When a
      subscriber falls behind, the reader waits (and the server's writes
      back up over TCP) instead of buffering without bound.
    * ``last_event_id``: resume after this id (sent as ``Last-Event-ID``).
    * ``retry``: reconnection time in milliseconds until the server sets
      one with ``retry:``.
    * ``max_backoff``: cap, in seconds, of the jittered exponential backoff
      between consecutive failed reconnection attempts.
    * ``max_line_bytes``: longest line the parser accepts.
    * ``max_event_size``: largest event data the parser accepts, in
      characters (64 Mi by default; ``None``: no limit).  A line or an event
      over its limit ends the feed with :class:`~gosse.errors.EventStreamError`
      (reconnecting would bring the same bytes again).
    """
    return SSEFeed(url, headers, method=method, data=data, json=json, session=session,
                   timeout=timeout, read_timeout=read_timeout, reconnect=reconnect,
                   max_retries=max_retries, queue_size=queue_size,
                   last_event_id=last_event_id, retry=retry, max_backoff=max_backoff,
                   max_line_bytes=max_line_bytes, max_event_size=max_event_size)


class Subscription:
    """The events of one type (or all events) of an :class:`SSEFeed`.

    Made by :meth:`SSEFeed.subscribe`.  Go style: ``sub.feed`` is a bounded
    :class:`queue.Queue` of :class:`~gosse.Event` objects and ``sub.err_feed``
    a :class:`queue.Queue` that receives the error that ended the feed.
    Python style: iterate (``for event in sub``) or call :meth:`get`.

    Iteration blocks for the next event.  It stops quietly when the
    subscription or the feed is closed by the user (events still queued are
    dropped) or when the stream ended in an orderly way with
    ``reconnect=False`` (after the queued events).  If the feed ends with an
    error (HTTP 204, a non-200 or non-event-stream answer on reconnect,
    retries exhausted, a line over ``max_line_bytes`` or an event over
    ``max_event_size``), iteration first
    yields the events already queued, then raises that error.
    """

    def __init__(self, parent: "SSEFeed", event_type: Optional[str], queue_size: int):
        self._parent = parent
        #: The event type this subscription receives (``None``: every event).
        self.event_type = event_type
        #: Queue of the received :class:`~gosse.Event` objects.
        self.feed: "queue.Queue[Event]" = queue.Queue(queue_size)
        #: Queue that receives the error that ended the feed, if one did.
        self.err_feed: "queue.Queue[SSEError]" = queue.Queue()
        self._closed = False     # closed by the user: stop at once
        self._ended = False      # the feed ended: stop once the queue is drained
        self._error: Optional[SSEError] = None

    @property
    def closed(self) -> bool:
        """True once no more events will be added (closed, or the feed ended)."""
        return self._closed or self._ended

    def get(self, timeout: Optional[float] = None) -> Event:
        """Return the next event, waiting up to ``timeout`` seconds (``None``:
        without limit).

        Raises :class:`queue.Empty` on timeout, the feed's error once the
        feed ended with one and the queue is drained, and
        :class:`~gosse.errors.FeedClosedError` once the subscription or feed
        is closed.
        """
        event = self._next(timeout)
        if event is None:
            raise FeedClosedError("the subscription was closed" if self._closed
                                  else "the feed ended")
        return event

    def __iter__(self) -> Iterator[Event]:
        # Take everything queued under one lock, then hand it out without
        # the lock: one wake-up and one lock round per batch, not per event.
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            for event in batch:
                if self._closed:
                    return
                yield event

    # sub.feed is a plain queue.Queue, so that it holds only events and works
    # like any queue; the methods below use its documented condition
    # variables, its _qsize/_get hooks and the deque holding its items
    # (q.queue) to wait for "an event or the end" and to move a batch of
    # events under one lock acquisition.

    def _next(self, timeout: Optional[float]) -> Optional[Event]:
        q = self.feed
        deadline = None if timeout is None else time.monotonic() + timeout
        with q.not_empty:
            while True:
                if self._closed:
                    return None
                if q._qsize():
                    event = q._get()
                    q.not_full.notify()
                    return event
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    return None
                if deadline is None:
                    q.not_empty.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise queue.Empty
                    q.not_empty.wait(remaining)

    def _next_batch(self) -> Optional[List[Event]]:
        """Every queued event (at least one), or ``None`` at the end."""
        q = self.feed
        with q.not_empty:
            while True:
                if self._closed:
                    return None
                if q._qsize():
                    batch = list(q.queue)   # Queue stores its items in this deque
                    q.queue.clear()
                    q.not_full.notify()
                    return batch
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    return None
                q.not_empty.wait()

    def close(self) -> None:
        """Stop receiving events; iteration ends quietly.  Idempotent."""
        self._closed = True
        self._parent._discard(self)
        self._wake()

    def _end(self, error: Optional[SSEError]) -> None:
        if error is not None:
            self._error = error
            self.err_feed.put_nowait(error)
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        with self.feed.mutex:
            self.feed.not_empty.notify_all()
            self.feed.not_full.notify_all()

    def _offer(self, events: List[Event], closing: threading.Event) -> None:
        """Queue ``events``; while the queue is full, wait (this is the
        back-pressure) until there is room, or a close."""
        q = self.feed
        done = 0
        with q.not_full:
            while done < len(events):
                if self._closed or closing.is_set():
                    return
                room = q.maxsize - q._qsize()
                if room <= 0:
                    # close() notifies; the timeout is only a safety net.
                    q.not_full.wait(_PUT_POLL)
                    continue
                batch = events[done:done + room] if done or room < len(events) else events
                q.queue.extend(batch)
                q.unfinished_tasks += len(batch)
                q.not_empty.notify(len(batch))
                done += len(batch)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Subscription {self.event_type!r} {state} queued={self.feed.qsize()}>"


class SSEFeed:
    """A connection to an event stream, read by one background thread.

    Made by :func:`connect_with_sse_feed` (which documents the arguments).
    Always :meth:`close` it, or use it as a context manager: the reader thread
    and the connection live until then.

    The reader starts reading once the feed has its first subscription, so a
    subscription made right after connecting misses nothing.  Events that
    arrive while there is no matching subscription are dropped.
    """

    def __init__(self, url: str, headers: Headers = None, *, method: str = "GET",
                 data: Any = None, json: Any = None,
                 session: Optional[requests.Session] = None, timeout: float = 10.0,
                 read_timeout: Optional[float] = None, reconnect: bool = True,
                 max_retries: Optional[int] = None, queue_size: int = 1024,
                 last_event_id: str = "", retry: int = 3000, max_backoff: float = 30.0,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 max_event_size: Optional[int] = DEFAULT_MAX_EVENT_SIZE):
        if data is not None and json is not None:
            raise ValueError("pass data= or json=, not both")
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if read_timeout is not None and read_timeout <= 0:
            raise ValueError(f"read_timeout must be positive or None, not {read_timeout!r}")
        if type(queue_size) is not int or queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, not {queue_size!r}")
        if type(retry) is not int or retry < 0:
            raise ValueError(f"retry must be a non-negative int of milliseconds, not {retry!r}")
        if max_retries is not None and (type(max_retries) is not int or max_retries < 0):
            raise ValueError(f"max_retries must be a non-negative int or None, "
                             f"not {max_retries!r}")
        if max_backoff <= 0:
            raise ValueError(f"max_backoff must be positive, not {max_backoff!r}")
        if not isinstance(last_event_id, str) or any(c in last_event_id for c in "\r\n\0"):
            raise ValueError("last_event_id must be a str without CR, LF or NUL")
        # Checked here rather than on the first feed() call.
        EventStreamParser(max_line_bytes, max_event_size=max_event_size)

        #: The URL of the stream (reconnects go here, then follow redirects).
        self.url = url
        self._headers = headers
        self._method = method
        self._data = data
        self._json = json
        self._owns_session = session is None
        self._session = requests.Session() if session is None else session
        self._timeout = timeout
        self._read_timeout = read_timeout
        self._reconnect = reconnect
        self._max_retries = max_retries
        self._queue_size = queue_size
        self._last_event_id = last_event_id
        self._default_retry = retry
        self._server_retry: Optional[int] = None
        self._max_backoff = max_backoff
        self._max_line_bytes = max_line_bytes
        self._max_event_size = max_event_size

        #: Set while a connection to the server is open.
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._subs: Tuple[Subscription, ...] = ()
        self._closing = threading.Event()    # set by close() and when the feed ends
        self._error: Optional[SSEError] = None
        self._has_subscriber = threading.Event()
        self._response: Optional[requests.Response] = None
        self._sock: Optional[socket.socket] = None

        try:
            self._attach(self._open())
        except BaseException:
            if self._owns_session:
                self._session.close()
            raise
        # Not named after the URL, which may carry credentials.
        self._thread = threading.Thread(target=self._run, name="gosse-feed", daemon=True)
        self._thread.start()

    # -- public face ---------------------------------------------------------

    @property
    def last_event_id(self) -> str:
        """The last event id received (sent as ``Last-Event-ID`` on reconnect)."""
        return self._last_event_id

    @property
    def retry(self) -> int:
        """The reconnection time in force, in milliseconds: the server's last
        ``retry:`` value, or the ``retry`` argument if it never sent one."""
        server = self._server_retry
        return self._default_retry if server is None else server

    @property
    def closed(self) -> bool:
        """True once the feed was closed or ended; it delivers nothing more."""
        return self._closing.is_set()

    @property
    def error(self) -> Optional[SSEError]:
        """The error that ended the feed, if one did."""
        return self._error

    def subscribe(self, event_type: Optional[str] = None) -> Subscription:
        """Receive events of ``event_type`` (``None``: every event) from now on.

        Events without an ``event:`` field have the type ``"message"``.
        Raises :class:`~gosse.errors.FeedClosedError` if the feed is closed.
        """
        with self._lock:
            if self._closing.is_set():
                raise FeedClosedError("the feed is closed") from self._error
            sub = Subscription(self, event_type, self._queue_size)
            self._subs = self._subs + (sub,)
        self._has_subscriber.set()
        return sub

    def close(self) -> None:
        """Close the connection, end every subscription's iteration quietly,
        and stop the reader thread.  Idempotent; callable from any thread.

        Returns within a second: a read blocked on the socket is interrupted
        by shutting the socket down.  Only if the reader is in the middle of a
        reconnect's HTTP request, which cannot be interrupted, does it finish
        in the background after close() returned, when that request ends
        (within ``timeout`` seconds, or ``read_timeout`` if given, for the
        response headers).
        """
        with self._lock:
            self._closing.set()
            subs, self._subs = self._subs, ()
            # Under the lock, so the reader cannot close (and the OS reuse)
            # the descriptor in between.
            self._interrupt()
        for sub in subs:
            sub._closed = True
            sub._wake()
        self._has_subscriber.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(_JOIN_TIMEOUT)

    def __enter__(self) -> "SSEFeed":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connected" if self.connected.is_set()
                                              else "reconnecting")
        return f"<SSEFeed {self.url} {state} last_event_id={self._last_event_id!r}>"

    # -- connecting ----------------------------------------------------------

    def _open(self) -> requests.Response:
        """Make the request; return a checked 200 text/event-stream response."""
        headers: CaseInsensitiveDict = CaseInsensitiveDict(
            {"Accept": "text/event-stream", "Cache-Control": "no-cache"})
        extra = self._headers() if callable(self._headers) else self._headers
        if extra:
            headers.update(extra)
        if self._last_event_id:
            headers["Last-Event-ID"] = self._last_event_id.encode("utf-8")
        # Header wait: read_timeout if given, else timeout; the body's socket
        # timeout is set to read_timeout in _attach().
        timeouts = (self._timeout, self._read_timeout or self._timeout)
        try:
            response = self._session.request(
                self._method, self.url, headers=headers, data=self._data, json=self._json,
                stream=True, timeout=timeouts)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise FeedConnectionError(f"cannot connect to {self.url}: {exc}") from exc
        _check_response(response)
        return response

    def _attach(self, response: requests.Response) -> bool:
        with self._lock:
            if self._closing.is_set():
                response.close()
                return False
            self._response = response
            self._sock = _socket_of(response)
            if self._sock is not None:
                try:
                    self._sock.settimeout(self._read_timeout)
                except OSError:
                    pass
            self.connected.set()
        return True

    def _detach(self) -> None:
        with self._lock:
            response, self._response = self._response, None
            self._sock = None
            self.connected.clear()
        if response is not None:
            response.close()

    def _interrupt(self) -> None:
        """Make a read blocked on the connection return (caller holds the lock)."""
        if self._sock is not None:
            try:
                # The base class method: SSLSocket.shutdown would also tear
                # down the TLS state under the reader's feet.
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass
        elif self._response is not None and hasattr(self._response.raw, "shutdown"):
            try:
                self._response.raw.shutdown()
            except (OSError, ValueError, RuntimeError):
                pass

    # -- the reader thread -----------------------------------------------------

    def _run(self) -> None:
        error: Optional[SSEError] = None
        try:
            self._has_subscriber.wait()
            while not self._closing.is_set():
                problem = self._pump()
                self._detach()
                if self._closing.is_set():
                    break
                if isinstance(problem, EventStreamError):
                    # The same bytes would come again after a reconnect.
                    error = problem
                    break
                if not self._reconnect:
                    if problem is not None:
                        error = FeedConnectionError(
                            f"the connection to {self.url} broke: {problem}")
                        error.__cause__ = problem
                    break
                log.info("event stream %s %s; reconnecting in %d ms", self.url,
                         "ended" if problem is None else f"broke ({problem})", self.retry)
                error = self._reconnect_loop(problem)
                if error is not None:
                    break
        except BaseException as exc:  # a bug: still release the subscribers
            if not self._closing.is_set():
                log.exception("gosse feed reader for %s failed", self.url)
                error = FeedError(f"the feed reader failed: {exc!r}")
                error.__cause__ = exc
        finally:
            self._detach()
            self._finish(error)

    def _pump(self) -> Optional[BaseException]:
        """Read the current response until it ends.  Returns ``None`` on an
        orderly end (or close), else the error that broke it."""
        response = self._response
        if response is None:
            return None
        parser = EventStreamParser(self._max_line_bytes, self._last_event_id,
                                   max_event_size=self._max_event_size)
        # The reconnection time the server set outlives its connection.
        parser.retry = self._server_retry
        read = _body_reader(response.raw)
        try:
            while True:
                chunk = read()
                if not chunk:
                    return None
                try:
                    events = parser.feed(chunk)
                except EventStreamError as exc:
                    self._dispatch(exc.events)
                    raise
                self._last_event_id = parser.last_event_id
                if parser.retry is not None:
                    self._server_retry = parser.retry
                if events:
                    self._dispatch(events)
                    if self._closing.is_set():
                        return None
        except EventStreamError as exc:
            return exc
        except _READ_ERRORS as exc:
            return None if self._closing.is_set() else exc

    def _dispatch(self, events: List[Event]) -> None:
        for sub in self._subs:
            wanted = sub.event_type
            sub._offer(events if wanted is None else
                       [e for e in events if e.event == wanted], self._closing)

    def _reconnect_loop(self, problem: Optional[BaseException]) -> Optional[SSEError]:
        """Reconnect; return ``None`` once connected (or closing), or the
        error that ends the feed."""
        delay = self.retry / 1000
        failures = 0
        last: Optional[BaseException] = problem
        while True:
            if self._max_retries is not None and failures >= self._max_retries:
                error = FeedConnectionError(
                    f"lost the stream from {self.url} and gave up after {failures} "
                    f"failed reconnection attempt(s) (max_retries={self._max_retries})")
                error.__cause__ = last
                return error
            if self._closing.wait(delay):
                return None
            try:
                response = self._open()
            except ResponseError as exc:
                return exc
            except FeedConnectionError as exc:
                last = exc
            except requests.RequestException as exc:  # TooManyRedirects, InvalidURL...
                error = FeedConnectionError(f"cannot reconnect to {self.url}: {exc}")
                error.__cause__ = exc
                return error
            except Exception as exc:  # e.g. the headers callable failed
                last = exc
            else:
                self._attach(response)
                return None
            failures += 1
            delay = self._backoff(failures)
            log.warning("reconnecting to %s failed (%s); next attempt in %.2f s",
                        self.url, last, delay)

    def _backoff(self, failures: int) -> float:
        """Delay before the next attempt after ``failures`` failed ones in a row:
        at least the reconnection time, doubling with each failure up to
        max_backoff, with random jitter over the upper half."""
        base = self.retry / 1000
        ceiling = min(max(base, _MIN_BACKOFF_BASE) * 2 ** min(failures, 32),
                      max(self._max_backoff, base))
        return random.uniform(max(base, ceiling / 2), ceiling)

    def _finish(self, error: Optional[SSEError]) -> None:
        with self._lock:
            self._error = error
            subs, self._subs = self._subs, ()
            self._closing.set()
        if error is not None:
            log.warning("event stream %s ended: %s", self.url, error)
        for sub in subs:
            sub._end(error)
        if self._owns_session:
            self._session.close()

    def _discard(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)


def _check_response(response: requests.Response) -> None:
    status = response.status_code
    content_type = response.headers.get("Content-Type")
    is_stream = (content_type is not None and
                 content_type.split(";", 1)[0].strip().lower() == "text/event-stream")
    if status == 200 and is_stream:
        return
    response.close()
    if status == 204:
        message = f"{response.url} answered 204 No Content: the server ended the feed"
    elif status != 200:
        message = (f"{response.url} answered {status} {response.reason} with content type "
                   f"{content_type!r}; expected 200 and text/event-stream")
    else:
        message = (f"{response.url} answered 200 with content type {content_type!r}; "
                   f"expected text/event-stream")
    raise ResponseError(message, status_code=status, content_type=content_type,
                        url=response.url)


def _socket_of(response: requests.Response) -> Optional[socket.socket]:
    """The socket under a streaming response, if it can be found."""
    raw = response.raw
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if sock is None:  # through http.client: HTTPResponse.fp is sock.makefile()
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _body_reader(raw: Any) -> Callable[[], bytes]:
    """A function returning the (decoded) body bytes that have arrived, at
    least one byte, or ``b""`` at the end.

    ``iter_content`` and ``iter_lines`` wait until their chunk size is filled
    on streams without chunked encoding, which stalls small events.  Here each
    call returns what one read of the socket gives.
    """
    fp = getattr(raw, "_fp", None)   # the http.client.HTTPResponse
    encoding = (raw.headers.get("Content-Encoding") or "identity").strip().lower()
    if (isinstance(fp, http.client.HTTPResponse) and encoding == "identity"
            and fp.fp is not None and fp.chunk_left is None):
        return _HTTPBody(fp.fp, chunked=bool(fp.chunked), length=fp.length).read
    if hasattr(raw, "read1"):   # urllib3 2: also undoes content encoding
        return lambda: raw.read1(_READ_SIZE, decode_content=True)
    # urllib3 1.x: http.client's read1, then urllib3's gzip/deflate decoder.
    raw._init_decoder()

    def read1() -> bytes:
        data = fp.read1(_READ_SIZE) if fp is not None else b""
        if raw._decoder is not None:
            data = raw._decode(data, True, not data)
        return data
    return read1


class _HTTPBody:
    """Reads an identity-encoded HTTP/1.1 response body straight from the
    connection's buffered reader, undoing chunked framing itself.

    http.client's ``read1`` returns at most the rest of one HTTP chunk per
    call, through several Python calls per chunk; a server that writes many
    small chunks then costs the reader one parse and one subscriber wake-up
    per chunk.  This reads everything that has arrived (up to
    ``_BODY_READ_SIZE``) in one call and hands it on in one piece.
    """

    def __init__(self, fp: Any, chunked: bool, length: Optional[int]):
        self._read1 = fp.read1
        self._chunked = chunked
        self._length = length     # bytes left of a Content-Length body
        self._left = 0            # bytes left of the current chunk
        self._line = b""          # an unfinished chunk-size line
        self._need_crlf = False   # the line end after a chunk's data is next
        self._done = False
        self._failure: Optional[Exception] = None

    def read(self) -> bytes:
        if self._failure is not None:
            raise self._failure
        while not self._done:
            size = _BODY_READ_SIZE
            if self._length is not None:
                if self._length <= 0:
                    self._done = True
                    break
                size = min(size, self._length)
            data = self._read1(size)
            if not data:
                if self._chunked or self._length:
                    raise http.client.IncompleteRead(b"", self._length or self._left or None)
                self._done = True
                break
            if self._length is not None:
                self._length -= len(data)
            if not self._chunked:
                return data
            body = self._unchunk(data)
            if body:
                return body
        return b""

    def _unchunk(self, data: bytes) -> bytes:
        if self._line:
            data = self._line + data
            self._line = b""
        pieces: List[Tuple[int, int]] = []
        try:
            self._left = self._split(data, pieces)
        except http.client.HTTPException as exc:
            if not pieces:
                raise
            self._failure = exc   # hand on the good bytes first
        if not pieces:
            return b""
        if len(pieces) == 1:
            start, stop = pieces[0]
            return data if start == 0 and stop == len(data) else data[start:stop]
        view = memoryview(data)
        return b"".join([view[start:stop] for start, stop in pieces])

    def _split(self, data: bytes, pieces: List[Tuple[int, int]]) -> int:
        """Append the (start, stop) spans of chunk data in ``data`` to
        ``pieces``; return the bytes left of the current chunk."""
        pos = 0
        end = len(data)
        left = self._left
        while pos < end:
            if left:
                stop = min(pos + left, end)
                pieces.append((pos, stop))
                left -= stop - pos
                pos = stop
                if left:
                    break
                self._need_crlf = True
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line = data[pos:]
                if len(self._line) > _MAX_CHUNK_LINE:
                    raise http.client.HTTPException("chunk size line too long")
                break
            line = data[pos:nl].rstrip(b"\r")
            pos = nl + 1
            if self._need_crlf:
                if line:
                    raise http.client.HTTPException(f"no line end after chunk data: {line[:40]!r}")
                self._need_crlf = False
                continue
            hex_size = line.split(b";", 1)[0].strip()
            if not _HEX.fullmatch(hex_size):
                raise http.client.HTTPException(f"invalid chunk size line {line[:40]!r}")
            left = int(hex_size, 16)
            if not left:    # the last chunk; trailers, if any, are not read
                self._done = True
                break
        return left
