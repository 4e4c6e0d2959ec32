"""The gosse exception hierarchy.

Every error gosse raises on purpose is an :class:`SSEError`.  Where a built-in
exception would also be the natural thing to catch (``ValueError`` for a bad
argument, ``LookupError`` for an unknown client), the gosse error subclasses
both, so ``except ValueError`` keeps working.
"""
from __future__ import annotations

from typing import Optional

__all__ = [
    "SSEError",
    "EventError",
    "EventStreamError",
    "StreamingUnsupportedError",
    "UnknownClientError",
    "BrokerClosedError",
    "SessionLimitError",
    "ConnectHookError",
    "FeedError",
    "FeedConnectionError",
    "ResponseError",
    "FeedClosedError",
    "BackplaneError",
]


class SSEError(Exception):
    """Base class of every error raised by gosse."""


class EventError(SSEError, ValueError):
    """An :class:`~gosse.Event` was built from values that cannot go on the wire
    (for example a negative or non-integer ``retry``, or ``data`` that is not a
    string)."""


class EventStreamError(SSEError):
    """The incoming byte stream broke a limit of the parser (a line longer than
    ``max_line_bytes``, an event's data larger than ``max_event_size``).  The
    parser that raised it should be discarded.
    ``events`` holds the events the same chunk completed before the error."""

    events: list = []


class StreamingUnsupportedError(SSEError):
    """The WSGI server or framework cannot stream a response body."""


class UnknownClientError(SSEError, LookupError):
    """No session of this client id is connected (``Broker.send``,
    ``Broker.get_client_metadata``)."""

    def __init__(self, client_id: str):
        super().__init__(f"no session of client {client_id!r} is connected")
        self.client_id = client_id


class BrokerClosedError(SSEError):
    """The broker was closed with :meth:`Broker.close`; it accepts no new streams."""


class SessionLimitError(SSEError):
    """A session cap (broker-wide or per client) would be exceeded."""


class ConnectHookError(SSEError, ValueError):
    """``Broker(on_connect=...)`` returned something that is neither None nor
    a valid refusal ``(status, message)`` / ``(status, message, headers)``;
    raised by :meth:`Broker.connect` for that request."""


class FeedError(SSEError):
    """Base class of client-side (feed) errors."""


class FeedConnectionError(FeedError):
    """The feed could not connect, or its connection broke and retries were
    exhausted.  The underlying exception is in ``__cause__``."""


class ResponseError(FeedError):
    """The server answered, but not with an event stream: a status other than
    200 (204 means "stop reconnecting") or a content type other than
    ``text/event-stream``."""

    def __init__(self, message: str, *, status_code: int,
                 content_type: Optional[str] = None, url: Optional[str] = None):
        super().__init__(message)
        self.status_code = status_code
        self.content_type = content_type
        self.url = url


class FeedClosedError(FeedError):
    """The feed or subscription was closed; nothing more will arrive."""


class BackplaneError(SSEError):
    """The backplane (e.g. Redis) is unreachable or failed: the event was not
    published to the other processes (and, unless the backplane falls back to
    local delivery, not delivered at all).  The underlying exception is in
    ``__cause__``.  Sessions already open keep streaming, and
    ``ClientConnection.send`` keeps working."""
