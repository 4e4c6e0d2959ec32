"""A backplane through Redis: many processes (gunicorn workers, hosts), one
stream of events.

::

    from gosse import Broker
    from gosse.backplane.redis import RedisBackplane

    broker = Broker(auto_id=True, backplane=RedisBackplane("redis://127.0.0.1:6379/0"))

How it works
------------

* **Delivery.**  ``broadcast``, ``send`` and ``publish`` append the event
  (already encoded, with its target) to one Redis Stream,
  ``<prefix>:events``, bounded by ``history`` (``MAXLEN ~``) and optionally
  ``max_age`` (``MINID ~``).  Each process runs one listener thread that
  reads that stream with ``XREAD BLOCK`` and delivers each batch to its own
  matching sessions (``listener``): every session everywhere sees events
  in one order.
* **Nothing skipped silently.**  Every entry carries its dataset's epoch and
  a sequence number.  A listener that finds entries missing (it fell behind
  by more than the stream's length, Redis restarted empty or failed over)
  sends ``gosse-reset`` to its streams, counts it (``stats()``:
  ``backplane_gaps``, ``backplane_resets``) and logs it.
* **Ids and replay.**  With ``Broker(auto_id=True)`` an event without an id
  gets ``<epoch>-<stream id>``, globally ordered, never reused by another
  dataset.  A session connecting with ``Last-Event-ID`` gets the entries
  after that id that it may see (``replay``), read page by page outside
  the broker's lock and bounded by the session's ``queue_size`` and
  ``queue_bytes``, queued atomically with live delivery: no duplicate, no
  gap, whichever process it reconnects to.  Beyond the bounds, or for an id
  not in the stream, the session gets ``gosse-reset``.
* **Presence and metadata** (``presence``): a client is present while
  any process holds a session of it, refreshed by one heartbeat thread per
  process every ``presence_ttl / 3`` seconds.  After Redis lost its data,
  each process restores its clients' presence and metadata; until all had
  the time to (:attr:`RedisBackplane.rebuild_grace`), nobody is declared
  absent (a ``send`` is appended, a lookup waits, then raises
  :class:`~gosse.errors.BackplaneError`).
* **Faults** (``connection``).  If Redis goes away, open sessions keep
  streaming, new sessions are accepted (a ``Last-Event-ID`` that cannot be
  resolved gets ``gosse-reset``), and ``broadcast``/``send``/``publish``/
  presence/metadata raise :class:`~gosse.errors.BackplaneError` (or, with
  ``fallback="local"``, events are delivered to this process's sessions
  only).  A publish whose answer was lost raises
  :class:`~gosse.errors.PublishOutcomeUnknownError` and is never delivered
  a second time.  The listener retries with jittered exponential backoff;
  each transition is logged once (logger ``gosse.backplane``).

Needs Redis 5 or later (``max_age``: 6.2), ``pip install gosse[redis]``.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

try:
    import redis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("gosse.backplane.redis needs the redis package: "
                      "pip install 'gosse[redis]'") from exc

from redis.exceptions import ResponseError

from ...errors import (
    BackplaneConfigError,
    BackplaneError,
    BrokerClosedError,
    PublishOutcomeUnknownError,
    UnknownClientError,
)
from ...event import Event, reset_event
from .. import Backplane
from .connection import (
    BROKER_COMMANDS,
    DEFAULT_MAX_CONNECTIONS,
    OUTAGES,
    Connection,
    PoolExhaustedError,
    is_outage,
    is_refusal,
)
from .entries import Dataset, Keys
from .ha import check_not_cluster, refuse_cluster_client, resolve
from .listener import Listener
from .presence import Presence
from .publisher import MIN_STREAM_LEN, Appender, Publisher, _check_age
from .replay import Replay

__all__ = ["RedisBackplane", "Publisher"]

log = logging.getLogger("gosse.backplane")

# What the listener retries after (with backoff): outages, and refusals such
# as UNBLOCKED (the server became a replica) or NOPERM, which _set_down logs
# without marking the backplane down.
LISTENER_ERRORS = OUTAGES + (ResponseError,)

_instances: weakref.WeakSet[RedisBackplane] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by a thread of the parent at fork time stays held in the
    # child, where that thread does not exist.  These are renewed rather
    # than taken before the fork (as gosse.broker does for the broker's):
    # what they guard is rebuilt in the child (_reset_process_state, a new
    # Presence with its own lock), and the heartbeat holds the presence lock
    # across Redis calls, which a fork must not wait for.
    for backplane in list(_instances):
        backplane._start_lock = threading.Lock()
        backplane._state_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RedisBackplane(Backplane):
    """Share a broker's events, presence, metadata and replay history with
    every other broker on the same Redis (other gunicorn workers, hosts).

    * ``url``: the Redis server (``redis://[:password@]host:port/db``,
      ``rediss://``, ``unix://``).
    * ``prefix``: key prefix; brokers with the same prefix form one group.
    * ``history``: stream entries kept for ``Last-Event-ID`` replay
      (``MAXLEN ~``); 0 turns replay off (the stream still keeps the last
      1,000 entries so a lagging listener catches up).
    * ``max_age``: seconds an entry is kept at most (``MINID ~``, Redis 6.2),
      or None: the replay window by time, while ``history`` bounds memory.
    * ``presence_ttl``: seconds after which the clients of a process that
      died without saying so stop being present (refreshed every third of it).
    * ``block``: seconds one ``XREAD BLOCK`` waits; ``socket_timeout`` and
      ``connect_timeout`` bound every other call.
    * ``max_backoff``: cap of the listener's reconnection delay (seconds).
    * ``batch``: entries the listener reads and delivers at once.
    * ``serializer``: an object with ``dumps``/``loads`` for client metadata
      (``json`` by default: a value that would not come back equal, such as
      a tuple or a dict with int keys, is refused with a TypeError;
      ``pickle`` allows any value but trusts whoever can write to Redis).
    * ``max_metadata_bytes``: the most one client's serialised metadata may
      take (ValueError beyond).
    * ``fallback``: ``None`` (publishing raises :class:`~gosse.errors.BackplaneError` while
      Redis is unreachable) or ``"local"`` (deliver to this process's
      sessions only, not resumable, and log it).
    * ``max_connections``: connections to Redis per process (a blocking
      pool: a caller waits up to ``socket_timeout`` for a free one, then
      gets a :class:`~gosse.errors.BackplaneError` naming this option).
    * ``redis_options``: extra keyword arguments for the connections
      (``redis.BlockingConnectionPool.from_url``; or for the master's
      clients with ``sentinels``, or for ``client_factory``).
    * ``sentinels`` and ``service_name``: instead of ``url``, a master and
      replicas managed by Redis Sentinel (``[(host, port), ...]`` of the
      sentinels, the name they monitor the master under); every connection,
      the listener's included, goes to the current master, through
      failovers.  ``sentinel_options``: keyword arguments for the
      connections to the sentinels (e.g. ``password``).
    * ``client_factory``: instead of ``url``, a callable making the
      ``redis.Redis`` clients; it is called twice (commands, and the
      listener's own connection) with keyword arguments gosse needs
      (``socket_timeout``, ``max_connections``, ...), to pass on.

    The constructor checks, without writing anything, that Redis accepts
    the credentials, that the ACL user may run what the backplane needs and
    that the server is a writable master; if not it raises
    :class:`~gosse.errors.BackplaneConfigError` saying what to change.  An
    unreachable Redis is only logged: the backplane works once it is back.

    A Redis Cluster (``cluster_enabled:1``, or a ``RedisCluster`` from
    ``client_factory``) is refused with
    :class:`~gosse.BackplaneConfigError`: the backplane is one stream
    in one order, which a cluster cannot hold.

    One instance serves one :class:`~gosse.Broker`; ``Broker.close()``
    closes it.  Its two threads (listener and heartbeat) start on first use
    in each process, so an app imported before gunicorn forks works.
    """

    shared = True

    def __init__(self, url: Optional[str] = None, *, prefix: str = "gosse",
                 history: int = 10_000, max_age: Optional[float] = None,
                 presence_ttl: float = 30.0, block: float = 1.0,
                 socket_timeout: float = 5.0, connect_timeout: float = 2.0,
                 max_backoff: float = 5.0, batch: int = 512, serializer: Any = json,
                 max_metadata_bytes: int = 64 * 1024, fallback: Optional[str] = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 redis_options: Optional[Dict[str, Any]] = None,
                 sentinels: Optional[Sequence[Tuple[str, int]]] = None,
                 service_name: Optional[str] = None,
                 sentinel_options: Optional[Dict[str, Any]] = None,
                 client_factory: Optional[Callable[..., Any]] = None):
        super().__init__()
        if type(history) is not int or history < 0:
            raise ValueError(f"history must be a non-negative int, not {history!r}")
        _check_age(max_age)
        for name, value in (("presence_ttl", presence_ttl), ("block", block),
                            ("socket_timeout", socket_timeout),
                            ("connect_timeout", connect_timeout),
                            ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if type(batch) is not int or batch < 1:
            raise ValueError(f"batch must be a positive int, not {batch!r}")
        if fallback not in (None, "local"):
            raise ValueError(f"fallback must be None or 'local', not {fallback!r}")
        if not (hasattr(serializer, "dumps") and hasattr(serializer, "loads")):
            raise TypeError("serializer must have dumps() and loads() (e.g. json, pickle)")
        if type(max_metadata_bytes) is not int or max_metadata_bytes < 1:
            raise ValueError("max_metadata_bytes must be a positive int, "
                             f"not {max_metadata_bytes!r}")
        url, factory, label, self._watch = resolve(
            url, sentinels, service_name, sentinel_options, client_factory,
            socket_timeout=float(socket_timeout), connect_timeout=float(connect_timeout))
        self.url = url
        self.prefix = prefix
        self.history = history
        self.max_age = max_age
        self.maxlen = max(history, MIN_STREAM_LEN)
        self.presence_ttl = float(presence_ttl)
        self.block = float(block)
        self.max_backoff = float(max_backoff)
        self.batch = batch
        self.serializer = serializer
        self.max_metadata_bytes = max_metadata_bytes
        self.fallback = fallback
        self._socket_timeout = float(socket_timeout)
        self._keys = Keys(prefix)
        self._connection = Connection(url, socket_timeout=socket_timeout,
                                      connect_timeout=connect_timeout, block=self.block,
                                      max_connections=max_connections,
                                      redis_options=redis_options, factory=factory,
                                      secrets=[(sentinel_options or {}).get("password")],
                                      label=label)
        # Redis Cluster refused now if Redis answers, else before the first publish.
        try:
            self._topology_known = check_not_cluster(self._connection.client,
                                                     self._connection.safe_url)
            refuse_cluster_client(self._connection.listen_client)
        except BackplaneConfigError:
            self._connection.close()
            raise
        # What this process knows of the dataset (see Dataset): shared by the
        # appends and the presence lookups; a new one wakes the heartbeat.
        self._dataset = Dataset(self.rebuild_grace, on_new=lambda: self._hb_wake.set())
        self._appender = Appender(self._connection, self._keys, maxlen=self.maxlen,
                                  max_age=max_age, dataset=self._dataset)
        # Fail fast on a configuration error (BackplaneConfigError), not on
        # every publish; an outage is logged and the backplane goes on.
        self._last_refusal_log = 0.0   # monotonic time of the last refusal log line
        self._connection.check(self._keys, BROKER_COMMANDS)
        self._start_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self._started_pid: Optional[int] = None
        self._reset_process_state()
        _instances.add(self)

    def _reset_process_state(self) -> None:
        """Per-process state: fresh in each process that uses the backplane
        (a fork copies the parent's, with threads that do not exist)."""
        self._stop = threading.Event()
        self._hb_wake = threading.Event()
        self._up = True              # written under _state_lock
        self._listener: Optional[Listener] = None
        self._presence: Optional[Presence] = None
        self._replay: Optional[Replay] = None
        self._heartbeat_thread: Optional[threading.Thread] = None
        self._node = uuid.uuid4().hex
        self._publish_errors = 0
        self._publish_unknown = 0

    # -- lifecycle ---------------------------------------------------------

    def _ensure_started(self) -> None:
        pid = os.getpid()
        if self._started_pid == pid:
            return
        with self._start_lock:
            if self._started_pid == pid or self._closed:
                return
            if self._started_pid is not None:   # forked: the parent's threads are not here
                self._reset_process_state()
            broker = self._bound()
            conn = self._connection
            listener = Listener(broker, conn, self._keys, block=self.block,
                                batch=self.batch, max_backoff=self.max_backoff,
                                errors=LISTENER_ERRORS, on_up=self._on_read,
                                on_down=self._set_down)
            listener.uids_cap = self.maxlen + self.maxlen // 10 + 1000
            self._listener = listener
            self._presence = Presence(conn.client, self._keys, self._node, self.presence_ttl,
                                      broker.local_clients, broker.has_local_client,
                                      self._dataset, wait=self._socket_timeout)
            self._replay = Replay(broker, conn.client, self._keys, listener,
                                  maxlen=self.maxlen, wait=self._socket_timeout)
            self._heartbeat_thread = threading.Thread(target=self._heartbeat,
                                                      name="gosse-redis-heartbeat",
                                                      daemon=True)
            listener.start()
            self._heartbeat_thread.start()
            # The first session must not register before the listener knows
            # where it starts: it would start after what is published
            # meanwhile (bounded: `ready` is also set by a failed attempt).
            listener.ready.wait(self._socket_timeout)
            self._started_pid = pid

    @property
    def rebuild_grace(self) -> float:
        """Seconds after Redis lost its data (restart, flush, failover)
        within which every live process has re-registered its clients: the
        heartbeat interval, or the reconnection delay (``max_backoff`` plus
        one ``block``) if longer, plus a second.  Until then a lookup
        that finds nobody is not trusted."""
        return max(self.presence_ttl / 3.0, self.max_backoff + self.block) + 1.0

    @property
    def available(self) -> bool:
        """Whether Redis answered the last call (False after a failure, until
        a call succeeds again)."""
        return self._up

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 2.0) -> None:
        """Stop the listener and heartbeat threads (joined, within about
        ``timeout`` seconds), withdraw this process's presence, close the
        connections.  Called by ``Broker.close()``; idempotent."""
        import time
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            started = self._started_pid == os.getpid()
        self._stop.set()
        self._hb_wake.set()
        listener = self._listener
        if started and listener is not None:
            listener.stop.set()
            # Interrupt a blocked XREAD now rather than after `block` s.  Once
            # may not do: a listener between two calls opens a new connection
            # and blocks again, so disconnect until it has stopped.
            deadline = time.monotonic() + timeout
            for t in (listener.thread, self._heartbeat_thread):
                while t is not None and t.is_alive() and time.monotonic() < deadline:
                    self._connection.interrupt_listener()
                    t.join(0.1)
            broker = self._broker
            presence = self._presence
            if broker is not None and presence is not None and self._up:
                with presence.lock:
                    gone = set(broker.local_clients()) | presence.pending_leave
                try:
                    presence.withdraw(sorted(gone))
                except Exception as exc:
                    log.debug("could not withdraw presence on close: %s",
                              self._connection.describe(exc))
        self._connection.close()

    # -- state transitions ---------------------------------------------------

    def _set_down(self, exc: BaseException) -> None:
        if not is_outage(exc):
            # Redis answered (WRONGPASS, NOPERM, ...) or the pool was busy:
            # not an outage, the state does not flap.
            self._note_refusal(exc)
            return
        if not self._up:
            return
        with self._state_lock:
            if not self._up:
                return
            self._up = False
        if not self._closed:
            log.warning("Redis backplane %s unavailable (%s); open streams keep "
                        "running, publishing fails until it returns",
                        self._connection.safe_url, self._connection.describe(exc))

    def _set_up(self) -> None:
        if self._up:
            return
        with self._state_lock:
            if self._up:
                return
            self._up = True
        log.info("Redis backplane %s available again", self._connection.safe_url)
        self._hb_wake.set()   # re-register presence now (Redis may have lost it)

    def _on_read(self) -> None:
        """In the listener thread, after each read: follow a Sentinel
        failover (the listener then checks its position on the new master,
        as after a lost connection), and note Redis up."""
        listener, client = self._listener, self._connection.listen_client
        if (self._watch is not None and listener is not None and client is not None
                and self._watch.moved(client.connection_pool)):
            listener.verify = True
        self._set_up()

    def _failed(self, exc: BaseException) -> None:
        """Note a failed call: an outage marks the backplane down, a refusal
        (Redis answered) or a busy pool does not."""
        if is_outage(exc):
            self._set_down(exc)
        elif is_refusal(exc) or isinstance(exc, PoolExhaustedError):
            self._note_refusal(exc)

    def _note_refusal(self, exc: BaseException) -> None:
        """Log a refusal, at most once a minute (the callers get each one)."""
        now = time.monotonic()
        if now - self._last_refusal_log < 60.0 and self._last_refusal_log:
            return
        self._last_refusal_log = now
        log.warning("Redis backplane %s refused a call (%s); the backplane stays up",
                    self._connection.safe_url, self._connection.describe(exc))

    # -- heartbeat -------------------------------------------------------------

    def _heartbeat(self) -> None:
        presence = self._presence
        assert presence is not None
        first = True     # at once: learn the dataset, re-register a forked copy's clients
        while True:
            if not first:
                # While Redis is away, retry as often as the listener does:
                # presence must be back as soon as Redis is (see rebuild_grace).
                interval = self.presence_ttl / 3.0
                self._hb_wake.wait(interval if self._up else min(interval, self.max_backoff))
                self._hb_wake.clear()
            first = False
            if self._stop.is_set():
                return
            try:
                presence.refresh()
                self._set_up()
            except Exception as exc:
                self._failed(exc)
                if not isinstance(exc, OUTAGES + (redis.RedisError,)):  # pragma: no cover
                    log.exception("Redis backplane heartbeat error")

    # -- presence ----------------------------------------------------------------

    def client_joined(self, client_id: str) -> None:
        self._ensure_started()
        self._sync_presence(client_id)

    def client_left(self, client_id: str) -> None:
        self._sync_presence(client_id)

    def _sync_presence(self, client_id: str) -> None:
        if self._closed or self._started_pid != os.getpid() or self._presence is None:
            return
        try:
            self._presence.sync(client_id, self._up)
        except Exception as exc:
            self._failed(exc)

    def _ready(self) -> Presence:
        self._ensure_started()
        if self._presence is None:
            raise BrokerClosedError("the backplane is closed")
        return self._presence

    def is_client_present(self, client_id: str) -> bool:
        presence = self._ready()
        try:
            found = presence.is_present(client_id)
        except BackplaneError:
            raise   # presence is being rebuilt
        except Exception as exc:
            self._failed(exc)
            raise self._error("check presence", exc) from exc
        self._set_up()
        return found

    def set_client_metadata(self, client_id: str, metadata: Any) -> None:
        presence = self._ready()
        value = self._serialise(metadata)
        try:
            ok = presence.set_metadata(client_id, value)
        except BackplaneError:
            raise
        except Exception as exc:
            self._failed(exc)
            raise self._error("set client metadata", exc) from exc
        self._set_up()
        if not ok:
            raise UnknownClientError(client_id)

    def _serialise(self, metadata: Any) -> bytes:
        """``metadata`` as stored in Redis; TypeError if it cannot be, or
        would not come back as it is; ValueError beyond ``max_metadata_bytes``."""
        name = getattr(self.serializer, "__name__", self.serializer)
        try:
            value = self.serializer.dumps(metadata)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"client metadata must be serialisable with {name!r} "
                            f"to be shared through Redis: {exc}") from exc
        if isinstance(value, str):
            value = value.encode("utf-8")
        if len(value) > self.max_metadata_bytes:
            raise ValueError(f"client metadata is {len(value)} bytes serialised, more than "
                             f"max_metadata_bytes={self.max_metadata_bytes}")
        # Every process must read what was set: JSON turns a tuple into a
        # list, int keys into str, NaN into a value unequal to itself.
        if self.serializer is json and json.loads(value) != metadata:
            raise TypeError("client metadata must come back from JSON equal to what was "
                            "set (no tuples, no non-str dict keys, no NaN): convert it "
                            "first (e.g. list(value)), or use serializer=pickle; "
                            f"{type(metadata).__name__} value refused")
        return bytes(value)

    def get_client_metadata(self, client_id: str) -> Any:
        presence = self._ready()
        try:
            found, value = presence.get_metadata(client_id)
        except BackplaneError:
            raise
        except Exception as exc:
            self._failed(exc)
            raise self._error("get client metadata", exc) from exc
        self._set_up()
        if not found:
            raise UnknownClientError(client_id)
        return None if value is None else self.serializer.loads(value)

    def _error(self, what: str, exc: BaseException) -> BackplaneError:
        conn = self._connection
        if is_refusal(exc):
            return BackplaneError(f"Redis backplane {conn.safe_url} refused to {what}: "
                                  f"{conn.describe(exc)}")
        if isinstance(exc, PoolExhaustedError):
            return BackplaneError(f"could not {what}: {conn.redact(exc)}")
        return BackplaneError(f"Redis backplane {conn.safe_url} unavailable, could not "
                              f"{what}: {conn.describe(exc)}")

    # -- publishing ----------------------------------------------------------------

    def publish(self, target: Tuple[str, Optional[str]], event: Event) -> int:
        broker = self._bound()
        if not isinstance(event, Event):
            raise TypeError(f"expected a gosse.Event, not {type(event).__name__}")
        if broker.closed:
            raise BrokerClosedError("the broker is closed")
        kind, name = target
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{kind} must be a str, not {type(name).__name__}")
        self._ensure_started()
        if self._watch is not None:
            self._watch.moved(self._connection.client.connection_pool)
        if not self._topology_known and self._up:   # (down: the append fails anyway)
            self._topology_known = check_not_cluster(self._connection.client,
                                                     self._connection.safe_url)
        try:
            found = self._appender.append(
                kind, name, event, auto_id=broker.auto_id,
                check_presence=not (kind == "client" and broker.has_local_client(name or "")))
        except BackplaneError as exc:
            cause = exc.__cause__
            self._publish_errors += 1
            if cause is not None:
                self._failed(cause)
            if (self.fallback == "local" and cause is not None and is_outage(cause)
                    and type(exc) is BackplaneError):
                # Redis unreachable and certainly not published: deliver here only.
                log.debug("Redis unavailable: %s delivered to local sessions only", kind)
                return broker.deliver_local([(None, kind, name, event.encode())])
            if isinstance(exc, PublishOutcomeUnknownError):
                self._publish_unknown += 1
            raise
        self._set_up()
        if found is None:
            raise UnknownClientError(name or "")
        # Delivery (here too) is done by the listeners: report how many
        # sessions of this process the event is addressed to.
        return broker.local_count(kind, name)

    # -- replay -------------------------------------------------------------------------

    def prepare_replay(self, last_id: Optional[str], client_id: str = "",
                       topics: Any = frozenset()) -> Any:
        """Outside the broker lock, before a session is registered: start
        the listener if needed (so the session misses nothing published from
        now on), then read what follows ``last_id``."""
        self._ensure_started()
        listener = self._listener
        if listener is not None:
            # Until the listener knows where it starts, an event published now
            # could fall before that point: the session would never get it.
            # (Set at once when Redis cannot be reached.)
            listener.ready.wait(self._socket_timeout)
        if last_id is None or self.history == 0 or self._replay is None:
            return None
        if not self._up:
            return Replay.reset(last_id)
        if self._replay is None:
            return Replay.reset(last_id)
        try:
            return self._replay.prepare(last_id, client_id, topics)
        except Exception as exc:
            self._failed(exc)
            if not isinstance(exc, OUTAGES + (redis.RedisError,)):  # pragma: no cover
                log.exception("Redis backplane replay error")
            return Replay.reset(last_id)

    def complete_replay(self, conn: Any, token: Any) -> None:
        """Under the broker lock, no I/O: queue the missed events (topped up
        with what the listener delivered meanwhile) before any live one."""
        if token is None:
            return
        if self._replay is None:
            conn.session.preload([reset_event(token.last_id).encode()])
            return
        self._replay.complete(conn.session, token)

    # -- stats -------------------------------------------------------------------------

    def stats(self) -> Dict[str, int]:
        listener, replay = self._listener, self._replay
        received = listener.received if listener else 0
        cpu_us = int(listener.cpu * 1e6 / received) if listener and received else 0
        return {"backplane_up": int(self._up), "backplane_received": received,
                "backplane_publish_errors": self._publish_errors,
                "backplane_publish_unknown": self._publish_unknown,
                "backplane_gaps": listener.gaps if listener else 0,
                "backplane_resets": ((listener.resets if listener else 0)
                                     + (replay.resets if replay else 0)),
                "backplane_lag_ms": listener.lag_ms if listener else 0,
                "backplane_listener_cpu_us": cpu_us}

    def __repr__(self) -> str:
        return (f"<RedisBackplane {self._connection.safe_url} prefix={self.prefix!r} "
                f"{'up' if self._up else 'down'}{' closed' if self._closed else ''}>")
