"""Presence and metadata: which clients have a session somewhere, shared
through Redis.

A client is present while any process holds a session of it:
``<prefix>:p:<client>`` is a sorted set of node ids (one per process)
scored by expiry time, refreshed by the heartbeat thread every
``presence_ttl / 3`` seconds; a process removes itself when its last
session of the client ends, and a killed process simply expires.  Metadata
(``<prefix>:m:<client>``) lives as long.

Ownership: ``pending_leave`` and the Redis state of this node's clients are
written under ``lock`` only (by the heartbeat thread and by the threads
whose sessions open and end), so that whatever order the calls for one
client run in, the last one writes what the broker holds at that moment.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List, Set

from .entries import LUA_NOW, Keys

__all__ = ["Presence"]

log = logging.getLogger("gosse.backplane")

# KEYS: presence1, meta1, presence2, meta2, ...  ARGV: node, ttl_ms, join(1|0)
_JOIN = LUA_NOW + """
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
_LEAVE = LUA_NOW + """
for i = 1, #KEYS, 2 do
  local p = KEYS[i]
  redis.call('ZREM', p, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', p, '-inf', now)
  if redis.call('ZCARD', p) == 0 then redis.call('DEL', p, KEYS[i + 1]) end
end
return #KEYS / 2
"""

# KEYS: presence
_PRESENT = LUA_NOW + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""

# KEYS: presence, meta  ARGV: value, ttl_ms
_SET_META = LUA_NOW + """
if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: presence, meta
_GET_META = LUA_NOW + """
if redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') == 0 then return {0} end
return {1, redis.call('GET', KEYS[2])}
"""


class Presence:
    """This node's share of the presence and metadata keys."""

    def __init__(self, client: Any, keys: Keys, node: str, ttl: float,
                 local_clients: Callable[[], List[str]],
                 has_local: Callable[[str], bool]) -> None:
        self.client = client
        self.keys = keys
        self.node = node
        self.ttl_ms = max(1, int(ttl * 1000))
        self.local_clients = local_clients
        self.has_local = has_local
        self.lock = threading.Lock()
        self.pending_leave: Set[str] = set()
        self._join = client.register_script(_JOIN)
        self._leave = client.register_script(_LEAVE)
        self._present = client.register_script(_PRESENT)
        self._set_meta = client.register_script(_SET_META)
        self._get_meta = client.register_script(_GET_META)

    def _pair(self, client_id: str) -> List[str]:
        return [self.keys.presence + client_id, self.keys.meta + client_id]

    def refresh(self) -> None:
        """Re-register every local client (the heartbeat; after Redis lost
        its data) and withdraw the ones whose leave could not be written."""
        with self.lock:
            present = self.local_clients()
            here = set(present)
            pending = [c for c in self.pending_leave if c not in here]
            self._in_chunks(self._join, present, [self.node, self.ttl_ms, 0])
            if pending:
                self._in_chunks(self._leave, pending, [self.node])
            self.pending_leave.clear()

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
            if not up:
                if not present:
                    self.pending_leave.add(client_id)
                return
            try:
                if present:
                    self._join(keys=self._pair(client_id), args=[self.node, self.ttl_ms, 1])
                else:
                    self._leave(keys=self._pair(client_id), args=[self.node])
                self.pending_leave.discard(client_id)
            except Exception:
                if not present:
                    self.pending_leave.add(client_id)
                raise

    def is_present(self, client_id: str) -> bool:
        return bool(self._present(keys=[self.keys.presence + client_id]))

    def set_metadata(self, client_id: str, value: bytes) -> bool:
        """Store ``value``; False if the client is present nowhere."""
        keys = self._pair(client_id)
        ok = self._set_meta(keys=keys, args=[value, self.ttl_ms])
        if not ok and self.has_local(client_id):
            # Present here, but Redis lost us (it restarted): re-register.
            self.sync(client_id, True)
            ok = self._set_meta(keys=keys, args=[value, self.ttl_ms])
        return bool(ok)

    def get_metadata(self, client_id: str) -> Any:
        """``(found, raw value or None)``."""
        if self.has_local(client_id):
            return True, self.client.get(self.keys.meta + client_id)
        found = self._get_meta(keys=self._pair(client_id))
        if not found or not found[0]:
            return False, None
        return True, (found[1] if len(found) > 1 else None)
