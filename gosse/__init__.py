"""gosse: Server-Sent Events for synchronous, thread-based Python."""
from .broker import Broker, ClientConnection, Refusal
from .client import SSEFeed, Subscription, connect_with_sse_feed
from .errors import (
    BackplaneConfigError,
    BackplaneError,
    BrokerClosedError,
    ConnectHookError,
    EventDataError,
    EventError,
    EventStreamError,
    FeedClosedError,
    FeedConnectionError,
    FeedError,
    FeedShutDown,
    InvalidURLError,
    PublishOutcomeUnknownError,
    ResponseError,
    SSEError,
    StreamingUnsupportedError,
    SubscriptionStalledError,
    UnknownClientError,
)
from .event import Event, JSONEvent
from .oneshot import EventStream, iter_events, stream
from .parser import EventStreamParser

__version__ = "0.2.0"

__all__ = [
    "Broker", "ClientConnection", "Refusal",
    "connect_with_sse_feed", "SSEFeed", "Subscription",
    "Event", "JSONEvent", "EventStreamParser",
    "SSEError", "EventError", "EventStreamError", "StreamingUnsupportedError",
    "UnknownClientError", "BrokerClosedError", "ConnectHookError",
    "FeedError", "FeedConnectionError", "ResponseError", "FeedClosedError",
    "BackplaneError", "BackplaneConfigError", "PublishOutcomeUnknownError",
    "stream", "iter_events", "EventStream",
    "EventDataError", "FeedShutDown", "InvalidURLError", "SubscriptionStalledError",
]
