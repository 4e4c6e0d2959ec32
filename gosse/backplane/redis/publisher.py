"""Appending events to the stream: the one code path of every writer, and
:class:`Publisher`, a writer without sessions or threads (a Celery task, a
cron job, a management command, another service)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ...errors import (
    BackplaneConfigError,
    BackplaneError,
    PublishOutcomeUnknownError,
    UnknownClientError,
)
from ...event import Event
from .connection import OUTAGES, Connection, is_refusal, was_sent
from .entries import APPEND, Keys, encode_fields, new_epoch
from .ha import check_not_cluster, refuse_cluster_client, resolve

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
            found = self._script(
                keys=[self.keys.stream, self.keys.state, presence],
                args=[self.maxlen, self.max_age_ms, new_epoch(),
                      1 if kind == "client" else 0, *fields])
        except Exception as exc:
            raise self.error(kind, name, exc) from exc
        if not found:
            return None
        return found[0], found[1]

    def error(self, kind: str, name: Optional[str], exc: BaseException) -> BackplaneError:
        conn = self.connection
        what = publish_what(kind, name)
        if is_refusal(exc):
            return BackplaneError(f"Redis {conn.safe_url} refused to {what}: "
                                  f"{conn.describe(exc)}")
        if isinstance(exc, OUTAGES) and was_sent(exc):
            return PublishOutcomeUnknownError(
                f"Redis {conn.safe_url} did not answer: it may or may not have "
                f"accepted the request to {what} ({conn.describe(exc)}); publish it "
                "again only if a duplicate is acceptable")
        return BackplaneError(f"Redis {conn.safe_url} unavailable, could not {what}: "
                              f"{conn.describe(exc)}")


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
    for a client connected nowhere.  Thread-safe; ``close()`` releases the
    connections.

    ``sentinels``, ``service_name``, ``sentinel_options`` and
    ``client_factory`` reach Redis as for
    :class:`~gosse.backplane.redis.RedisBackplane` (instead of ``url``); a
    Redis Cluster is refused with :class:`~gosse.BackplaneConfigError`.
    """

    def __init__(self, url: Optional[str] = None, *, prefix: str = "gosse",
                 history: int = 10_000, max_age: Optional[float] = None,
                 auto_id: bool = True, socket_timeout: float = 5.0,
                 connect_timeout: float = 2.0,
                 redis_options: Optional[Dict[str, Any]] = None,
                 sentinels: Optional[Sequence[Tuple[str, int]]] = None,
                 service_name: Optional[str] = None,
                 sentinel_options: Optional[Dict[str, Any]] = None,
                 client_factory: Optional[Callable[..., Any]] = None) -> None:
        if type(history) is not int or history < 0:
            raise ValueError(f"history must be a non-negative int, not {history!r}")
        _check_age(max_age)
        url, factory, label, self._watch = resolve(
            url, sentinels, service_name, sentinel_options, client_factory,
            socket_timeout=float(socket_timeout), connect_timeout=float(connect_timeout))
        self.url = url
        self.prefix = prefix
        self.auto_id = bool(auto_id)
        self.connection = Connection(url, socket_timeout=socket_timeout,
                                     connect_timeout=connect_timeout, block=None,
                                     redis_options=redis_options, factory=factory,
                                     label=label)
        # Redis Cluster refused now if Redis answers, else before the first publish.
        try:
            self._topology_known = check_not_cluster(self.connection.client,
                                                     self.connection.safe_url)
            refuse_cluster_client(self.connection.listen_client)
        except BackplaneConfigError:
            self.connection.close()
            raise
        self.keys = Keys(prefix)
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
        if self._watch is not None:    # Sentinel: follow a failover (see ha.SentinelWatch)
            self._watch.moved(self.connection.client.connection_pool)
        if not self._topology_known:
            self._topology_known = check_not_cluster(self.connection.client,
                                                     self.connection.safe_url)
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
