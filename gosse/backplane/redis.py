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
  ``<prefix>:events``, bounded with ``MAXLEN ~``.  Each process runs one
  listener thread that reads that stream with ``XREAD BLOCK`` and delivers
  each entry to its own matching sessions, under the broker lock, one batch
  per lock.  Every process therefore delivers in the stream's order: all
  sessions everywhere see events in one order, and the listener knows the
  id of the last entry it delivered.
* **Ids and replay.**  With ``Broker(auto_id=True)`` an event without an id
  gets the stream entry's id (``1718000000000-0``), globally ordered.  A
  session connecting with ``Last-Event-ID`` gets the entries after that id
  up to the last one its process delivered (``XRANGE``), filtered by what
  it may see, queued atomically with live delivery: no duplicate, no gap,
  whichever process it reconnects to.  User-supplied ids are mapped to
  entries by a per-process map that the listener keeps (filled from the
  stream once, the first time an id is not found).  An id not in the
  stream any more (older than ``history``) gets the ``gosse-reset`` event.
* **Presence and metadata.**  A client is present while any process holds
  a session of it: ``<prefix>:p:<client>`` is a sorted set of process ids
  scored by expiry time, refreshed by one heartbeat thread per backplane
  every ``presence_ttl / 3`` seconds; a process removes itself when its last
  session of the client ends, and a killed process simply expires.
  Metadata (``<prefix>:m:<client>``, JSON by default) lives as long.
* **Faults.**  If Redis goes away, open sessions keep streaming (heartbeats,
  :meth:`~gosse.ClientConnection.send`), new sessions are accepted (a
  ``Last-Event-ID`` that cannot be resolved gets ``gosse-reset``), and
  ``broadcast``/``send``/``publish``/presence/metadata raise
  :class:`~gosse.errors.BackplaneError` (or, with ``fallback="local"``,
  events are delivered to this process's sessions only).  The listener
  retries with jittered exponential backoff; each transition is logged
  once (logger ``gosse.backplane``).  Every Redis call has a timeout.

Needs Redis 5 or later (streams), ``pip install gosse[redis]``.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Set, Tuple, cast

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("gosse.backplane.redis needs the redis package: "
                      "pip install 'gosse[redis]'") from exc

from .._redact import Redactor, redact_url
from ..errors import BrokerClosedError, UnknownClientError
from ..event import Event
from . import Backplane, BackplaneError, _entries_for

__all__ = ["RedisBackplane"]

log = logging.getLogger("gosse.backplane")

_SID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_KIND_CODE = {"all": b"a", "client": b"c", "topic": b"t"}
_KIND_NAME = {b"a": "all", b"c": "client", b"t": "topic"}
# A stream entry as redis-py returns it: (stream id, fields).  Its command
# methods are annotated as returning "Awaitable[Any] | Any" (one signature
# for the sync and the asyncio client), so their results are cast to this.
_Entries = List[Tuple[bytes, Dict[bytes, bytes]]]
_MIN_STREAM_LEN = 1000     # the stream also buffers delivery for lagging listeners
_RESET = "reset"

_LUA_NOW = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: presence1, meta1, presence2, meta2, ...  ARGV: node, ttl_ms, join(1|0)
_JOIN = _LUA_NOW + """
local node, ttl = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS, 2 do
  local p = KEYS[i]
  redis.call('ZREMRANGEBYSCORE', p, '-inf', now)
  if ARGV[3] == '1' and redis.call('ZCARD', p) == 0 then
    redis.call('DEL', KEYS[i + 1])        -- stale metadata of a client gone
  end
  redis.call('ZADD', p, now + ttl, node)
  redis.call('PEXPIRE', p, ttl)
  redis.call('PEXPIRE', KEYS[i + 1], ttl)
end
return #KEYS / 2
"""

# KEYS: presence1, meta1, ...  ARGV: node
_LEAVE = _LUA_NOW + """
for i = 1, #KEYS, 2 do
  local p = KEYS[i]
  redis.call('ZREM', p, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', p, '-inf', now)
  if redis.call('ZCARD', p) == 0 then redis.call('DEL', p, KEYS[i + 1]) end
end
return #KEYS / 2
"""

# KEYS: presence
_PRESENT = _LUA_NOW + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""

# KEYS: presence, meta  ARGV: value, ttl_ms
_SET_META = _LUA_NOW + """
if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: presence, meta
_GET_META = _LUA_NOW + """
if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') == 0 then return {0} end
return {1, redis.call('GET', KEYS[2])}
"""

# KEYS: presence, stream  ARGV: maxlen, field, value, ...
_SEND = _LUA_NOW + """
if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') == 0 then return false end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
"""


_instances: weakref.WeakSet[RedisBackplane] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by a thread of the parent at fork time stays held in the
    # child, where that thread does not exist.
    for backplane in list(_instances):
        backplane._start_lock = threading.Lock()
        backplane._state_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_U64 = 1 << 64


def _stream_id(text: str) -> Optional[bytes]:
    """``text`` as a Redis stream id if it is one Redis accepts (two
    integers below 2**64), else None: a client's ``Last-Event-ID`` must not
    reach Redis as an id it refuses (an error there marked the backplane
    down)."""
    if not _SID.fullmatch(text):
        return None
    ms, _, n = text.partition("-")
    if int(ms) >= _U64 or int(n) >= _U64:
        return None
    return text.encode("ascii")


def _seq(sid: bytes) -> Tuple[int, int]:
    ms, _, n = sid.partition(b"-")
    return int(ms), int(n or 0)


def _after(sid: bytes) -> bytes:
    """The smallest stream id greater than ``sid`` (an exclusive XRANGE start
    that works before Redis 6.2)."""
    ms, n = _seq(sid)
    return b"%d-%d" % (ms, n + 1)


def _before(sid: bytes) -> Optional[bytes]:
    ms, n = _seq(sid)
    if n > 0:
        return b"%d-%d" % (ms, n - 1)
    if ms > 0:
        return b"%d-%d" % (ms - 1, 2 ** 64 - 1)
    return None


def _safe_url(url: str) -> str:
    """``url`` with its password (``redis://:pw@``, ``?password=``) masked."""
    return redact_url(url)


def _publish_what(kind: str, name: Optional[str]) -> str:
    """What a failed publish was for, in words, for its error message."""
    if kind == "client":
        return f"send the event to client {name!r}"
    if kind == "topic":
        return f"publish the event to topic {name!r}"
    return "broadcast the event"


class RedisBackplane(Backplane):
    """Share a broker's events, presence, metadata and replay history with
    every other broker on the same Redis (other gunicorn workers, hosts).

    * ``url``: the Redis server (``redis://[:password@]host:port/db``,
      ``rediss://``, ``unix://``).
    * ``prefix``: key prefix; brokers with the same prefix form one group.
    * ``history``: stream entries kept for ``Last-Event-ID`` replay
      (``MAXLEN ~``); 0 turns replay off (the stream still keeps the last
      1,000 entries so a lagging listener catches up).
    * ``presence_ttl``: seconds after which the clients of a process that
      died without saying so stop being present (refreshed every third of it).
    * ``block``: seconds one ``XREAD BLOCK`` waits; ``socket_timeout`` and
      ``connect_timeout`` bound every other call.
    * ``max_backoff``: cap of the listener's reconnection delay (seconds).
    * ``serializer``: an object with ``dumps``/``loads`` for client metadata
      (``json`` by default; ``pickle`` allows any value but trusts whoever
      can write to Redis).
    * ``fallback``: ``None`` (publishing raises :class:`~gosse.errors.BackplaneError` while
      Redis is unreachable) or ``"local"`` (deliver to this process's
      sessions only, not resumable, and log it).
    * ``redis_options``: extra keyword arguments for ``redis.Redis.from_url``.

    One instance serves one :class:`~gosse.Broker`; ``Broker.close()``
    closes it.  Its two threads (listener and heartbeat) start on first use
    in each process, so an app imported before gunicorn forks works.
    """

    shared = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "gosse",
                 history: int = 10_000, presence_ttl: float = 30.0, block: float = 1.0,
                 socket_timeout: float = 5.0, connect_timeout: float = 2.0,
                 max_backoff: float = 5.0, batch: int = 512, serializer: Any = json,
                 fallback: Optional[str] = None,
                 redis_options: Optional[Dict[str, Any]] = None):
        super().__init__()
        if type(history) is not int or history < 0:
            raise ValueError(f"history must be a non-negative int, not {history!r}")
        for name, value in (("presence_ttl", presence_ttl), ("block", block),
                            ("socket_timeout", socket_timeout),
                            ("connect_timeout", connect_timeout),
                            ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if fallback not in (None, "local"):
            raise ValueError(f"fallback must be None or 'local', not {fallback!r}")
        if not (hasattr(serializer, "dumps") and hasattr(serializer, "loads")):
            raise TypeError("serializer must have dumps() and loads() (e.g. json, pickle)")
        self.url = url
        self.prefix = prefix
        self.history = history
        self.maxlen = max(history, _MIN_STREAM_LEN)
        self.presence_ttl = float(presence_ttl)
        self.block = float(block)
        self.max_backoff = float(max_backoff)
        self.batch = int(batch)
        self.serializer = serializer
        self.fallback = fallback
        self._ttl_ms = max(1, int(self.presence_ttl * 1000))
        self._heartbeat_interval = self.presence_ttl / 3.0
        self._node = uuid.uuid4().hex
        self._stream = f"{prefix}:events".encode()
        self._p = f"{prefix}:p:"
        self._m = f"{prefix}:m:"
        common = dict(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
                      retry=Retry(NoBackoff(), 0), health_check_interval=0)
        common.update(redis_options or {})
        self._r = redis.Redis.from_url(url, **common)
        # The listener's own connection: its read timeout must outlast BLOCK.
        self._lr = redis.Redis.from_url(url, **{**common, "max_connections": 1,
                                                "socket_timeout": self.block + socket_timeout})
        self._join = self._r.register_script(_JOIN)
        self._leave = self._r.register_script(_LEAVE)
        self._present = self._r.register_script(_PRESENT)
        self._set_meta = self._r.register_script(_SET_META)
        self._get_meta = self._r.register_script(_GET_META)
        self._send = self._r.register_script(_SEND)
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
        self._presence_lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self._up = True
        self._delivered: Optional[bytes] = None        # last stream id delivered here
        self._floors: Dict[Any, Tuple[int, int]] = {}   # stream -> skip ids <= floor
        self._uids: OrderedDict[bytes, bytes] = OrderedDict()
        self._uids_cap = self.maxlen + self.maxlen // 10 + 1000
        self._uids_complete = False
        self._uids_loading = threading.Lock()
        self._pending_leave: Set[str] = set()
        self._received = 0
        self._publish_errors = 0

    # -- lifecycle ---------------------------------------------------------

    def bind(self, broker: Any) -> None:
        super().bind(broker)
        if broker.__dict__.get("_history") is not None:
            log.debug("Broker(history=...) is ignored with a RedisBackplane; "
                      "RedisBackplane(history=%d) applies", self.history)

    def _ensure_started(self) -> None:
        pid = os.getpid()
        if self._started_pid == pid:
            return
        with self._start_lock:
            if self._started_pid == pid or self._closed:
                return
            if self._started_pid is not None:   # forked: the parent's threads are not here
                self._reset_process_state()
            self._init_position()
            for name, target in (("listener", self._listen), ("heartbeat", self._heartbeat)):
                t = threading.Thread(target=target, name=f"gosse-redis-{name}", daemon=True)
                t.start()
                self._threads.append(t)
            # Last: the check above without the lock must not let a
            # concurrent first caller through before the position is known
            # (it would answer a resumable Last-Event-ID with gosse-reset).
            self._started_pid = pid

    def _init_position(self) -> bool:
        """Start delivering after the stream's current last entry."""
        try:
            last = cast(_Entries, self._r.xrevrange(self._stream, "+", "-", count=1))
        except RedisError as exc:
            self._set_down(exc)
            return False
        position = last[0][0] if last else b"0-0"
        with self._bound()._lock:
            self._delivered = position
        return True

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
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            started = self._started_pid == os.getpid()
        self._stop.set()
        self._hb_wake.set()
        if started:
            # Interrupt a blocked XREAD now rather than after `block` s.  Once
            # may not do: a listener between two calls opens a new connection
            # and blocks again, so disconnect until it has stopped.
            deadline = time.monotonic() + timeout
            for t in self._threads:
                while t.is_alive() and time.monotonic() < deadline:
                    try:
                        self._lr.connection_pool.disconnect()
                    except Exception:  # pragma: no cover - best effort
                        pass
                    t.join(0.1)
            broker = self._broker
            if broker is not None and self._up:
                with self._presence_lock:
                    gone = set(broker.local_clients()) | self._pending_leave
                try:
                    self._call_in_chunks(self._leave, sorted(gone), [self._node])
                except RedisError as exc:
                    log.debug("could not withdraw presence on close: %s", exc)
        for client in (self._lr, self._r):
            try:
                client.close()
            except Exception:  # pragma: no cover
                pass

    # -- state transitions ---------------------------------------------------

    def _set_down(self, exc: BaseException) -> None:
        if not self._up:
            return
        with self._state_lock:
            if not self._up:
                return
            self._up = False
        if not self._closed:
            log.warning("Redis backplane %s unavailable (%s: %s); open streams keep "
                        "running, publishing fails until it returns",
                        _safe_url(self.url), type(exc).__name__, Redactor(self.url)(exc))

    def _set_up(self) -> None:
        if self._up:
            return
        with self._state_lock:
            if self._up:
                return
            self._up = True
        log.info("Redis backplane %s available again", _safe_url(self.url))
        self._hb_wake.set()   # re-register presence now (Redis may have lost it)

    # -- listener ------------------------------------------------------------

    def _listen(self) -> None:
        backoff = 0.0
        stop = self._stop
        block_ms = max(1, int(self.block * 1000))
        while not stop.is_set():
            try:
                if self._delivered is None:
                    if not self._init_position():
                        raise redis.ConnectionError("cannot read the stream position")
                # (_init_position has set _delivered.)
                resp = cast(List[Tuple[bytes, _Entries]], self._lr.xread(
                    {self._stream: cast(bytes, self._delivered)}, count=self.batch,
                    block=block_ms))
            except Exception as exc:  # RedisError, OSError, parser errors
                if stop.is_set():
                    break
                if isinstance(exc, (RedisError, OSError)):
                    self._set_down(exc)
                else:  # pragma: no cover - a bug; keep the thread alive
                    log.exception("Redis backplane listener error")
                backoff = min(self.max_backoff, backoff * 2 if backoff else 0.05)
                stop.wait(backoff * random.uniform(0.5, 1.0))
                continue
            backoff = 0.0
            self._set_up()
            if resp:
                try:
                    self._deliver(resp[0][1])
                except Exception:  # pragma: no cover - a bug; keep the thread alive
                    log.exception("Redis backplane delivery error")

    def _deliver(self, entries: List[Tuple[bytes, Dict[bytes, bytes]]]) -> None:
        batch = []
        uids = []
        for sid, f in entries:
            wire, uid, kind, name = self._decode(sid, f)
            if uid is not None:
                uids.append((uid, sid))
            batch.append((_seq(sid), kind, name, wire))
        broker = self._bound()
        last = entries[-1][0]

        def commit() -> None:
            # Under the broker's registry lock, with the batch's recipients.
            self._delivered = last
            if uids:
                m = self._uids
                for uid, sid in uids:
                    m.pop(uid, None)
                    m[uid] = sid
                while len(m) > self._uids_cap:
                    m.popitem(last=False)

        if broker.closed:
            commit()
        else:
            broker.deliver_local(batch, floors=self._floors, commit=commit)
        self._received += len(entries)

    @staticmethod
    def _decode(sid: bytes, f: Dict[bytes, bytes]
                ) -> Tuple[bytes, Optional[bytes], str, Optional[str]]:
        """(wire, user id or None, kind, name) of a stream entry."""
        wire = f.get(b"w", b"")
        uid = f.get(b"u")
        if uid is None and b"a" in f:
            wire = b"id: " + sid + b"\n" + wire
        kind = _KIND_NAME.get(f.get(b"k", b""), "all")
        raw_name = f.get(b"n")
        name = None if raw_name is None else raw_name.decode("utf-8", "replace")
        return wire, uid, kind, name

    # -- heartbeat -------------------------------------------------------------

    def _heartbeat(self) -> None:
        while True:
            self._hb_wake.wait(self._heartbeat_interval)
            self._hb_wake.clear()
            if self._stop.is_set():
                return
            if not self._up:
                continue   # the listener finds out when Redis returns, then wakes us
            try:
                self._refresh()
            except RedisError as exc:
                self._set_down(exc)
            except Exception:  # pragma: no cover - a bug; keep the thread alive
                log.exception("Redis backplane heartbeat error")

    def _refresh(self) -> None:
        broker = self._bound()
        with self._presence_lock:
            present = broker.local_clients()
            here = set(present)
            pending = [c for c in self._pending_leave if c not in here]
            self._call_in_chunks(self._join, present, [self._node, self._ttl_ms, 0])
            if pending:
                self._call_in_chunks(self._leave, pending, [self._node])
            self._pending_leave.clear()

    def _call_in_chunks(self, script: Any, clients: List[str], args: List[Any],
                        size: int = 256) -> None:
        for i in range(0, len(clients), size):
            keys = []
            for c in clients[i:i + size]:
                keys += [self._p + c, self._m + c]
            script(keys=keys, args=args)

    # -- presence ----------------------------------------------------------------

    def client_joined(self, client_id: str) -> None:
        self._ensure_started()
        self._sync_presence(client_id)

    def client_left(self, client_id: str) -> None:
        self._sync_presence(client_id)

    def _sync_presence(self, client_id: str) -> None:
        """Make Redis say what this process holds now: whatever order the
        calls for one client run in, the last one writes the final state."""
        if self._closed or self._started_pid != os.getpid():
            return
        broker = self._bound()
        keys = [self._p + client_id, self._m + client_id]
        with self._presence_lock:
            present = broker.has_local_client(client_id)
            if not self._up:
                if not present:
                    self._pending_leave.add(client_id)
                return
            try:
                if present:
                    self._join(keys=keys, args=[self._node, self._ttl_ms, 1])
                else:
                    self._leave(keys=keys, args=[self._node])
                self._pending_leave.discard(client_id)
            except RedisError as exc:
                self._set_down(exc)
                if not present:
                    self._pending_leave.add(client_id)

    def is_client_present(self, client_id: str) -> bool:
        self._ensure_started()
        try:
            n = self._present(keys=[self._p + client_id])
        except RedisError as exc:
            self._set_down(exc)
            raise self._error("check presence", exc) from exc
        self._set_up()
        return bool(n)

    def set_client_metadata(self, client_id: str, metadata: Any) -> None:
        self._ensure_started()
        broker = self._bound()
        try:
            value = self.serializer.dumps(metadata)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"client metadata must be serialisable with "
                            f"{getattr(self.serializer, '__name__', self.serializer)!r} "
                            f"to be shared through Redis: {exc}") from exc
        if isinstance(value, str):
            value = value.encode("utf-8")
        keys = [self._p + client_id, self._m + client_id]
        try:
            ok = self._set_meta(keys=keys, args=[value, self._ttl_ms])
            if not ok and broker.has_local_client(client_id):
                # Present here, but Redis lost us (it restarted): re-register.
                self._sync_presence(client_id)
                ok = self._set_meta(keys=keys, args=[value, self._ttl_ms])
        except RedisError as exc:
            self._set_down(exc)
            raise self._error("set client metadata", exc) from exc
        self._set_up()
        if not ok:
            raise UnknownClientError(client_id)

    def get_client_metadata(self, client_id: str) -> Any:
        self._ensure_started()
        broker = self._bound()
        try:
            if broker.has_local_client(client_id):
                value = self._r.get(self._m + client_id)
            else:
                found = self._get_meta(keys=[self._p + client_id, self._m + client_id])
                if not found or not found[0]:
                    raise UnknownClientError(client_id)
                value = found[1] if len(found) > 1 else None
        except RedisError as exc:
            self._set_down(exc)
            raise self._error("get client metadata", exc) from exc
        self._set_up()
        return None if value is None else self.serializer.loads(value)

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
        fields = [b"k", _KIND_CODE[kind]]
        if name is not None:
            fields += [b"n", name.encode("utf-8")]
        if event.id is not None:
            fields += [b"u", event.id.encode("utf-8")]
        elif broker.auto_id:
            fields += [b"a", b"1"]   # the entry's stream id becomes the event id
        fields += [b"w", event.encode()]
        client = cast(str, name)   # read only for kind "client", which names one
        try:
            if kind == "client" and not broker.has_local_client(client):
                # Atomically: present somewhere, then append.
                sid = self._send(keys=[self._p + client, self._stream],
                                 args=[self.maxlen, *fields])
                if sid is None:
                    self._set_up()
                    raise UnknownClientError(client)
            else:
                self._r.xadd(self._stream, dict(zip(fields[::2], fields[1::2])),
                             maxlen=self.maxlen, approximate=True)
        except RedisError as exc:
            self._publish_errors += 1
            self._set_down(exc)
            if self.fallback == "local":
                log.debug("Redis unavailable: %s delivered to local sessions only", kind)
                wire = event.encode()
                return broker.deliver_local([(None, kind, name, wire)])
            raise self._error(_publish_what(kind, name), exc) from exc
        self._set_up()
        # Delivery (here too) is done by the listeners: report how many
        # sessions of this process the event is addressed to.
        return broker.local_count(kind, name)

    def _error(self, what: str, exc: BaseException) -> BackplaneError:
        return BackplaneError(f"Redis backplane {_safe_url(self.url)} unavailable, "
                              f"could not {what}: {type(exc).__name__}: "
                              f"{Redactor(self.url)(exc)}")

    # -- replay -------------------------------------------------------------------------

    def prepare_replay(self, last_id: Optional[str]) -> Any:
        """Outside the broker lock, before a session is registered: start
        the listener if needed (so the session misses nothing published from
        now on), then find where ``last_id`` is in the stream and read what
        follows, up to what this process has delivered."""
        self._ensure_started()
        if last_id is None or self.history == 0:
            return None
        if self._delivered is None or not self._up:
            return (_RESET, last_id)
        try:
            start = self._resolve(last_id)
            if start is None:
                return (_RESET, last_id)
            upto = self._delivered
            if _seq(start) < _seq(upto):
                pipe = self._r.pipeline(transaction=True)
                pipe.xrange(self._stream, start, start, count=1)
                pipe.xrange(self._stream, _after(start), upto)
                exists, entries = pipe.execute()
            else:
                exists, entries = cast(_Entries, self._r.xrange(self._stream, start, start,
                                                                count=1)), []
        except RedisError as exc:
            self._set_down(exc)
            return (_RESET, last_id)
        if not exists:
            return (_RESET, last_id)
        return (start, upto, self._replayable(entries), last_id)

    def complete_replay(self, conn: Any, token: Any) -> None:
        """Under the broker lock: queue the missed events (topped up with
        what the listener delivered meanwhile) before any live one."""
        if token is None:
            return
        if token[0] == _RESET:
            conn.session.preload([self._reset_wire(token[1])])
            return
        start, upto, entries, last_id = token
        now = cast(bytes, self._delivered)   # set before any replay, never unset
        low = max(start, upto, key=_seq)
        if _seq(now) > _seq(low):
            try:
                entries = entries + self._replayable(cast(
                    _Entries, self._r.xrange(self._stream, _after(low), now)))
            except RedisError as exc:
                self._set_down(exc)
                conn.session.preload([self._reset_wire(last_id)])
                return
        conn.session.preload(_entries_for(conn, entries))
        if _seq(start) > _seq(now):
            # The client has seen events this process has not delivered yet.
            self._floors[conn.session] = _seq(start)

    @staticmethod
    def _reset_wire(last_id: str) -> bytes:
        from ..broker import reset_event
        return reset_event(last_id).encode()

    def _replayable(self, entries: _Entries) -> List[Tuple[str, Optional[str], bytes]]:
        out = []
        for sid, f in entries:
            if b"u" not in f and b"a" not in f:
                continue   # an event without id is not resumable
            wire, _, kind, name = self._decode(sid, f)
            out.append((kind, name, wire))
        return out

    def _resolve(self, last_id: str) -> Optional[bytes]:
        """The stream id of the entry a ``Last-Event-ID`` names, or None."""
        uid = last_id.encode("utf-8", "replace")
        sid = self._uids.get(uid)
        if sid is not None:
            return sid
        if _stream_id(last_id) is not None:   # an auto id: the stream id itself
            got = cast(_Entries, self._r.xrange(self._stream, uid, uid, count=1))
            if got and b"u" not in got[0][1]:
                return uid
        # Entries this process has not delivered yet (the client is ahead).
        upto = cast(bytes, self._delivered)   # prepare_replay checked it is set
        tail = cast(_Entries, self._r.xrange(self._stream, _after(upto), "+",
                                             count=self.maxlen))
        for sid, f in reversed(tail):
            if f.get(b"u") == uid:
                return sid
        if not self._uids_complete:
            self._load_uids(upto)
            return self._uids.get(uid)
        return None

    def _load_uids(self, upto: bytes) -> None:
        """Fill the id map from the whole stream, once per process: the
        listener keeps it current afterwards."""
        with self._uids_loading:
            if self._uids_complete:
                return
            loaded: OrderedDict[bytes, bytes] = OrderedDict()
            hi: Optional[bytes] = upto
            chunks = []
            seen = 0
            while hi is not None and seen <= self._uids_cap:
                got = cast(_Entries, self._r.xrevrange(self._stream, hi, "-", count=1000))
                if not got:
                    break
                chunks.append(got)
                seen += len(got)
                hi = _before(got[-1][0])
            for got in reversed(chunks):
                for sid, f in reversed(got):
                    uid = f.get(b"u")
                    if uid is not None:
                        loaded.pop(uid, None)
                        loaded[uid] = sid
            with self._bound()._lock:
                for uid, sid in self._uids.items():   # newer: delivered meanwhile
                    loaded.pop(uid, None)
                    loaded[uid] = sid
                while len(loaded) > self._uids_cap:
                    loaded.popitem(last=False)
                self._uids = loaded
                self._uids_complete = True

    # -- stats -------------------------------------------------------------------------

    def stats(self) -> Dict[str, int]:
        return {"backplane_up": int(self._up), "backplane_received": self._received,
                "backplane_publish_errors": self._publish_errors}

    def __repr__(self) -> str:
        return (f"<RedisBackplane {_safe_url(self.url)} prefix={self.prefix!r} "
                f"{'up' if self._up else 'down'}{' closed' if self._closed else ''}>")
