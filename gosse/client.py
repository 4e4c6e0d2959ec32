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
For one request read in the caller's thread (LLM and API streams), see
:func:`gosse.stream` and :func:`gosse.iter_events`.
"""
from __future__ import annotations

import email.utils
import http.client
import logging
import queue
import random
import socket
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union, cast

import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from . import _transport
from ._redact import Redactor
from .errors import (
    EventStreamError,
    FeedClosedError,
    FeedConnectionError,
    FeedError,
    FeedShutDown,
    InvalidURLError,
    ResponseError,
    SSEError,
    SubscriptionStalledError,
)
from .event import Event
from .parser import DEFAULT_MAX_EVENT_SIZE, DEFAULT_MAX_LINE_BYTES, EventStreamParser

__all__ = ["connect_with_sse_feed", "SSEFeed", "Subscription", "Headers"]

log = logging.getLogger(__name__)

#: Extra request headers: a mapping, or a callable returning one (called on
#: every connect and reconnect, e.g. to refresh a token).
Headers = Union[Mapping[str, Any], Callable[[], Mapping[str, Any]], None]

# How often a reader blocked on a full subscriber queue checks for close()
# even if nothing woke it.
_PUT_POLL = 0.25
# How long close() waits for the reader thread.
_JOIN_TIMEOUT = 0.9
# Floor of the delay that exponential backoff doubles, so that a stream
# saying "retry: 0" cannot turn failed reconnects into a busy loop.
_MIN_BACKOFF_BASE = 0.05
# Statuses that mean "come back later": retried with backoff, honouring
# Retry-After, on reconnect.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# How much of a refused response's body is kept on the ResponseError, and
# how long reading it may take.
_ERROR_BODY_LIMIT = 65536
_ERROR_BODY_TIMEOUT = 5.0
_UNSET: Any = object()

# Errors that mean "the connection is broken" while reading a response body
# (ValueError: a read on a response that close() already closed).
_READ_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError,
                requests.RequestException, ValueError)


def connect_with_sse_feed(
    url: str,
    headers: Headers = None,
    *,
    method: str = "GET",
    data: Any = None,
    json: Any = None,
    session: Optional[requests.Session] = None,
    connect_timeout: Optional[float] = 10.0,
    read_timeout: Optional[float] = None,
    timeout: Any = _UNSET,
    reconnect: Optional[bool] = None,
    max_retries: Optional[int] = None,
    queue_size: int = 1024,
    stall_timeout: Optional[float] = 30.0,
    last_event_id: str = "",
    retry: int = 3000,
    max_backoff: float = 30.0,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_event_size: Optional[int] = DEFAULT_MAX_EVENT_SIZE,
) -> SSEFeed:
    """Connect to the event stream at ``url`` and return the running
    :class:`SSEFeed` (Go: ``ConnectWithSSEFeed``).

    The first connection is made before this returns.  It raises
    :class:`~gosse.errors.FeedConnectionError` if the server cannot be
    reached (the ``requests`` error is the ``__cause__``),
    :class:`~gosse.errors.ResponseError` if it answers with a status other
    than 200 or a content type other than ``text/event-stream`` (with the
    server's ``.response`` and ``.body``), and
    :class:`~gosse.errors.InvalidURLError` for a URL that is not ``http(s)://``.

    * ``headers``: extra request headers, a mapping or a callable returning
      one, called on every (re)connect.  ``Accept: text/event-stream``,
      ``Cache-Control: no-cache`` and, once known, ``Last-Event-ID`` (UTF-8;
      leading whitespace, which no HTTP header value can carry, is left out)
      are always sent.
    * ``method``, ``data``, ``json``: the request.
    * ``session``: a :class:`requests.Session` for cookies, auth, adapters,
      proxies and TLS settings (its ``verify`` and ``cert`` win over
      ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``); it is not closed by the
      feed.  Without one the feed uses (and closes) its own.  Redirects are
      followed by ``requests``, which drops ``Authorization`` when the host,
      port or scheme changes, and the ``Cookie`` header on every redirect.
    * ``connect_timeout``: seconds to establish the connection (``None``:
      no limit).
    * ``read_timeout``: seconds without a byte from the server (heartbeat
      comments count), also while waiting for the response headers, after
      which the connection is considered dead and is replaced; ``None``
      waits forever (a server may send its headers only with its first event).
    * ``timeout``: a requests-style override of both waits: a number for
      connect and headers, a ``(connect, headers)`` pair, or ``None`` (no limit).
    * ``reconnect``: the reconnect policy.  ``True``: like ``EventSource``,
      reconnect after the stream ends or breaks, sending ``Last-Event-ID``
      (and the request body again: each re-send is logged).  ``False``: one
      request; an orderly end ends the feed quietly, a broken connection ends
      it with a ``FeedConnectionError``.  ``None`` (default): ``True`` for a
      GET without a body, ``False`` for any other request (an LLM or API
      POST is not billed twice).  While reconnecting, these are retried
      (with jittered exponential backoff, bounded by ``max_retries``): a
      refused or broken connection, a timeout, a failing ``headers``
      callable, and the statuses 429, 502, 503 and 504 (waiting
      ``Retry-After``, seconds or an HTTP date, when given).  Final: 204,
      any other status, a content type other than ``text/event-stream``,
      too many redirects, and a line or event over the parser's limits.
    * ``max_retries``: after this many failed reconnection attempts in a
      row the feed gives up with a ``FeedConnectionError`` (``None``: never;
      ``0``: end with that error as soon as the stream is lost).
    * ``queue_size``: capacity of each subscription's queue.  When a
      subscriber falls behind, the reader waits (and the server's writes
      back up over TCP) instead of buffering without bound.
    * ``stall_timeout``: when a subscription's queue stays full for longer
      than this many seconds, that subscription alone is ended with
      :class:`~gosse.errors.SubscriptionStalledError` (raised by its
      iteration after its queued events, and put on its ``err_feed``) and
      the others go on.  ``None``: wait for it without limit, which lets one
      unread subscription stop the whole feed.
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

    A feed that is no longer referenced (neither it nor any of its
    subscriptions) is closed: its reader thread does not keep it alive.
    """
    return SSEFeed(url, headers, method=method, data=data, json=json, session=session,
                   connect_timeout=connect_timeout, read_timeout=read_timeout,
                   timeout=timeout, reconnect=reconnect, max_retries=max_retries,
                   queue_size=queue_size, stall_timeout=stall_timeout,
                   last_event_id=last_event_id, retry=retry, max_backoff=max_backoff,
                   max_line_bytes=max_line_bytes, max_event_size=max_event_size)


# -- request helpers shared with gosse.oneshot -----------------------------------

def check_url(url: Any) -> str:
    """``url`` if it is an ``http://`` or ``https://`` URL with a host, else
    :class:`~gosse.errors.InvalidURLError`."""
    if not isinstance(url, str):
        raise InvalidURLError(f"the feed URL must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise InvalidURLError(f"not an http:// or https:// URL: {Redactor(url).safe_url!r}")
    if not rest.split("/", 1)[0].rsplit("@", 1)[-1]:
        raise InvalidURLError(f"the URL has no host: {Redactor(url).safe_url!r}")
    return url


def request_timeouts(timeout: Any, connect_timeout: Optional[float],
                     read_timeout: Optional[float]) -> Tuple[Optional[float], Optional[float]]:
    """The ``(connect, headers)`` timeouts given to requests."""
    def positive(value: Any, name: str) -> Optional[float]:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value <= 0):
            raise ValueError(f"{name} must be a positive number of seconds or None, "
                             f"not {value!r}")
        return value
    positive(connect_timeout, "connect_timeout")
    positive(read_timeout, "read_timeout")
    if timeout is _UNSET:
        return connect_timeout, read_timeout
    if isinstance(timeout, tuple) and len(timeout) == 2:
        return positive(timeout[0], "timeout[0]"), positive(timeout[1], "timeout[1]")
    positive(timeout, "timeout")
    return timeout, timeout


def session_tls_kwargs(session: requests.Session) -> Dict[str, Any]:
    """``verify`` / ``cert`` passed per request: requests lets the environment
    (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) win over the session's own
    settings unless the request names them."""
    kwargs = {}
    if session.verify is not True and session.verify is not None:
        kwargs["verify"] = session.verify
    if session.cert is not None:
        kwargs["cert"] = session.cert
    return kwargs


def open_stream(session: requests.Session, method: str, url: str, headers: Mapping[str, Any],
                data: Any, json: Any, timeouts: Tuple[Optional[float], Optional[float]],
                redact: Redactor) -> requests.Response:
    """Make the request; return a checked 200 ``text/event-stream`` response.
    Raises FeedConnectionError (network), ResponseError (the answer) or
    FeedError (another request error, e.g. too many redirects)."""
    try:
        response = session.request(method, url, headers=headers, data=data, json=json,
                                   stream=True, timeout=timeouts,
                                   **session_tls_kwargs(session))
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise FeedConnectionError(
            f"cannot connect to {redact.safe_url}: {redact(exc)}") from redact.exception(exc)
    except requests.RequestException as exc:
        raise FeedError(f"the request to {redact.safe_url} failed: "
                        f"{redact(exc)}") from redact.exception(exc)
    check_response(response, redact)
    return response


def check_response(response: requests.Response, redact: Redactor) -> None:
    """Raise ResponseError (with a bounded body) unless ``response`` is a 200
    ``text/event-stream``."""
    status = response.status_code
    content_type = response.headers.get("Content-Type")
    is_stream = (content_type is not None and
                 content_type.split(";", 1)[0].strip().lower() == "text/event-stream")
    if status == 200 and is_stream:
        return
    body = _read_error_body(response)
    url = redact(response.url)
    if status == 204:
        message = f"{url} answered 204 No Content: the server ended the feed"
    elif status != 200:
        message = (f"{url} answered {status} {response.reason} with content type "
                   f"{content_type!r}; expected 200 and text/event-stream")
    else:
        message = f"{url} answered 200 with content type {content_type!r}; " \
                  f"expected text/event-stream"
    if body.strip() and status != 200:
        shown = " ".join(redact(body).split())
        message += ": " + (shown if len(shown) <= 200 else shown[:200] + "...")
    raise ResponseError(message, status_code=status, content_type=content_type, url=url,
                        response=response, body=body)


def _read_error_body(response: requests.Response) -> str:
    """Read up to ``_ERROR_BODY_LIMIT`` bytes of a refused response (so that
    ``.text`` and ``.json()`` work on it), then close its connection."""
    raw = response.raw
    data = b""
    if response.status_code != 200:   # a 200 of the wrong type may be endless
        sock = _transport.socket_of(raw)
        if sock is not None:
            try:
                sock.settimeout(_ERROR_BODY_TIMEOUT)
            except OSError:
                pass
        try:
            data = raw.read(_ERROR_BODY_LIMIT, decode_content=True) or b""
        except Exception:  # noqa: BLE001 - keep what arrived; the status is the news
            data = b""
    _transport.discard_connection(raw)
    # requests keeps a read body in _content: .text / .json() then use it.
    response._content = data
    response._content_consumed = True  # type: ignore[attr-defined]  # private, not in the stubs
    try:
        return response.text
    except Exception:  # noqa: BLE001 - an unknown charset
        return data.decode("utf-8", "replace")


def retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def base_headers(extra: Headers, last_event_id: str) -> CaseInsensitiveDict[Union[str, bytes]]:
    headers: CaseInsensitiveDict[Union[str, bytes]] = CaseInsensitiveDict(
        {"Accept": "text/event-stream", "Cache-Control": "no-cache"})
    more = extra() if callable(extra) else extra
    if more:
        headers.update(more)
    # `id:  7` is the legal id " 7", but no HTTP header value can start with
    # whitespace (requests refuses it; a server would strip it anyway).
    last_event_id = last_event_id.lstrip(" \t\f\v")
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id.encode("utf-8")
    return headers


# -- subscriptions ---------------------------------------------------------------

class _FeedQueue(queue.Queue[Event]):
    """``sub.feed``: a bounded :class:`queue.Queue` of events whose ``get()``
    raises :class:`~gosse.errors.FeedShutDown` once the subscription has ended
    and the queue is drained (like ``Queue.shutdown()`` of Python 3.13).

    Its mutex is an RLock: ``SSEFeed.close()`` may run in a signal handler
    that interrupted this very thread inside one of the queue's critical
    sections.  The feed's reader thread adds events itself (see
    ``Subscription._offer``), several at a time, under this mutex.
    """

    def __init__(self, maxsize: int):
        super().__init__(maxsize)
        self.mutex = threading.RLock()  # type: ignore[assignment]  # on purpose, see above
        self.not_empty = threading.Condition(self.mutex)
        self.not_full = threading.Condition(self.mutex)
        self.all_tasks_done = threading.Condition(self.mutex)
        self.ended = False            # set by the reader (or close) under mutex
        self.writer_waiting = False   # the reader waits for room (under mutex)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Event:
        """Like :meth:`queue.Queue.get`; raises ``FeedShutDown`` at the end."""
        with self.not_empty:
            if timeout is not None and timeout < 0:
                raise ValueError("'timeout' must be a non-negative number")
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self.queue:
                if self.ended:
                    raise FeedShutDown("the subscription has ended")
                if not block:
                    raise queue.Empty
                if deadline is None:
                    self.not_empty.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise queue.Empty
                    self.not_empty.wait(remaining)
            item: Event = self.queue.popleft()
            if self.writer_waiting:
                self.not_full.notify()
            return item


class Subscription:
    """The events of one type (or all events) of an :class:`SSEFeed`.

    Made by :meth:`SSEFeed.subscribe`.  Python style: iterate
    (``for event in sub``) or call :meth:`get`; leaving a loop early
    (``break``, ``itertools.islice``, ``next(iter(sub))``) loses nothing: the
    next ``get()`` or iteration continues in order.  Go style: ``sub.feed``
    is a bounded :class:`queue.Queue` of :class:`~gosse.Event` objects whose
    ``get()`` raises :class:`~gosse.errors.FeedShutDown` once the
    subscription has ended and the queue is drained (``task_done()`` and
    ``join()`` work as on any queue; events received through the subscription
    count as done), and ``sub.err_feed`` a :class:`queue.Queue` that receives
    the error that ended the feed.  ``sub.done`` is a
    :class:`threading.Event` set once the subscription has ended.

    Iteration blocks for the next event.  It stops quietly when the
    subscription or the feed is closed by the user (events still queued are
    dropped) or when the stream ended in an orderly way without reconnect
    (after the queued events).  If the feed (or this subscription) ends with
    an error (HTTP 204, a non-200 or non-event-stream answer on reconnect,
    retries exhausted, a line over ``max_line_bytes`` or an event over
    ``max_event_size``, ``SubscriptionStalledError``), iteration first yields
    the events already queued, then raises that error.

    Holding a subscription keeps its feed alive.
    """

    def __init__(self, parent: SSEFeed, event_type: Optional[str], queue_size: int):
        self._parent = parent
        #: The event type this subscription receives (``None``: every event).
        self.event_type = event_type
        # (Typed as the documented Queue; the methods cast it to _FeedQueue.)
        #: Queue of the received :class:`~gosse.Event` objects.
        self.feed: queue.Queue[Event] = _FeedQueue(queue_size)
        #: Queue that receives the error that ended the feed, if one did.
        self.err_feed: queue.Queue[SSEError] = queue.Queue()
        #: Set once the subscription has ended (closed, or the feed ended).
        self.done = threading.Event()
        # Written by close() (any thread) and read by the reader; plain flags.
        self._closed = False     # closed by the user: stop at once
        self._error: Optional[SSEError] = None   # under feed.mutex

    @property
    def closed(self) -> bool:
        """True once no more events will be added (closed, or the feed ended)."""
        return self._closed or cast(_FeedQueue, self.feed).ended

    def get(self, timeout: Optional[float] = None) -> Event:
        """Return the next event, waiting up to ``timeout`` seconds (``None``:
        without limit).

        Raises :class:`queue.Empty` on timeout, the feed's error once the
        feed ended with one and the queue is drained, and
        :class:`~gosse.errors.FeedClosedError` once the subscription or feed
        is closed or ended.
        """
        event = self._take(timeout)
        if event is None:
            raise FeedClosedError("the subscription was closed" if self._closed
                                  else "the feed ended")
        return event

    def __iter__(self) -> Iterator[Event]:
        # One event per step, so what the loop did not receive stays queued.
        # The common case takes no lock: deque.popleft is atomic, the reader
        # sets writer_waiting before it looks for room (so a consumer that
        # makes room sees it), and the queue's task count is settled in
        # batches (and when the loop ends).
        q = cast(_FeedQueue, self.feed)
        items = q.queue
        popleft = items.popleft
        taken = 0
        try:
            while True:
                if items and taken < 256 and not self._closed:
                    try:
                        event = popleft()
                    except IndexError:   # another thread took it
                        continue
                    taken += 1
                    if q.writer_waiting:
                        self._notify_writer()
                    yield event
                    continue
                if taken:
                    self._settle(taken)
                    taken = 0
                event = self._take(None)
                if event is None:
                    return
                yield event
        finally:
            if taken:
                self._settle(taken)

    def _settle(self, count: int) -> None:
        q = self.feed
        with q.mutex:
            q.unfinished_tasks -= count
            if q.unfinished_tasks <= 0:
                q.unfinished_tasks = 0
                q.all_tasks_done.notify_all()

    def _notify_writer(self) -> None:
        q = self.feed
        with q.mutex:
            q.not_full.notify()

    def _take(self, timeout: Optional[float]) -> Optional[Event]:
        """The next event, counted as done; ``None`` at the (quiet) end."""
        q = cast(_FeedQueue, self.feed)
        items = q.queue
        deadline = None
        with q.mutex:
            while True:
                if self._closed:
                    return None
                if items:
                    try:
                        event: Event = items.popleft()
                    except IndexError:   # emptied by a close() in a signal handler
                        continue
                    q.unfinished_tasks -= 1
                    if q.unfinished_tasks <= 0:
                        q.unfinished_tasks = 0
                        q.all_tasks_done.notify_all()
                    if q.writer_waiting:
                        q.not_full.notify()
                    return event
                if q.ended:
                    if self._error is not None:
                        raise self._error
                    return None
                if timeout is None:
                    q.not_empty.wait()
                    continue
                if deadline is None:
                    deadline = time.monotonic() + timeout
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise queue.Empty
                q.not_empty.wait(remaining)

    def close(self) -> None:
        """Stop receiving events; iteration ends quietly and queued events are
        dropped.  Idempotent; callable from any thread."""
        self._closed = True
        self._parent._core.discard(self)
        self._end(None)

    def _end(self, error: Optional[SSEError]) -> None:
        """End this subscription (reader thread, or close()): no more events."""
        q = cast(_FeedQueue, self.feed)
        with q.mutex:
            if error is not None and not self._closed and self._error is None:
                self._error = error
                self.err_feed.put_nowait(error)
            if self._closed and q.queue:   # dropped: nobody will take them
                q.queue.clear()
                q.unfinished_tasks = 0
                q.all_tasks_done.notify_all()
            q.ended = True
            q.not_empty.notify_all()
            q.not_full.notify_all()
        self.done.set()

    def _wake(self) -> None:
        """Wake waiters (close() of the feed; may run in a signal handler)."""
        q = self.feed
        with q.mutex:   # an RLock: see _FeedQueue
            q.not_empty.notify_all()
            q.not_full.notify_all()

    def _offer(self, events: List[Event], core: _FeedCore) -> bool:
        """Queue ``events``; while the queue is full, wait (the back-pressure)
        until there is room or a close.  False if the queue stayed full for
        longer than the feed's stall_timeout (nothing more was queued)."""
        q = cast(_FeedQueue, self.feed)
        items = q.queue
        stall_timeout = core.stall_timeout
        done = 0
        full_since: Optional[float] = None
        with q.mutex:
            while done < len(events):
                if self._closed or core.closing:
                    q.writer_waiting = False
                    return True
                # Set before looking for room: a consumer that takes an event
                # without the lock (see __iter__) then knows to notify.
                q.writer_waiting = True
                room = q.maxsize - len(items)
                if room <= 0:
                    now = time.monotonic()
                    if full_since is None:
                        full_since = now
                    wait = _PUT_POLL
                    if stall_timeout is not None:
                        left = full_since + stall_timeout - now
                        if left <= 0:
                            q.writer_waiting = False
                            return False
                        wait = min(wait, left)
                    q.not_full.wait(wait)    # consumers and close() notify
                    continue
                q.writer_waiting = False
                full_since = None
                batch = events[done:done + room] if done or room < len(events) else events
                items.extend(batch)
                q.unfinished_tasks += len(batch)
                q.not_empty.notify(len(batch))
                done += len(batch)
        return True

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Subscription {self.event_type!r} {state} queued={self.feed.qsize()}>"


# -- the feed --------------------------------------------------------------------

class SSEFeed:
    """A connection to an event stream, read by one background thread.

    Made by :func:`connect_with_sse_feed` (which documents the arguments).
    Close it (or use it as a context manager); a feed that neither it nor any
    of its subscriptions is referenced any more is closed when collected.

    The reader starts reading once the feed has its first subscription, so a
    subscription made right after connecting misses nothing.  Events that
    arrive while there is no matching subscription are dropped.
    """

    def __init__(self, url: str, headers: Headers = None, *, method: str = "GET",
                 data: Any = None, json: Any = None,
                 session: Optional[requests.Session] = None,
                 connect_timeout: Optional[float] = 10.0,
                 read_timeout: Optional[float] = None, timeout: Any = _UNSET,
                 reconnect: Optional[bool] = None, max_retries: Optional[int] = None,
                 queue_size: int = 1024, stall_timeout: Optional[float] = 30.0,
                 last_event_id: str = "", retry: int = 3000, max_backoff: float = 30.0,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 max_event_size: Optional[int] = DEFAULT_MAX_EVENT_SIZE):
        # The reader thread holds only the core, never this object, so that
        # a feed nobody references can be collected (and is then closed).
        self._core = _FeedCore(url, headers, method=method, data=data, json=json,
                               session=session, connect_timeout=connect_timeout,
                               read_timeout=read_timeout, timeout=timeout,
                               reconnect=reconnect, max_retries=max_retries,
                               queue_size=queue_size, stall_timeout=stall_timeout,
                               last_event_id=last_event_id, retry=retry,
                               max_backoff=max_backoff, max_line_bytes=max_line_bytes,
                               max_event_size=max_event_size)
        #: The URL of the stream (reconnects go here, then follow redirects).
        self.url = url
        #: Set while a connection to the server is open.
        self.connected = self._core.connected
        finalizer = weakref.finalize(self, self._core.abandon)
        # typeshed's finalize declares empty __slots__ but atexit is a
        # writable attribute at run time.
        finalizer.atexit = False  # type: ignore[misc]

    @property
    def last_event_id(self) -> str:
        """The last event id received (sent as ``Last-Event-ID`` on reconnect)."""
        return self._core.last_event_id

    @property
    def retry(self) -> int:
        """The reconnection time in force, in milliseconds: the server's last
        ``retry:`` value, or the ``retry`` argument if it never sent one."""
        return self._core.retry

    @property
    def closed(self) -> bool:
        """True once the feed was closed or ended; it delivers nothing more."""
        return self._core.closing

    @property
    def error(self) -> Optional[SSEError]:
        """The error that ended the feed, if one did."""
        return self._core.error

    @property
    def response(self) -> requests.Response:
        """The ``requests.Response`` of the current (or last) connection: its
        ``status_code`` and ``headers`` (rate limits, request ids)."""
        return self._core.response

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers of the current (or last) connection."""
        return self._core.response.headers

    @property
    def _thread(self) -> threading.Thread:
        return self._core.thread

    def _backoff(self, failures: int) -> float:
        return self._core.backoff(failures)

    def subscribe(self, event_type: Optional[str] = None) -> Subscription:
        """Receive events of ``event_type`` (``None``: every event) from now on.

        Events without an ``event:`` field have the type ``"message"``.
        Raises :class:`~gosse.errors.FeedClosedError` if the feed is closed.
        """
        sub = Subscription(self, event_type, self._core.queue_size)
        self._core.add(sub)
        return sub

    def close(self) -> None:
        """Close the connection, end every subscription's iteration quietly,
        and stop the reader thread.  Idempotent; callable from any thread and
        from a signal handler (it takes no lock the interrupted code may hold
        without being reentrant).

        Returns within a second: a read blocked on the socket is interrupted
        by shutting the socket down.  Only if the reader is in the middle of a
        reconnect's HTTP request, which cannot be interrupted, does it finish
        in the background after close() returned, when that request ends.
        """
        self._core.close(join=True)

    def __enter__(self) -> SSEFeed:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closing else ("connected" if self.connected.is_set()
                                               else "reconnecting")
        return (f"<SSEFeed {core.redact.safe_url} {state} "
                f"last_event_id={core.redact(repr(core.last_event_id))}>")


class _FeedCore:
    """The state of a feed shared by its reader thread and user threads.

    Owned by the reader thread: the connection, the parser state
    (``last_event_id``, ``_server_retry``).  Guarded by ``_lock`` (an RLock,
    so that close() in a signal handler can take it): ``_subs``, ``_response``,
    ``_sock``, ``closing``.  Subscriptions are held weakly: one that nobody
    references stops receiving.
    """

    def __init__(self, url: str, headers: Headers, *, method: str, data: Any, json: Any,
                 session: Optional[requests.Session], connect_timeout: Optional[float],
                 read_timeout: Optional[float], timeout: Any, reconnect: Optional[bool],
                 max_retries: Optional[int], queue_size: int, stall_timeout: Optional[float],
                 last_event_id: str, retry: int, max_backoff: float, max_line_bytes: int,
                 max_event_size: Optional[int]):
        check_url(url)
        if data is not None and json is not None:
            raise ValueError("pass data= or json=, not both")
        if not isinstance(method, str) or not method:
            raise ValueError(f"method must be a non-empty str, not {method!r}")
        self.timeouts = request_timeouts(timeout, connect_timeout, read_timeout)
        if type(queue_size) is not int or queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, not {queue_size!r}")
        if stall_timeout is not None and (isinstance(stall_timeout, bool) or
                                          not isinstance(stall_timeout, (int, float))
                                          or stall_timeout <= 0):
            raise ValueError(f"stall_timeout must be positive or None, not {stall_timeout!r}")
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

        self.url = url
        self.redact = Redactor(url)
        self._headers = headers
        self._method = method
        self._data = data
        self._json = json
        has_body = data is not None or json is not None
        self._has_body = has_body
        if reconnect is None:
            reconnect = method.upper() == "GET" and not has_body
        self._reconnect = reconnect
        self._owns_session = session is None
        self._session = requests.Session() if session is None else session
        self._read_timeout = read_timeout if timeout is _UNSET else self.timeouts[1]
        self._max_retries = max_retries
        self.queue_size = queue_size
        self.stall_timeout = stall_timeout
        self.last_event_id = last_event_id
        self._default_retry = retry
        self._server_retry: Optional[int] = None
        self._max_backoff = max_backoff
        self._max_line_bytes = max_line_bytes
        self._max_event_size = max_event_size
        self._requests = 0
        #: The route the body reader took for the current connection (tests).
        self.body_path = ""

        self.connected = threading.Event()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)   # subscriber, close, delays
        self._subs: Tuple[weakref.ref[Subscription], ...] = ()
        self._has_subscriber = False
        self.closing = False     # set by close() and when the feed ends
        self.error: Optional[SSEError] = None
        self._response: Optional[requests.Response] = None
        self.response: requests.Response  # the last 200 response: set by _attach below
        self._sock: Optional[socket.socket] = None

        try:
            self._attach(self._open())
        except BaseException:
            if self._owns_session:
                self._session.close()
            raise
        # Not named after the URL, which may carry credentials.
        self.thread = threading.Thread(target=self._run, name="gosse-feed", daemon=True)
        self.thread.start()

    @property
    def retry(self) -> int:
        server = self._server_retry
        return self._default_retry if server is None else server

    # -- user side ---------------------------------------------------------------

    def add(self, sub: Subscription) -> None:
        with self._lock:
            if self.closing:
                raise FeedClosedError("the feed is closed") from self.error
            self._subs = self._subs + (weakref.ref(sub, self._prune),)
            self._has_subscriber = True
            self._wake.notify_all()

    def _prune(self, ref: weakref.ref[Subscription]) -> None:
        with self._lock:
            self._subs = tuple(r for r in self._subs if r is not ref)

    def discard(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(r for r in self._subs if r() is not sub)

    def close(self, join: bool) -> None:
        # Only flags, notifications and a socket shutdown here, under RLocks:
        # safe in a signal handler.  The reader ends the subscriptions.
        with self._lock:
            self.closing = True
            subs = [r() for r in self._subs]
            # Under the lock, so the reader cannot close (and the OS reuse)
            # the descriptor in between.
            self._interrupt()
            self._wake.notify_all()
        for sub in subs:
            if sub is not None:
                sub._closed = True
                sub._wake()
        if join and threading.current_thread() is not self.thread:
            self.thread.join(_JOIN_TIMEOUT)

    def abandon(self) -> None:
        """The feed object was collected without close()."""
        if not self.closing:
            log.info("closing the feed of %s: it is no longer referenced",
                     self.redact.safe_url)
            self.close(join=False)

    # -- connecting ----------------------------------------------------------------

    def _open(self) -> requests.Response:
        headers = base_headers(self._headers, self.last_event_id)
        if self._requests and self._has_body:
            log.warning("re-sending the %s request body to %s (reconnect=True)",
                        self._method, self.redact.safe_url)
        self._requests += 1
        return open_stream(self._session, self._method, self.url, headers, self._data,
                           self._json, self.timeouts, self.redact)

    def _attach(self, response: requests.Response) -> bool:
        with self._lock:
            if self.closing:
                _transport.discard_connection(response.raw)
                return False
            self._response = self.response = response
            self._sock = _transport.socket_of(response.raw)
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
            _transport.discard_connection(response.raw)

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

    def _wait(self, seconds: Optional[float]) -> bool:
        """Wait up to ``seconds`` (None: forever); True if the feed is closing."""
        with self._lock:
            return self._wake.wait_for(lambda: self.closing, seconds)

    # -- the reader thread -----------------------------------------------------------

    def _run(self) -> None:
        error: Optional[SSEError] = None
        try:
            with self._lock:
                self._wake.wait_for(lambda: self._has_subscriber or self.closing)
            while not self.closing:
                problem = self._pump()
                self._detach()
                if self.closing:
                    break
                if isinstance(problem, EventStreamError):
                    # The same bytes would come again after a reconnect.
                    error = problem
                    break
                if not self._reconnect:
                    if problem is not None:
                        error = FeedConnectionError(
                            f"the connection to {self.redact.safe_url} broke: "
                            f"{self.redact(problem)}")
                        error.__cause__ = self.redact.exception(problem)
                    break
                log.info("event stream %s %s; reconnecting in %d ms", self.redact.safe_url,
                         "ended" if problem is None else f"broke ({self.redact(problem)})",
                         self.retry)
                error = self._reconnect_loop(problem)
                if error is not None:
                    break
        except BaseException as exc:  # a bug: still release the subscribers
            if not self.closing:
                log.exception("gosse feed reader for %s failed", self.redact.safe_url)
                error = FeedError(f"the feed reader failed: {self.redact(repr(exc))}")
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
        parser = EventStreamParser(self._max_line_bytes, self.last_event_id,
                                   max_event_size=self._max_event_size)
        # The reconnection time the server set outlives its connection.
        parser.retry = self._server_retry
        try:
            self.body_path, read = _transport.body_reader(response.raw)
            while True:
                chunk = read()
                if not chunk:
                    return None
                try:
                    events = parser.feed(chunk)
                except EventStreamError as exc:
                    self._dispatch(exc.events)
                    raise
                self.last_event_id = parser.last_event_id
                if parser.retry is not None:
                    self._server_retry = parser.retry
                if events:
                    self._dispatch(events)
                    if self.closing:
                        return None
        except EventStreamError as exc:
            return exc
        except _READ_ERRORS as exc:
            return None if self.closing else exc

    def _dispatch(self, events: List[Event]) -> None:
        # Strong references to subscriptions live only in this frame.
        for ref in self._subs:
            sub = ref()
            if sub is None:
                continue
            wanted = sub.event_type
            if not sub._offer(events if wanted is None else
                              [e for e in events if e.event == wanted], self):
                self._stalled(sub)

    def _stalled(self, sub: Subscription) -> None:
        self.discard(sub)
        error = SubscriptionStalledError(
            f"the subscription to {sub.event_type or 'every event'!r} of "
            f"{self.redact.safe_url} was ended: its queue ({self.queue_size} events) "
            f"stayed full for {self.stall_timeout} s (stall_timeout)")
        log.warning("%s", error)
        sub._end(error)

    def _reconnect_loop(self, problem: Optional[BaseException]) -> Optional[SSEError]:
        """Reconnect; return ``None`` once connected (or closing), or the
        error that ends the feed."""
        delay = self.retry / 1000
        failures = 0
        last: Optional[BaseException] = problem
        while True:
            if self._max_retries is not None and failures >= self._max_retries:
                error = FeedConnectionError(
                    f"lost the stream from {self.redact.safe_url} and gave up after "
                    f"{failures} failed reconnection attempt(s) "
                    f"(max_retries={self._max_retries})"
                    + (f"; the last: {self.redact(last)}" if last is not None else ""))
                error.__cause__ = None if last is None else self.redact.exception(last)
                return error
            if self._wait(delay):
                return None
            wait: Optional[float] = None
            try:
                response = self._open()
            except ResponseError as exc:
                if exc.status_code not in RETRY_STATUSES:
                    return exc
                last = exc
                wait = retry_after(exc.headers.get("Retry-After"))
            except FeedConnectionError as exc:
                last = exc
            except FeedError as exc:  # too many redirects, an invalid header...
                return exc
            except Exception as exc:  # e.g. the headers callable failed
                last = exc
            else:
                self._attach(response)
                return None
            failures += 1
            delay = self.backoff(failures) if wait is None else max(wait, _MIN_BACKOFF_BASE)
            log.warning("reconnecting to %s failed (%s); next attempt in %.2f s",
                        self.redact.safe_url, self.redact(last), delay)

    def backoff(self, failures: int) -> float:
        """Delay before the next attempt after ``failures`` failed ones in a row:
        at least the reconnection time, doubling with each failure up to
        max_backoff, with random jitter over the upper half."""
        base = self.retry / 1000
        ceiling = min(max(base, _MIN_BACKOFF_BASE) * 2 ** min(failures, 32),
                      max(self._max_backoff, base))
        return random.uniform(max(base, ceiling / 2), ceiling)

    def _finish(self, error: Optional[SSEError]) -> None:
        with self._lock:
            self.error = error
            refs, self._subs = self._subs, ()
            self.closing = True
            self._wake.notify_all()
        if error is not None:
            log.warning("event stream %s ended: %s", self.redact.safe_url, self.redact(error))
        for ref in refs:
            sub = ref()
            if sub is not None:
                sub._end(error)
        if self._owns_session:
            self._session.close()
