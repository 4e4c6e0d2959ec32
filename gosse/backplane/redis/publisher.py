"""Appending events to the stream: the one code path of every writer, and
:class:`Publisher`, a writer without sessions or threads (a Celery task, a
cron job, a management command, another service)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from ...errors import BackplaneError, PublishOutcomeUnknownError, UnknownClientError
from ...event import Event
from .connection import (
    DEFAULT_MAX_CONNECTIONS,
    WRITER_COMMANDS,
    Connection,
    NotSent,
    PoolExhaustedError,
    is_outage,
    is_refusal,
    was_sent,
)
from .entries import APPEND, Keys, encode_fields, new_epoch

__all__ = ["Appender", "Publisher", "MIN_STREAM_LEN"]

#: The stream keeps at least this many entries: besides replay, it buffers
#: delivery for listeners that fall behind.
MIN_STREAM_LEN = 1000


def publish_what(kind: str, name: Optional[str]) -> str:
    """What a publish was for, in words, for an error message."""
    if kind == "client":
        return f"send the event to client {name!r}"
    if kind == "topic":
        return f"publish the event to topic {name!r}"
    return "broadcast the event"


class Appender:
    """Appends one event to the stream with :data:`~.entries.APPEND` and
    says what happened: the entry's id, "nobody" (a ``send`` to a client
    present nowhere), or one of three errors (see :mod:`.connection`)."""

    def __init__(self, connection: Connection, keys: Keys, *, maxlen: int,
                 max_age: Optional[float]) -> None:
        self.connection = connection
        self.keys = keys
        self.maxlen = maxlen
        self.max_age_ms = 0 if max_age is None else max(1, int(max_age * 1000))
        self._script = connection.client.register_script(APPEND)

    def append(self, kind: str, name: Optional[str], event: Event, *,
               auto_id: bool) -> Optional[Tuple[bytes, bytes]]:
        """``(stream id, epoch)``, or None for a ``send`` nobody can receive."""
        fields = encode_fields(kind, name, event.id, auto_id, event.encode())
        presence = self.keys.presence + name if kind == "client" and name else self.keys.state
        try:
            found = self.connection.run_script(
                self._script, keys=[self.keys.stream, self.keys.state, presence],
                args=[self.maxlen, self.max_age_ms, new_epoch(),
                      1 if kind == "client" else 0, *fields])
        except Exception as exc:
            raise self.error(kind, name, exc) from (
                exc.cause if isinstance(exc, NotSent) else exc)
        if not found:
            return None
        return found[0], found[1]

    def error(self, kind: str, name: Optional[str], exc: BaseException) -> BackplaneError:
        """The gosse error for ``exc``, raised by :meth:`append`: a refusal
        (Redis said why), an unknown outcome (sent, no answer), a busy pool,
        or Redis unavailable (certainly not published)."""
        conn = self.connection
        what = publish_what(kind, name)
        cause = exc.cause if isinstance(exc, NotSent) else exc
        if is_refusal(cause):
            return BackplaneError(f"Redis {conn.safe_url} refused to {what}: "
                                  f"{conn.describe(cause)}")
        if isinstance(cause, PoolExhaustedError):
            return BackplaneError(f"could not {what}: {conn.redact(cause)}")
        if was_sent(exc) and is_outage(cause):
            return PublishOutcomeUnknownError(
                f"Redis {conn.safe_url} did not answer: it may or may not have "
                f"accepted the request to {what} ({conn.describe(cause)}); publish it "
                "again only if a duplicate is acceptable")
        if not is_outage(cause):   # not a Redis error: a bug or an odd reply
            return BackplaneError(f"Redis {conn.safe_url}: could not {what}: "
                                  f"{conn.describe(cause)}")
        return BackplaneError(f"Redis {conn.safe_url} unavailable, could not {what}: "
                              f"{conn.describe(cause)}")


class Publisher:
    """Publish to every broker of a Redis backplane group from any process,
    without sessions or threads::

        from gosse import Event
        from gosse.backplane.redis import Publisher

        publisher = Publisher("redis://127.0.0.1:6379/0")
        publisher.broadcast(Event("report ready", event="job"))
        publisher.send("alice", Event("your export is done"))
        publisher.publish("news", Event("headline"))

    ``prefix``, ``history`` and ``max_age`` must match the brokers'
    :class:`~gosse.backplane.redis.RedisBackplane`; ``auto_id`` gives an
    event without an id the group's auto id (resumable with
    ``Last-Event-ID``).  Each method returns the event's id (its own, or the
    auto id; None without one) and raises
    :class:`~gosse.errors.BackplaneError` when Redis cannot be reached or
    refuses, :class:`~gosse.errors.PublishOutcomeUnknownError` when the
    answer was lost, and ``send`` raises :class:`~gosse.UnknownClientError`
    for a client connected nowhere.  The constructor raises
    :class:`~gosse.errors.BackplaneConfigError` for a wrong password, an
    ACL user lacking a command it needs or a read-only replica (an
    unreachable Redis is only logged).  ``max_connections`` bounds the
    connections (callers wait up to ``socket_timeout`` for a free one).
    Thread-safe; ``close()`` releases the connections.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "gosse",
                 history: int = 10_000, max_age: Optional[float] = None,
                 auto_id: bool = True, socket_timeout: float = 5.0,
                 connect_timeout: float = 2.0,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 redis_options: Optional[Dict[str, Any]] = None) -> None:
        if type(history) is not int or history < 0:
            raise ValueError(f"history must be a non-negative int, not {history!r}")
        _check_age(max_age)
        self.url = url
        self.prefix = prefix
        self.auto_id = bool(auto_id)
        self.connection = Connection(url, socket_timeout=socket_timeout,
                                     connect_timeout=connect_timeout, block=None,
                                     max_connections=max_connections,
                                     redis_options=redis_options)
        self.keys = Keys(prefix)
        # Fail fast on a wrong password, a missing permission, a replica.
        self.connection.check(self.keys, WRITER_COMMANDS)
        self.appender = Appender(self.connection, self.keys,
                                 maxlen=max(history, MIN_STREAM_LEN), max_age=max_age)

    def broadcast(self, event: Event) -> Optional[str]:
        """Deliver ``event`` to every session of every broker in the group."""
        return self._publish("all", None, event)

    def send(self, client_id: str, event: Event) -> Optional[str]:
        """Deliver ``event`` to every session of ``client_id``, wherever it is."""
        return self._publish("client", client_id, event)

    def publish(self, topic: str, event: Event) -> Optional[str]:
        """Deliver ``event`` to the sessions that joined ``topic``."""
        return self._publish("topic", topic, event)

    def _publish(self, kind: str, name: Optional[str], event: Event) -> Optional[str]:
        if not isinstance(event, Event):
            raise TypeError(f"expected a gosse.Event, not {type(event).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{kind} must be a str, not {type(name).__name__}")
        found = self.appender.append(kind, name, event, auto_id=self.auto_id)
        if found is None:
            raise UnknownClientError(cast_str(name))
        if event.id is not None:
            return event.id
        if self.auto_id:
            sid, epoch = found
            return f"{epoch.decode()}-{sid.decode()}"
        return None

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Publisher {self.connection.safe_url} prefix={self.prefix!r}>"


def cast_str(name: Optional[str]) -> str:
    return "" if name is None else name


def _check_age(max_age: Optional[float]) -> None:
    if max_age is not None and (isinstance(max_age, bool)
                                or not isinstance(max_age, (int, float)) or max_age <= 0):
        raise ValueError(f"max_age must be None or a positive number of seconds, "
                         f"not {max_age!r}")
