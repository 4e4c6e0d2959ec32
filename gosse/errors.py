"""The gosse exception hierarchy.

Every error gosse raises on purpose is an :class:`SSEError`.  Where a built-in
exception would also be the natural thing to catch (``ValueError`` for a bad
argument, ``LookupError`` for an unknown client), the gosse error subclasses
both, so ``except ValueError`` keeps working.
"""
from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Any, List, Optional

if TYPE_CHECKING:
    from .event import Event

__all__ = [
    "SSEError",
    "EventError",
    "EventStreamError",
    "StreamingUnsupportedError",
    "UnknownClientError",
    "BrokerClosedError",
    "ConnectHookError",
    "FeedError",
    "FeedConnectionError",
    "ResponseError",
    "FeedClosedError",
    "FeedShutDown",
    "SubscriptionStalledError",
    "EventDataError",
    "InvalidURLError",
    "BackplaneError",
    "BackplaneConfigError",
    "PublishOutcomeUnknownError",
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

    events: List[Event] = []


class StreamingUnsupportedError(SSEError):
    """The WSGI server or framework cannot stream a response body."""


class UnknownClientError(SSEError, LookupError):
    """No session of this client id is connected (``Broker.send``,
    ``Broker.get_client_metadata``)."""

    def __init__(self, client_id: str):
        super().__init__(f"no session of client {client_id!r} is connected")
        self.client_id = client_id


class BrokerClosedError(SSEError):
    """The broker was closed with :meth:`~gosse.Broker.close`; it accepts no new streams."""


class ConnectHookError(SSEError, ValueError):
    """``Broker(on_connect=...)`` returned something that is neither None nor
    a valid refusal ``(status, message)`` / ``(status, message, headers)``;
    raised by :meth:`~gosse.Broker.connect` for that request."""


class FeedError(SSEError):
    """Base class of client-side (feed) errors."""


class FeedConnectionError(FeedError):
    """The feed could not connect, or its connection broke and retries were
    exhausted.  The underlying exception is in ``__cause__``."""


class ResponseError(FeedError):
    """The server answered, but not with an event stream: a status other than
    200 (204 means "stop reconnecting") or a content type other than
    ``text/event-stream``.

    ``response`` is the refused ``requests.Response`` with its body read up to
    a bound (``.response.text`` / ``.response.json()`` work), ``body`` that
    text and ``headers`` its headers; ``url`` has credentials redacted."""

    def __init__(self, message: str, *, status_code: int,
                 content_type: Optional[str] = None, url: Optional[str] = None,
                 response: Any = None, body: str = ""):
        super().__init__(message)
        self.status_code = status_code
        self.content_type = content_type
        self.url = url
        self.response = response
        self.body = body
        self.headers = {} if response is None else response.headers


class FeedClosedError(FeedError):
    """The feed or subscription was closed; nothing more will arrive."""


# Go closes a subscription's channel at the end; Python 3.13 gives queues
# shutdown() and queue.ShutDown.  Before 3.13 the closest stdlib notion of
# "nothing more will come" is EOFError.
class FeedShutDown(FeedClosedError, getattr(queue, "ShutDown", EOFError)):  # type: ignore[misc]
    """Raised by ``sub.feed.get()`` once the subscription has ended and its
    queue is drained (a ``queue.ShutDown`` on Python 3.13+, an ``EOFError``
    before), so that a Go-style ``while True: sub.feed.get()`` loop ends."""


class SubscriptionStalledError(FeedError):
    """A subscription's queue stayed full for longer than the feed's
    ``stall_timeout``: that subscription was ended so that the others go on."""


class InvalidURLError(FeedError, ValueError):
    """The feed's URL is not an ``http://`` or ``https://`` URL."""


class EventDataError(SSEError, ValueError):
    """An event's data is not what was asked of it (``Event.json()`` on data
    that is not JSON).  The parser's exception is the ``__cause__``."""


class BackplaneError(SSEError):
    """The backplane (e.g. Redis) is unreachable or refused the call: the event
    was not published to the other processes (and, unless the backplane falls
    back to local delivery, not delivered at all).  The underlying exception is in
    ``__cause__``.  Sessions already open keep streaming, and
    ``ClientConnection.send`` keeps working."""


class PublishOutcomeUnknownError(BackplaneError):
    """The publish was sent but no answer came back (a timeout, or the
    connection broke while waiting): Redis may or may not have appended the
    event, so it may be delivered.  It is not delivered locally a second
    time; publish it again only if a duplicate is acceptable."""


class BackplaneConfigError(BackplaneError, ValueError):
    """The backplane cannot work with this configuration (a wrong password,
    a user without the permissions it needs, a read-only replica, Redis
    Cluster): raised at start-up, not on every publish.  The message says
    what to change."""
