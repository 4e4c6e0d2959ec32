"""Appending events to the stream: the one code path of every writer, and
:class:`Publisher`, a writer without sessions or threads (a Celery task, a
cron job, a management command, another service)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..._redact import Redactor, redact_url
from ...errors import (
    BackplaneConfigError,
    BackplaneError,
    BrokerClosedError,
    PublishOutcomeUnknownError,
    UnknownClientError,
)
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
from .entries import APPEND, Dataset, Keys, encode_fields, new_epoch
from .ha import check_not_cluster, refuse_cluster_client, resolve

__all__ = ["Appender", "Publisher", "MIN_STREAM_LEN"]

#: The stream keeps at least this many entries: besides replay, it buffers
#: delivery for listeners that fall behind.
MIN_STREAM_LEN = 1000
#: How long after Redis lost its data a writer that does not know the
#: brokers' settings takes presence for incomplete (seconds): the brokers'
#: re-registration bound with the default ``presence_ttl`` and
#: ``max_backoff`` (see :meth:`RedisBackplane.rebuild_grace`).
DEFAULT_REBUILD_GRACE = 12.0


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

    def __init__(self, connection: Connection, keys: Keys, *, maxlen: Optional[int],
                 max_age: Optional[float], dataset: Optional[Dataset] = None) -> None:
        # maxlen None: the brokers' (what their last append recorded), and
        # then their max_age as well.
        self.connection = connection
        self.dataset = dataset if dataset is not None else Dataset(DEFAULT_REBUILD_GRACE)
        self.keys = keys
        self.maxlen = 0 if maxlen is None else maxlen
        if maxlen is None:
            self.max_age_ms = -1
        else:
            self.max_age_ms = 0 if max_age is None else max(1, int(max_age * 1000))
        self._script = connection.client.register_script(APPEND)

    def append(self, kind: str, name: Optional[str], event: Event, *, auto_id: bool,
               check_presence: bool = True) -> Optional[Tuple[bytes, bytes]]:
        """``(stream id, epoch)``, or None for a ``send`` to a client that
        is present nowhere (checked atomically with the append unless
        ``check_presence`` is False: the caller knows it is present)."""
        fields = encode_fields(kind, name, event.id, auto_id, event.encode())
        need = kind == "client" and check_presence
        presence = self.keys.presence + name if need and name else self.keys.state
        try:
            found = self.connection.run_script(
                self._script, keys=[self.keys.stream, self.keys.state, presence],
                args=[self.maxlen, self.max_age_ms, new_epoch(), 1 if need else 0,
                      *self.dataset.args(), *fields])
        except Exception as exc:
            raise self.error(kind, name, exc) from (
                exc.cause if isinstance(exc, NotSent) else exc)
        if not found:
            return None
        self.dataset.saw(found[1])
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
    """Publish to every broker of a Redis backplane group from any process
    (a Celery task, a cron job, a management command, another service),
    without sessions or threads::

        from gosse import Event
        from gosse.backplane.redis import Publisher

        with Publisher("redis://127.0.0.1:6379/0", prefix="myapp") as publisher:
            publisher.broadcast(Event("report ready", event="job"))
            publisher.send("alice", Event("your export is done"))
            publisher.publish("news", Event("headline"))

    * ``url``, ``prefix``: the brokers' Redis and
      :class:`~gosse.backplane.redis.RedisBackplane` prefix.
    * ``history`` and ``max_age``: leave them out, and every append trims
      the stream as the brokers' ``RedisBackplane`` does (the values their
      last append recorded in Redis; before any: 10,000 entries, no age
      limit).  Given, they apply instead, like a broker's: a smaller
      ``history`` here shortens the brokers' replay window.
    * ``auto_id``: an event without an id gets the group's auto id
      (``<epoch>-<stream id>``, resumable with ``Last-Event-ID`` on any
      broker), as with ``Broker(auto_id=True)``.
    * ``socket_timeout``, ``connect_timeout``, ``max_connections``,
      ``redis_options``: as for ``RedisBackplane``.
    * ``sentinels``, ``service_name``, ``sentinel_options`` and
      ``client_factory`` reach Redis as for ``RedisBackplane`` (instead of
      ``url``); a Redis Cluster is refused with
      :class:`~gosse.BackplaneConfigError`.

    Each method appends the event once and returns its id (its own, the auto
    id, or None without either); every broker's listener then delivers it to
    its matching sessions.  Errors: :class:`~gosse.errors.BackplaneError`
    when Redis cannot be reached or refuses (the event was not published),
    :class:`~gosse.errors.PublishOutcomeUnknownError` when the answer was
    lost (it may have been), :class:`~gosse.UnknownClientError` from
    ``send`` for a client connected to no broker, ``TypeError`` or
    ``ValueError`` for a bad event or name, :class:`~gosse.BrokerClosedError`
    after :meth:`close`.  Passwords in ``url`` are masked in ``repr()``,
    ``url`` and every message.

    The constructor checks the configuration: it raises
    :class:`~gosse.errors.BackplaneConfigError` for a bad URL, a wrong
    password, an ACL user lacking a command it needs or a read-only replica
    (an unreachable Redis is only logged, and the first publish after it
    returns works).  ``max_connections`` bounds the connections (callers
    wait up to ``socket_timeout`` for a free one).  One publisher may be
    shared by any number of threads and survives a fork: a child opens its
    own connections.
    """

    def __init__(self, url: Optional[str] = None, *, prefix: str = "gosse",
                 history: Optional[int] = None, max_age: Optional[float] = None,
                 auto_id: bool = True, socket_timeout: float = 5.0,
                 connect_timeout: float = 2.0,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 redis_options: Optional[Dict[str, Any]] = None,
                 sentinels: Optional[Sequence[Tuple[str, int]]] = None,
                 service_name: Optional[str] = None,
                 sentinel_options: Optional[Dict[str, Any]] = None,
                 client_factory: Optional[Callable[..., Any]] = None) -> None:
        if history is not None and (type(history) is not int or history < 0):
            raise ValueError(f"history must be None or a non-negative int, not {history!r}")
        _check_age(max_age)
        if url is not None and not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        for what, value in (("socket_timeout", socket_timeout),
                            ("connect_timeout", connect_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.auto_id = bool(auto_id)
        url, factory, label, self._watch = resolve(
            url, sentinels, service_name, sentinel_options, client_factory,
            socket_timeout=float(socket_timeout), connect_timeout=float(connect_timeout))
        try:
            self.connection = Connection(url, socket_timeout=socket_timeout,
                                         connect_timeout=connect_timeout, block=None,
                                         max_connections=max_connections,
                                         redis_options=redis_options, factory=factory,
                                         secrets=[(sentinel_options or {}).get("password")],
                                         label=label)
        except (ValueError, TypeError) as exc:   # redis-py: a bad scheme, port, option
            raise BackplaneConfigError(
                f"cannot use Redis {redact_url(url)}: {Redactor(url)(exc)}") from None
        #: The Redis URL, password masked.
        self.url = self.connection.safe_url
        # Redis Cluster refused now if Redis answers, else before the first publish.
        try:
            self._topology_known = check_not_cluster(self.connection.client,
                                                     self.connection.safe_url)
            refuse_cluster_client(self.connection.listen_client)
        except BackplaneConfigError:
            self.connection.close()
            raise
        # Fail fast on a wrong password, a missing permission, a replica.
        self.connection.check(self.keys, WRITER_COMMANDS)
        self.appender = Appender(self.connection, self.keys,
                                 maxlen=None if history is None and max_age is None
                                 else max(10_000 if history is None else history,
                                          MIN_STREAM_LEN),
                                 max_age=max_age)
        # Set once by close(), read without a lock: a publish racing close()
        # may still go out (or fail as unavailable), never half-done.
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def broadcast(self, event: Event) -> Optional[str]:
        """Deliver ``event`` to every session of every broker in the group;
        return its id."""
        return self._publish("all", None, event)

    def send(self, client_id: str, event: Event) -> Optional[str]:
        """Deliver ``event`` to every session of ``client_id``, whichever
        broker holds them; return its id.  :class:`~gosse.UnknownClientError`
        if no broker has a session of that client (nothing is published)."""
        return self._publish("client", _name("client_id", client_id), event)

    def publish(self, topic: str, event: Event) -> Optional[str]:
        """Deliver ``event`` to the sessions that joined ``topic``, on every
        broker; return its id (also when nobody listens)."""
        return self._publish("topic", _name("topic", topic), event)

    def _publish(self, kind: str, name: Optional[str], event: Event) -> Optional[str]:
        if not isinstance(event, Event):
            raise TypeError(f"expected a gosse.Event, not {type(event).__name__}")
        if self._closed:
            raise BrokerClosedError("the publisher is closed")
        if self._watch is not None:    # Sentinel: follow a failover (see ha.SentinelWatch)
            self._watch.moved(self.connection.client.connection_pool)
        if not self._topology_known:
            self._topology_known = check_not_cluster(self.connection.client,
                                                     self.connection.safe_url)
        found = self.appender.append(kind, name, event, auto_id=self.auto_id)
        if found is None:
            raise UnknownClientError(name or "")
        if event.id is not None:
            return event.id
        if self.auto_id:
            sid, epoch = found
            return f"{epoch.decode()}-{sid.decode()}"
        return None

    def close(self) -> None:
        """Close the connections; later calls raise
        :class:`~gosse.BrokerClosedError`.  Idempotent."""
        self._closed = True
        self.connection.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Publisher {self.url} prefix={self.prefix!r}{state}>"


def _name(what: str, name: str) -> str:
    """A client id or topic that can be a Redis key and a stream field."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {name!r} is not valid text (it cannot be "
                         "encoded as UTF-8)") from None
    return name


def _check_age(max_age: Optional[float]) -> None:
    if max_age is not None and (isinstance(max_age, bool)
                                or not isinstance(max_age, (int, float)) or max_age <= 0):
        raise ValueError(f"max_age must be None or a positive number of seconds, "
                         f"not {max_age!r}")
