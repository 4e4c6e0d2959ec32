"""Replay: what a session resuming with ``Last-Event-ID`` missed, from the
stream, with no network I/O under the broker's lock.

:meth:`Replay.prepare` runs before the session is registered, outside the
lock: it finds the entry the id names and reads what follows it up to the
listener's position, page by page, keeping only what the session may see,
and gives up (``gosse-reset``) beyond the session's queue bounds
(``Broker(queue_size=, queue_bytes=)``) or at a hole in the range.
:meth:`Replay.complete` runs under the lock, atomically with live delivery:
it tops the replay up with what the listener delivered meanwhile, from the
listener's ring of recent entries (memory, no I/O), and queues it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, cast

from ...event import reset_event
from ...registry import entitled
from .entries import Entry, Keys, after, decode, parse_auto_id, seq_of
from .listener import Listener

__all__ = ["Replay"]

_Raw = List[Tuple[bytes, Dict[bytes, bytes]]]
PAGE = 512


class _Plan(NamedTuple):
    sid: bytes                  # the entry the client saw last
    upto: bytes                 # the listener's position when read
    entries: List[Entry]        # entitled, resumable entries in (sid, upto]
    size: int                   # their bytes
    last_id: str


class _Reset(NamedTuple):
    last_id: str


class Replay:
    """Resumes sessions from ``keys.stream`` (through ``client``), in step
    with ``listener``; ``maxlen`` bounds every scan."""

    def __init__(self, broker: Any, client: Any, keys: Keys, listener: Listener, *,
                 maxlen: int, wait: float) -> None:
        self.broker = broker
        self.client = client
        self.keys = keys
        self.listener = listener
        self.maxlen = maxlen
        self.wait = wait
        self.uids_complete = False
        self._loading = threading.Lock()
        self.replays = 0
        self.resets = 0

    # -- outside the lock --------------------------------------------------------

    def prepare(self, last_id: str, client_id: str, topics: Any) -> Any:
        """A plan for :meth:`complete`; raises the backplane's connection
        errors (the caller turns them into a reset)."""
        listener = self.listener
        listener.ready.wait(self.wait)
        upto = listener.delivered
        if upto is None:
            return _Reset(last_id)
        found = self._resolve(last_id, upto)
        if found is None:
            return _Reset(last_id)
        sid, epoch = found
        if seq_of(sid) > seq_of(upto):
            # The client has seen entries this process has not delivered yet.
            got = cast(_Raw, self.client.xrange(self.keys.stream, sid, sid, count=1))
            if not got or decode(*got[0]).epoch != epoch:
                return _Reset(last_id)
            return _Plan(sid, upto, [], 0, last_id)
        return self._read(sid, epoch, upto, last_id, client_id, topics)

    def _read(self, sid: bytes, epoch: bytes, upto: bytes, last_id: str,
              client_id: str, topics: Any) -> Any:
        limit_n, limit_bytes = self.broker.queue_size, self.broker.queue_bytes
        out: List[Entry] = []
        size = 0
        start: bytes = sid
        first = True
        prev: Optional[Entry] = None
        scanned = 0
        while True:
            page = cast(_Raw, self.client.xrange(self.keys.stream, start, upto, count=PAGE))
            if first:
                if not page or page[0][0] != sid:
                    return _Reset(last_id)      # trimmed away (or never there)
            for raw_sid, fields in page:
                entry = decode(raw_sid, fields)
                if prev is None:
                    if entry.epoch != epoch:
                        return _Reset(last_id)  # the id is of another dataset
                elif not _follows(prev, entry):
                    return _Reset(last_id)      # a hole in the history
                prev = entry
                if first:
                    first = False
                    continue                    # the entry the client has
                if entry.resumable and entitled(entry.kind, entry.name, client_id, topics):
                    out.append(entry)
                    size += len(entry.wire)
                    if len(out) > limit_n or size > limit_bytes:
                        return _Reset(last_id)
            scanned += len(page)
            if len(page) < PAGE or page[-1][0] == upto or scanned > self.maxlen * 2:
                break
            start = after(page[-1][0])
        return _Plan(sid, upto, out, size, last_id)

    def _resolve(self, last_id: str, upto: bytes) -> Optional[Tuple[bytes, bytes]]:
        """``(stream id, epoch)`` of the entry a ``Last-Event-ID`` names."""
        uid = last_id.encode("utf-8", "replace")
        found = self.listener.uids.get(uid)
        if found is not None:
            return found
        auto = parse_auto_id(last_id)
        if auto is not None:
            return auto[1], auto[0]
        # Entries this process has not delivered yet (the client is ahead).
        tail = cast(_Raw, self.client.xrevrange(self.keys.stream, "+", after(upto),
                                                count=PAGE))
        for raw_sid, fields in tail:
            if fields.get(b"u") == uid:
                return raw_sid, fields.get(b"e", b"")
        if not self.uids_complete:
            self._load_uids(upto)
            return self.listener.uids.get(uid)
        return None

    def _load_uids(self, upto: bytes) -> None:
        """Fill the listener's id map from the stream once per process (the
        listener keeps it current afterwards)."""
        with self._loading:
            if self.uids_complete:
                return
            loaded: OrderedDict[bytes, Tuple[bytes, bytes]] = OrderedDict()
            hi: bytes = upto
            chunks = []
            seen = 0
            while seen <= self.maxlen:
                got = cast(_Raw, self.client.xrevrange(self.keys.stream, hi, "-", count=1000))
                chunks.append(got)
                seen += len(got)
                if len(got) < 1000:
                    break
                low = seq_of(got[-1][0])
                if low == (0, 0):
                    break
                hi = (b"%d-%d" % (low[0], low[1] - 1) if low[1]
                      else b"%d-%d" % (low[0] - 1, (1 << 64) - 1))
            for got in reversed(chunks):
                for raw_sid, fields in reversed(got):
                    uid = fields.get(b"u")
                    if uid is not None:
                        loaded.pop(uid, None)
                        loaded[uid] = (raw_sid, fields.get(b"e", b""))
            listener = self.listener

            def commit() -> None:
                # Under the registry lock: entries delivered meanwhile are newer.
                for uid, value in listener.uids.items():
                    loaded.pop(uid, None)
                    loaded[uid] = value
                while len(loaded) > listener.uids_cap:
                    loaded.popitem(last=False)
                listener.uids = loaded
            self.broker.deliver_local([], commit=commit)
            self.uids_complete = True

    # -- under the lock ------------------------------------------------------------

    def complete(self, session: Any, plan: Any) -> None:
        """Queue the replay (or the reset) before any live event."""
        if isinstance(plan, _Plan):
            entries = self._top_up(session, plan)
            if entries is not None:
                self.replays += 1
                session.preload([e.wire for e in entries])
                if seq_of(plan.sid) > seq_of(cast(bytes, self.listener.delivered)):
                    self.listener.floors[session] = seq_of(plan.sid)
                return
        self.resets += 1
        session.preload([reset_event(plan.last_id).encode()])

    def _top_up(self, session: Any, plan: _Plan) -> Optional[List[Entry]]:
        now = cast(bytes, self.listener.delivered)
        low = max(plan.sid, plan.upto, key=seq_of)
        if seq_of(now) <= seq_of(low):
            return plan.entries
        more = self.listener.ring_after(low, now)
        if more is None:
            return None     # the listener moved on further than its memory
        out = list(plan.entries)
        size = plan.size
        cid, topics = session.client_id, session.topics
        for entry in more:
            if entry.resumable and entitled(entry.kind, entry.name, cid, topics):
                out.append(entry)
                size += len(entry.wire)
        if len(out) > self.broker.queue_size or size > self.broker.queue_bytes:
            return None
        return out

    @staticmethod
    def reset(last_id: str) -> _Reset:
        return _Reset(last_id)


def _follows(prev: Entry, entry: Entry) -> bool:
    """Whether ``entry`` comes right after ``prev`` in one dataset (entries
    of an older gosse carry no sequence: taken as following)."""
    if entry.epoch != prev.epoch:
        return False
    return not (prev.seq and entry.seq) or entry.seq == prev.seq + 1
