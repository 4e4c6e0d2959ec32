"""One request, read in the caller's thread: LLM and API streams.

::

    import gosse

    with gosse.stream("https://api.example/v1/chat/completions", method="POST",
                      json={"model": "m", "messages": [...], "stream": True},
                      headers={"Authorization": "Bearer ..."}) as events:
        print(events.response.headers.get("x-request-id"))
        for event in events:
            if event.data == "[DONE]":
                break
            print(event.json()["choices"][0]["delta"].get("content", ""), end="")

    for event in gosse.iter_events(requests.get(url, stream=True)):  # your response
        ...

No thread, no reconnect: the events are parsed as the caller iterates, with
the same parser, body reader, bounds and errors as
:func:`~gosse.connect_with_sse_feed`.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import requests

from . import _transport
from ._redact import Redactor
from .client import (
    _READ_ERRORS,
    _UNSET,
    Headers,
    base_headers,
    check_response,
    check_url,
    open_stream,
    request_timeouts,
)
from .errors import EventStreamError, FeedConnectionError
from .event import Event
from .parser import DEFAULT_MAX_EVENT_SIZE, DEFAULT_MAX_LINE_BYTES, EventStreamParser

__all__ = ["stream", "iter_events", "EventStream"]


def stream(url: str, *, method: str = "GET", headers: Headers = None, data: Any = None,
           json: Any = None, session: Optional[requests.Session] = None,
           connect_timeout: Optional[float] = 10.0, read_timeout: Optional[float] = None,
           timeout: Any = _UNSET, last_event_id: str = "",
           max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
           max_event_size: Optional[int] = DEFAULT_MAX_EVENT_SIZE) -> EventStream:
    """Make one request and return an :class:`EventStream` over its events.

    Raises, before returning, what :func:`~gosse.connect_with_sse_feed` raises
    for the first connect: :class:`~gosse.errors.FeedConnectionError` (network),
    :class:`~gosse.errors.ResponseError` for a status other than 200 or a type
    other than ``text/event-stream`` (``.response`` and ``.body`` hold the
    server's answer, e.g. an API's JSON error), ``InvalidURLError``.
    ``connect_timeout``, ``read_timeout`` (also the wait for the response
    headers) and ``timeout`` are as for ``connect_with_sse_feed``.  Use it as a
    context manager: leaving the block closes the response.
    """
    check_url(url)
    if data is not None and json is not None:
        raise ValueError("pass data= or json=, not both")
    timeouts = request_timeouts(timeout, connect_timeout, read_timeout)
    EventStreamParser(max_line_bytes, max_event_size=max_event_size)   # checks the bounds
    redact = Redactor(url)
    own = session is None
    session = requests.Session() if session is None else session
    try:
        response = open_stream(session, method, url, base_headers(headers, last_event_id),
                               data, json, timeouts, redact)
    except BaseException:
        if own:
            session.close()
        raise
    return EventStream(response, redact, max_line_bytes, max_event_size,
                       session=session if own else None)


def iter_events(response: requests.Response, *, check: bool = True,
                max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                max_event_size: Optional[int] = DEFAULT_MAX_EVENT_SIZE) -> Iterator[Event]:
    """The events of a ``requests.Response`` you made (``stream=True``), parsed
    as you iterate.  With ``check`` (default) a status other than 200 or a type
    other than ``text/event-stream`` raises :class:`~gosse.errors.ResponseError`
    first.  The response is closed when the iteration ends."""
    events = EventStream(response, Redactor(response.url or ""), max_line_bytes,
                         max_event_size, check=check)
    try:
        yield from events
    finally:
        events.close()


class EventStream:
    """The events of one response (see :func:`stream`): iterate it once.

    ``response`` is the ``requests.Response`` (status, headers).  A broken
    connection raises :class:`~gosse.errors.FeedConnectionError`, a line or
    event over the bounds :class:`~gosse.errors.EventStreamError`; an orderly
    end of the body ends the iteration.
    """

    def __init__(self, response: requests.Response, redact: Redactor, max_line_bytes: int,
                 max_event_size: Optional[int], *, check: bool = True,
                 session: Optional[requests.Session] = None):
        #: The ``requests.Response`` being read.
        self.response = response
        self._redact = redact
        self._session = session
        self._parser = EventStreamParser(max_line_bytes, max_event_size=max_event_size)
        self._started = False
        if check:
            try:
                check_response(response, redact)
            except BaseException:
                self.close()
                raise

    @property
    def last_event_id(self) -> str:
        """The last event id received."""
        return self._parser.last_event_id

    def __iter__(self) -> Iterator[Event]:
        if self._started:
            raise RuntimeError("an EventStream can be iterated only once")
        self._started = True
        response = self.response
        # requests' private flag (not in its stubs): read already (stream=False)?
        if response._content_consumed:  # type: ignore[attr-defined]
            reads = iter([response.content, b""])
            read = reads.__next__
        else:
            _path, read = _transport.body_reader(response.raw)
        parser = self._parser
        try:
            while True:
                try:
                    chunk = read()
                except _READ_ERRORS as exc:
                    raise FeedConnectionError(
                        f"the connection to {self._redact.safe_url} broke: "
                        f"{self._redact(exc)}") from self._redact.exception(exc)
                if not chunk:
                    return
                try:
                    events = parser.feed(chunk)
                except EventStreamError as exc:
                    yield from exc.events
                    raise
                yield from events
        finally:
            self.close()

    def close(self) -> None:
        """Close the response (and the session this stream made).  Idempotent."""
        _transport.discard_connection(self.response.raw)
        self.response.close()
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EventStream {self._redact.safe_url} status={self.response.status_code}>"
