"""The Redis side of the backplane's data: key names, the stream entry
format, and the one script that appends an entry.

An entry of ``<prefix>:events`` holds:

* ``e``: the dataset epoch, ``s``: its sequence number (1, 2, 3, ... per
  dataset, from ``HINCRBY <prefix>:state s``, in the same script as the
  ``XADD``).  A listener that reads ``s`` not following the last one it
  delivered, or another ``e``, knows entries are missing (trimmed, lost in a
  restart or a failover) and says so to its streams instead of skipping
  silently.  The epoch is created (``HSETNX``) by the first append to a
  dataset: a Redis that restarted empty, was flushed, or is another server
  gets a new one.
* ``k``/``n``: the target (``a`` all, ``c`` client, ``t`` topic, and its name);
* ``u``: the event's own id, or ``a``: the event takes the auto id
  ``<epoch>-<stream id>``;
* ``w``: the encoded event (without the auto id line).

Every writer (:class:`~gosse.backplane.redis.RedisBackplane`,
:class:`~gosse.backplane.redis.Publisher`) appends through :data:`APPEND`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

__all__ = ["Keys", "Entry", "APPEND", "Dataset", "decode", "encode_fields", "new_epoch",
           "parse_auto_id", "KIND_CODE"]

KIND_CODE = {"all": b"a", "client": b"c", "topic": b"t"}
_KIND_NAME = {b"a": "all", b"c": "client", b"t": "topic"}
_U64 = 1 << 64
_SID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_EPOCH = re.compile(r"[0-9a-z]{1,16}")

# The server's clock in ms (scripts that write after TIME need effects
# replication, explicit before Redis 5's default changed in 7).
LUA_NOW = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Whether "present nowhere" may be wrong because presence is being rebuilt
# (see Dataset), and the dataset's epoch (created if missing).  A caller
# that knew another epoch has just found a new dataset: it opens the
# rebuilding window, ``grace`` ms long, that the other processes need to
# re-register.  Returns {ms left in the window (0: the answer is sure), epoch}.
LUA_UNSURE = """
local function unsure(state, known, grace, fresh)
  redis.call('HSETNX', state, 'e', fresh)
  local e = redis.call('HGET', state, 'e')
  local r = tonumber(redis.call('HGET', state, 'r') or '0')
  if known ~= '' and e ~= known and r < now + grace then
    r = now + grace
    redis.call('HSET', state, 'r', r)
  end
  return {math.max(0, r - now), e}
end
"""

# KEYS: stream, state, presence (of the client for a send, else any key)
# ARGV: maxlen (0: the group's, recorded by the brokers' appends in the
#       state's field n), minid_age_ms (0: none; -1: the group's, field a),
#       new epoch, need_presence (1|0),
#       known epoch ('' if none), rebuild grace ms, field, value, ...
# Returns {stream id, epoch}, or false when need_presence and the client is
# present nowhere (and presence is not being rebuilt: then it appends).
APPEND = LUA_NOW + LUA_UNSURE + """
local u = unsure(KEYS[2], ARGV[5], tonumber(ARGV[6]), ARGV[3])
if ARGV[4] == '1' and u[1] == 0
    and redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf') == 0 then
  return false
end
local e = u[2]
local s = redis.call('HINCRBY', KEYS[2], 's', 1)
local maxlen, age = tonumber(ARGV[1]), tonumber(ARGV[2])
if maxlen > 0 then
  redis.call('HSET', KEYS[2], 'n', maxlen, 'a', age)
else
  maxlen = tonumber(redis.call('HGET', KEYS[2], 'n') or '10000')
  if age < 0 then age = tonumber(redis.call('HGET', KEYS[2], 'a') or '0') end
end
local sid = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
                       'e', e, 's', s, unpack(ARGV, 7))
if age > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', (now - age) .. '-0')
end
return {sid, e}
"""


class Dataset:
    """What one process (or :class:`~gosse.backplane.redis.Publisher`)
    knows of the Redis dataset it talks to, so that a Redis that lost its
    data (restarted empty, flushed, failed over) is not taken for one where
    nobody is connected.

    ``epoch`` is the dataset's epoch as last seen (``<prefix>:state`` field
    ``e``); ``grace_ms`` bounds how long after a new dataset appears every
    live process has re-registered its clients.  The first caller that
    finds an epoch other than the one it knew sets the state's field ``r``
    (rebuilt by, server ms) to now + ``grace_ms``: until then a lookup that
    finds nobody is not sure (a ``send`` appends anyway, presence and
    metadata lookups wait or raise).  A process that never saw a dataset
    (``epoch`` empty) cannot tell a fresh one from a wiped one and takes
    presence as it finds it.

    Ownership: ``epoch`` is written by whichever thread has just had Redis's
    answer (an assignment; the last writer wins with what Redis just said).
    """

    __slots__ = ("epoch", "grace_ms", "on_new")

    def __init__(self, grace: float, on_new: Optional[Callable[[], None]] = None) -> None:
        self.epoch = b""
        self.grace_ms = max(1, int(grace * 1000))
        self.on_new = on_new

    def saw(self, epoch: Any) -> None:
        """Note the epoch Redis answered; call ``on_new`` if it changed."""
        if not isinstance(epoch, bytes) or epoch == self.epoch:
            return
        known, self.epoch = self.epoch, epoch
        if known and self.on_new is not None:
            self.on_new()

    def args(self) -> List[Any]:
        """The ``known epoch, grace ms`` arguments of the scripts."""
        return [self.epoch, self.grace_ms]


class Keys:
    """The Redis keys of one backplane group (one ``prefix``)."""

    __slots__ = ("prefix", "stream", "state", "presence", "meta")

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty str, not {prefix!r}")
        self.prefix = prefix
        self.stream = f"{prefix}:events".encode()
        self.state = f"{prefix}:state".encode()     # hash: e (epoch), s (last sequence)
        self.presence = f"{prefix}:p:"               # + client id: sorted set of nodes
        self.meta = f"{prefix}:m:"                   # + client id: metadata


class Entry(NamedTuple):
    """One decoded stream entry."""
    sid: bytes                 # the stream id
    pos: Tuple[int, ...]       # the stream id as numbers, for comparisons
    epoch: bytes
    seq: int                   # 0 for an entry written by an older gosse
    kind: str
    name: Optional[str]
    uid: Optional[bytes]       # the event's own id
    resumable: bool            # it has an id (own or auto)
    wire: bytes                # the encoded event, with its auto id line


def new_epoch() -> bytes:
    """A random dataset epoch: 8 base-36 characters."""
    n = int.from_bytes(os.urandom(6), "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(8):
        n, r = divmod(n, 36)
        out += digits[r]
    return out.encode()


def seq_of(sid: bytes) -> Tuple[int, int]:
    ms, _, n = sid.partition(b"-")
    return int(ms), int(n or 0)


def decode(sid: bytes, f: Any) -> Entry:
    """An entry from its id and fields (a dict, or the flat ``[field,
    value, ...]`` list of a raw reply)."""
    if type(f) is not dict:
        f = dict(zip(f[::2], f[1::2]))
    epoch = f.get(b"e", b"")
    wire = f.get(b"w", b"")
    uid = f.get(b"u")
    auto = uid is None and b"a" in f
    if auto:
        wire = b"id: " + epoch + b"-" + sid + b"\n" + wire
    raw_name = f.get(b"n")
    return Entry(sid, seq_of(sid), epoch, int(f.get(b"s", 0)),
                 _KIND_NAME.get(f.get(b"k", b""), "all"),
                 None if raw_name is None else raw_name.decode("utf-8", "replace"),
                 uid, auto or uid is not None, wire)


def encode_fields(kind: str, name: Optional[str], event_id: Optional[str],
                  auto_id: bool, wire: bytes) -> List[bytes]:
    """The ``field, value, ...`` arguments of :data:`APPEND` for an event."""
    fields = [b"k", KIND_CODE[kind]]
    if name is not None:
        fields += [b"n", name.encode("utf-8")]
    if event_id is not None:
        fields += [b"u", event_id.encode("utf-8")]
    elif auto_id:
        fields += [b"a", b"1"]
    fields += [b"w", wire]
    return fields


def stream_id(text: str) -> Optional[bytes]:
    """``text`` as a Redis stream id if it is one Redis accepts (two
    integers below 2**64), else None: a client's ``Last-Event-ID`` must not
    reach Redis as an id it refuses."""
    if not _SID.fullmatch(text):
        return None
    ms, _, n = text.partition("-")
    if int(ms) >= _U64 or int(n) >= _U64:
        return None
    return text.encode("ascii")


def parse_auto_id(text: str) -> Optional[Tuple[bytes, bytes]]:
    """``(epoch, stream id)`` of an auto id ``<epoch>-<ms>-<n>``, else None."""
    epoch, sep, rest = text.partition("-")
    if not sep or not _EPOCH.fullmatch(epoch):
        return None
    sid = stream_id(rest)
    return None if sid is None else (epoch.encode(), sid)


def after(sid: bytes) -> bytes:
    """The smallest stream id greater than ``sid`` (an exclusive XRANGE
    start that works before Redis 6.2)."""
    ms, n = seq_of(sid)
    if n + 1 >= _U64:
        return b"%d-0" % (ms + 1)
    return b"%d-%d" % (ms, n + 1)
