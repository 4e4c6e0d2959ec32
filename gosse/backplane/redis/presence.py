"""Presence and metadata: which clients have a session somewhere, shared
through Redis.

A client is present while any process holds a session of it:
``<prefix>:p:<client>`` is a sorted set of node ids (one per process)
scored by expiry time, refreshed by the heartbeat thread every
``presence_ttl / 3`` seconds; a process removes itself when its last
session of the client ends, and a killed process simply expires.  Metadata
(``<prefix>:m:<client>``, a hash: ``v`` the serialised value, ``t`` its
version, the server's ms clock at the write) lives as long.

After Redis lost its data (restarted empty, flushed, failed over to a
replica without it), presence is rebuilt, not trusted: each process keeps
a copy of the metadata of its own clients (what it set, and what the
heartbeat found set by others), re-registers its clients and restores the
copies as soon as it sees Redis back (and at the latest one heartbeat
later); until every process had the time to do so (``Dataset``), a lookup
that finds nobody is not taken for "nobody": a ``send`` is appended anyway
(harmless if nobody has the client), and presence and metadata lookups wait
up to ``wait`` seconds for the client to reappear, then raise
:class:`~gosse.errors.BackplaneError` saying presence is being rebuilt.
Waiting rather than guessing: a wrong "not connected" makes applications
drop messages or log users out, while the error is one they already handle
for an unreachable Redis; re-registration usually takes milliseconds, so
the wait usually ends with the right answer.

Ownership: ``pending_leave``, ``copies`` and the Redis state of this node's
clients are written under ``lock`` only (by the heartbeat thread and by the
threads whose sessions open and end or that set metadata), so that
whatever order the calls for one client run in, the last one writes what
the broker holds at that moment.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ...errors import BackplaneError
from .entries import LUA_NOW, LUA_UNSURE, Dataset, Keys, new_epoch

__all__ = ["Presence"]

log = logging.getLogger("gosse.backplane")

_SCRIPT = LUA_NOW + LUA_UNSURE

# KEYS: state, presence, meta  ARGV: node, ttl_ms, known epoch, grace_ms, fresh epoch
# The first local session of a client: returns the epoch.
_JOIN = _SCRIPT + """
local ttl = tonumber(ARGV[2])
local e = unsure(KEYS[1], ARGV[3], tonumber(ARGV[4]), ARGV[5])[2]
local p = KEYS[2]
redis.call('ZREMRANGEBYSCORE', p, '-inf', now)
if redis.call('ZCARD', p) == 0 then
  redis.call('DEL', KEYS[3])        -- stale metadata of a client gone
end
redis.call('ZADD', p, now + ttl, ARGV[1])
redis.call('PEXPIRE', p, ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return e
"""

# KEYS: state, presence1, meta1, presence2, meta2, ...
# ARGV: node, ttl_ms, known epoch, grace_ms, fresh epoch, version1, version2, ...
# The heartbeat.  Returns {epoch, i, ...}: i > 0, the metadata of client i
# (1-based) is newer in Redis than this node's copy (fetch it); i < 0, older
# or missing (restore the copy).
_REFRESH = _SCRIPT + """
local ttl = tonumber(ARGV[2])
local out = {unsure(KEYS[1], ARGV[3], tonumber(ARGV[4]), ARGV[5])[2]}
for i = 2, #KEYS, 2 do
  local p, m, j = KEYS[i], KEYS[i + 1], i / 2
  redis.call('ZREMRANGEBYSCORE', p, '-inf', now)
  redis.call('ZADD', p, now + ttl, ARGV[1])
  redis.call('PEXPIRE', p, ttl)
  redis.call('PEXPIRE', m, ttl)
  local t = tonumber(redis.call('HGET', m, 't') or '0')
  local mine = tonumber(ARGV[5 + j])
  if t > mine then out[#out + 1] = j elseif t < mine then out[#out + 1] = -j end
end
return out
"""

# KEYS: presence, meta  ARGV: value, version, ttl_ms
# Put back a copy unless a newer value is there.
_RESTORE = LUA_NOW + """
if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') == 0 then return 0 end
if tonumber(redis.call('HGET', KEYS[2], 't') or '0') < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'v', ARGV[1], 't', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 1
"""

# KEYS: presence1, meta1, ...  ARGV: node
_LEAVE = LUA_NOW + """
for i = 1, #KEYS, 2 do
  local p = KEYS[i]
  redis.call('ZREM', p, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', p, '-inf', now)
  if redis.call('ZCARD', p) == 0 then redis.call('DEL', p, KEYS[i + 1]) end
end
return #KEYS / 2
"""

# KEYS: state, presence  ARGV: known epoch, grace_ms, fresh epoch
# Returns {nodes holding the client, ms until "none" is sure (0 if some), epoch}.
_PRESENT = _SCRIPT + """
local u = unsure(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3])
local n = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
return {n, n > 0 and 0 or u[1], u[2]}
"""

# KEYS: state, presence, meta  ARGV: value, ttl_ms, known epoch, grace_ms, fresh epoch
# Returns {version (0: present nowhere), ms until presence is sure, epoch}.
_SET_META = _SCRIPT + """
local u = unsure(KEYS[1], ARGV[3], tonumber(ARGV[4]), ARGV[5])
if redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf') == 0 then return {0, u[1], u[2]} end
local v = math.max(now, tonumber(redis.call('HGET', KEYS[3], 't') or '0') + 1)
redis.call('HSET', KEYS[3], 'v', ARGV[1], 't', v)
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return {v, 0, u[2]}
"""

# KEYS: state, presence, meta  ARGV: known epoch, grace_ms, fresh epoch
# Returns {found (1|0), ms until presence is sure, epoch, value or nil}.
_GET_META = _SCRIPT + """
local u = unsure(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3])
if redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf') == 0 then return {0, u[1], u[2]} end
return {1, 0, u[2], redis.call('HGET', KEYS[3], 'v')}
"""

# Seconds between two lookups while presence is being rebuilt.
_POLL = 0.05


class Presence:
    """This node's share of the presence and metadata keys.

    ``wait``: seconds a lookup that finds nobody while presence is being
    rebuilt waits for the client to reappear before raising.
    """

    def __init__(self, client: Any, keys: Keys, node: str, ttl: float,
                 local_clients: Callable[[], List[str]],
                 has_local: Callable[[str], bool], dataset: Dataset,
                 wait: float = 5.0) -> None:
        self.client = client
        self.keys = keys
        self.node = node
        self.ttl_ms = max(1, int(ttl * 1000))
        self.local_clients = local_clients
        self.has_local = has_local
        self.dataset = dataset
        self.wait = wait
        self.lock = threading.Lock()
        self.pending_leave: Set[str] = set()
        #: client -> (serialised metadata, version): what Redis holds of this
        #: node's clients, restored after Redis lost it (under ``lock``).
        self.copies: Dict[str, Tuple[bytes, int]] = {}
        self._join = client.register_script(_JOIN)
        self._refresh = client.register_script(_REFRESH)
        self._restore = client.register_script(_RESTORE)
        self._leave = client.register_script(_LEAVE)
        self._present = client.register_script(_PRESENT)
        self._set_meta = client.register_script(_SET_META)
        self._get_meta = client.register_script(_GET_META)

    def _pair(self, client_id: str) -> List[str]:
        return [self.keys.presence + client_id, self.keys.meta + client_id]

    def _state(self, client_id: str) -> List[Any]:
        return [self.keys.state, *self._pair(client_id)]

    def _args(self) -> List[Any]:
        return [*self.dataset.args(), new_epoch()]

    # -- this node's clients ---------------------------------------------------

    def refresh(self) -> None:
        """Re-register every local client and bring the metadata copies and
        Redis in line (the heartbeat; at once after Redis lost its data),
        and withdraw the clients whose leave could not be written."""
        with self.lock:
            present = self.local_clients()
            here = set(present)
            for gone in [c for c in self.copies if c not in here]:
                del self.copies[gone]
            pending = [c for c in self.pending_leave if c not in here]
            if not present:
                # Nothing to register, but learn the dataset (and notice a new one).
                self._check(self._present(keys=[self.keys.state, self.keys.presence],
                                          args=self._args()))
            for i in range(0, len(present), 256):
                chunk = present[i:i + 256]
                keys: List[Any] = [self.keys.state]
                for c in chunk:
                    keys += self._pair(c)
                versions = [self.copies.get(c, (b"", 0))[1] for c in chunk]
                out = self._refresh(keys=keys, args=[self.node, self.ttl_ms,
                                                     *self._args(), *versions])
                self.dataset.saw(out[0])
                self._reconcile([(chunk[j - 1] if j > 0 else chunk[-j - 1], j > 0)
                                 for j in (int(x) for x in out[1:])])
            if pending:
                self._in_chunks(self._leave, pending, [self.node])
            self.pending_leave.clear()

    def _reconcile(self, todo: List[Tuple[str, bool]]) -> None:
        """Under ``lock``: fetch the newer values, restore the lost ones."""
        for client_id, newer in todo:
            keys = self._pair(client_id)
            if newer:
                value, version = self.client.hmget(keys[1], ["v", "t"])
                if value is not None and version is not None:
                    self.copies[client_id] = (value, int(version))
            elif client_id in self.copies:
                value, version = self.copies[client_id]
                self._restore(keys=keys, args=[value, version, self.ttl_ms])
                log.info("Redis backplane: restored the metadata of client %r", client_id)

    def withdraw(self, clients: List[str]) -> None:
        self._in_chunks(self._leave, clients, [self.node])

    def _in_chunks(self, script: Any, clients: List[str], args: List[Any],
                   size: int = 256) -> None:
        for i in range(0, len(clients), size):
            keys: List[str] = []
            for c in clients[i:i + size]:
                keys += self._pair(c)
            script(keys=keys, args=args)

    def sync(self, client_id: str, up: bool) -> None:
        """Make Redis say what this process holds of ``client_id`` now;
        raises the connection's errors (the leave is then kept pending)."""
        with self.lock:
            present = self.has_local(client_id)
            if not present:
                self.copies.pop(client_id, None)
            if not up:
                if not present:
                    self.pending_leave.add(client_id)
                return
            try:
                if present:
                    self.dataset.saw(self._join(keys=self._state(client_id),
                                                args=[self.node, self.ttl_ms, *self._args()]))
                else:
                    self._leave(keys=self._pair(client_id), args=[self.node])
                self.pending_leave.discard(client_id)
            except Exception:
                if not present:
                    self.pending_leave.add(client_id)
                raise

    # -- lookups -------------------------------------------------------------------

    def _check(self, answer: List[Any]) -> int:
        """Note the epoch of a script's ``{..., ms unsure, epoch, ...}``
        answer; return the ms presence stays unsure."""
        self.dataset.saw(answer[2])
        return int(answer[1])

    def _until_sure(self, client_id: str, call: Callable[[], List[Any]]) -> List[Any]:
        """``call()`` until its answer is sure (found, or nobody while
        presence is complete), for at most ``wait`` seconds."""
        deadline = time.monotonic() + self.wait
        for _ in range(int(self.wait / _POLL) + 2):
            answer = call()
            unsure_ms = self._check(answer)
            if not unsure_ms:
                return answer
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(_POLL, left))
        raise BackplaneError(
            f"Redis backplane: client {client_id!r} is not registered yet while presence "
            f"is being rebuilt (Redis lost its data: restarted, flushed or failed over); "
            f"retry in {max(1, unsure_ms // 1000)} s")

    def is_present(self, client_id: str) -> bool:
        keys = [self.keys.state, self.keys.presence + client_id]
        answer = self._until_sure(client_id,
                                  lambda: self._present(keys=keys, args=self._args()))
        return bool(answer[0])

    def set_metadata(self, client_id: str, value: bytes) -> bool:
        """Store ``value``; False if the client is present nowhere."""
        keys = self._state(client_id)

        def call() -> List[Any]:
            answer = self._set_meta(keys=keys, args=[value, self.ttl_ms, *self._args()])
            if not answer[0] and self.has_local(client_id):
                # Present here, but Redis lost us (it lost its data): re-register.
                self.sync(client_id, True)
                answer = self._set_meta(keys=keys, args=[value, self.ttl_ms, *self._args()])
            return list(answer)

        version = int(self._until_sure(client_id, call)[0])
        if version:
            with self.lock:
                if self.has_local(client_id):
                    held = self.copies.get(client_id)
                    if held is None or held[1] < version:
                        self.copies[client_id] = (value, version)
        return bool(version)

    def get_metadata(self, client_id: str) -> Tuple[bool, Optional[bytes]]:
        """``(found, raw value or None)``."""
        if self.has_local(client_id):
            value = self.client.hget(self.keys.meta + client_id, "v")
            if value is None:
                # Redis lost it and the heartbeat has not restored it yet.
                held = self.copies.get(client_id)
                value = None if held is None else held[0]
            return True, value
        keys = self._state(client_id)
        found = self._until_sure(client_id,
                                 lambda: list(self._get_meta(keys=keys, args=self._args())))
        if not found[0]:
            return False, None
        return True, (found[3] if len(found) > 3 else None)
