"""The listener: one thread per process that reads the event stream in order
and hands each batch to the broker's local sessions, and that notices when
the stream cannot give it every entry.

Position and gaps
-----------------

The listener's state is where it is in the stream (``position``, the last
entry it delivered, or a starting point), the dataset ``epoch`` and the
``seq`` of that entry.  Every entry carries its epoch and sequence number
(:mod:`.entries`), so after every read:

* the next sequence number, same epoch: delivered;
* a sequence number at or below the last one, same epoch: already
  delivered (a read repeated after a reconnect), skipped;
* a jump, or another epoch: entries are missing (trimmed while this
  listener lagged more than the stream's length, lost in a restart or a
  flush, or in a failover).  Every local stream gets ``gosse-reset`` before
  the entry that follows the gap; the gap is counted and logged.

After a lost connection the listener also checks that its position is still
in the stream: a Redis that came back with other data (a failover to a
replica that had not received the last entries, a restart from an older
snapshot) no longer has it, which is a gap too.

A listener that could not reach Redis when it started begins at the point of
its first attempt, measured on Redis's clock (its ``TIME`` minus the seconds
the listener has waited), so the sessions opened during the outage get what
other processes publish once Redis is back.

Ownership: the listener thread is the only writer of the state above, of
the ring of recent entries and of the id map.  What replay reads of them
(``delivered``, ``epoch``, ``ring``) is updated inside the ``commit`` of
:meth:`~gosse.Broker.deliver_local`, under the broker's registry lock, so
that a session registered under that lock sees a consistent snapshot.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, cast

from ...event import RESET_EVENT, Event
from .entries import Entry, Keys, decode, seq_of

__all__ = ["Listener"]

log = logging.getLogger("gosse.backplane")

# A reset marker in the ring (a gap the listener told its streams about).
_GAP_SEQ = -1
_GAP_WIRE = Event("", event=RESET_EVENT).encode()
# Entries kept in memory for replays completing while the listener moves on.
RING_SIZE = 4096
# A gap log line at most this often (seconds); the count is in stats().
_LOG_EVERY = 10.0
# After a read of fewer entries than this, the next read waits LINGER
# seconds: at most that much latency, for far fewer reads at a steady rate.
LINGER_BELOW = 64
LINGER = 0.002


class Listener:
    """Reads ``keys.stream`` with ``XREAD BLOCK`` on ``client`` (a
    ``redis.Redis`` of its own) and delivers to ``broker``.

    ``on_up(exc)`` / ``on_down(exc)`` report the connection's state to the
    backplane; ``errors`` is the tuple of exceptions that mean Redis is
    unreachable.
    """

    def __init__(self, broker: Any, connection: Any, keys: Keys, *, block: float, batch: int,
                 max_backoff: float, errors: Tuple[type, ...],
                 on_up: Callable[[], None], on_down: Callable[[BaseException], None]) -> None:
        self.broker = broker
        self.connection = connection     # its listen_client and listener connection
        self.client = connection.listen_client
        self._conn: Any = None           # the connection XREAD is sent on (this thread's)
        self.keys = keys
        self.block_ms = max(1, int(block * 1000))
        self.batch = batch
        self.max_backoff = max_backoff
        self.errors = errors
        self.on_up = on_up
        self.on_down = on_down
        self.stop = threading.Event()
        self.ready = threading.Event()    # set once the position is known (or first failed)
        # Written by the listener thread; the replayable view under the broker's
        # registry lock (see the module docstring).
        self.delivered: Optional[bytes] = None     # last entry delivered (or start point)
        self.epoch: Optional[bytes] = None         # dataset epoch, None: adopt the next
        self.seq: Optional[int] = None             # sequence of `delivered`, None: any next
        self.ring: Deque[Entry] = deque()
        self.ring_from: Tuple[int, ...] = (0, 0)   # the ring holds every entry after it
        self.uids: OrderedDict[bytes, Tuple[bytes, bytes]] = OrderedDict()  # uid -> (sid, epoch)
        self.uids_cap = 0
        self.verify = False           # check the position after a reconnect
        #: Sessions resuming ahead of this process: stream -> position to skip
        #: up to.  Written under the registry lock (replay, deliver_local).
        self.floors: Dict[Any, Any] = {}
        # Counters (listener thread only).
        self.received = 0
        self.gaps = 0
        self.resets = 0
        self.cpu = 0.0                # this thread's CPU seconds (read by stats())
        self.lag_ms = 0
        self._last_gap_log = 0.0
        self._first_attempt: Optional[float] = None
        self._init_failed = False
        self.thread = threading.Thread(target=self._run, name="gosse-redis-listener",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    # -- the loop ------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        stop = self.stop
        while not stop.is_set():
            try:
                if self.delivered is None or self.verify:
                    # These go through the client's pool; and after a lost
                    # connection or a failover the next connection must be
                    # a new one (to the current master, with Sentinel).
                    self._give_back(broken=True)
                    if self.delivered is None:
                        self._init_position()
                    else:
                        self._verify_position()
                entries = self._read()
            except Exception as exc:  # RedisError, OSError, parser errors
                self._give_back(broken=True)
                if stop.is_set():
                    break
                self.ready.set()      # nobody waits longer for a position
                if self.delivered is None:
                    self._init_failed = True
                if isinstance(exc, self.errors):
                    self.on_down(exc)
                    self.verify = self.delivered is not None
                else:  # pragma: no cover - a bug; keep the thread alive
                    log.exception("Redis backplane listener error")
                backoff = min(self.max_backoff, backoff * 2 if backoff else 0.05)
                stop.wait(backoff * random.uniform(0.5, 1.0))
                continue
            backoff = 0.0
            self.on_up()
            if entries:
                try:
                    self._deliver(entries)
                except Exception:  # pragma: no cover - a bug; keep the thread alive
                    log.exception("Redis backplane delivery error")
                self.cpu = time.thread_time()    # all of this thread's CPU so far
                if len(entries) < LINGER_BELOW:
                    # Not behind: let what arrives next gather for a moment,
                    # so that it is read and delivered as one batch (one read,
                    # one queue put or one send per stream) rather than one
                    # entry at a time.
                    stop.wait(LINGER)
        self._give_back(broken=True)

    def _read(self) -> List[Any]:
        """One ``XREAD BLOCK``: the entries after ``delivered`` (may be none)."""
        conn = self._conn
        if conn is None:
            conn = self._conn = self.connection.checkout_listener()
        conn.send_command("XREAD", "COUNT", self.batch, "BLOCK", self.block_ms,
                          "STREAMS", self.keys.stream, self.delivered)
        resp = conn.read_response()
        if not resp:
            return []
        if isinstance(resp, dict):               # RESP3: {stream: entries}
            return cast(List[Any], next(iter(resp.values())))
        return cast(List[Any], resp[0][1])       # RESP2: [[stream, entries]]

    def _give_back(self, broken: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self.connection.release_listener(conn, broken=broken)
            except Exception:  # pragma: no cover - best effort
                pass

    def _init_position(self) -> None:
        """Start after the stream's last entry; or, when Redis could not be
        reached at the first attempt, at the time of that attempt."""
        now = time.monotonic()
        if self._first_attempt is None:
            self._first_attempt = now
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.xrevrange(self.keys.stream, "+", "-", count=1)
        (secs, micros), last = pipe.execute()
        if not self._init_failed:
            if last:
                entry = decode(*last[0])
                start, epoch, seq = entry.sid, entry.epoch, entry.seq
            else:
                start, epoch, seq = b"0-0", None, None
        else:
            waited_ms = int((now - self._first_attempt) * 1000) + 1000
            start_ms = max(0, secs * 1000 + micros // 1000 - waited_ms)
            start, epoch, seq = b"%d-0" % start_ms, None, None
            log.info("Redis backplane: delivering what was published since the first "
                     "attempt to reach Redis, %.1f s ago", now - self._first_attempt)

        def commit() -> None:
            self.delivered, self.epoch, self.seq = start, epoch or None, seq or None
            self.ring.clear()
            self.ring_from = seq_of(start)
        self.broker.deliver_local([], commit=commit)
        self.verify = False
        self.ready.set()

    def _verify_position(self) -> None:
        """After a lost connection: is the last delivered entry still there?
        If not, and it was not trimmed away, Redis came back with other
        data (failover, older snapshot, restart): a gap."""
        pos = cast(bytes, self.delivered)
        if self.seq is not None:
            pipe = self.client.pipeline(transaction=False)
            pipe.xrange(self.keys.stream, pos, pos, count=1)
            pipe.xrange(self.keys.stream, "-", "+", count=1)
            pipe.xrevrange(self.keys.stream, "+", "-", count=1)
            here, first, last = pipe.execute()
            trimmed = bool(first) and seq_of(first[0][0]) > seq_of(pos)
            if not here and not trimmed:
                # Read on from where the new data and ours last agree: after
                # its last entry if that is older than ours (a replica that
                # had not received our last entries), else after ours.
                resume = min(pos, last[0][0], key=seq_of) if last else b"0-0"
                self._gap("Redis no longer has the last entry delivered (restarted, "
                          "flushed or failed over)", resume)
        self.verify = False

    # -- delivery ----------------------------------------------------------------

    def _deliver(self, raw: List[Any]) -> None:
        batch: List[Tuple[Any, str, Optional[str], bytes]] = []
        kept: List[Entry] = []
        epoch, seq = self.epoch, self.seq
        for sid, fields in raw:
            entry = decode(sid, fields)
            if entry.seq:
                if epoch is None or seq is None:
                    epoch, seq = entry.epoch, entry.seq
                elif entry.epoch != epoch:
                    self._count_gap(f"a new dataset (epoch {entry.epoch.decode()!r} "
                                    f"after {epoch.decode()!r})", batch, kept, entry.pos)
                    epoch, seq = entry.epoch, entry.seq
                elif entry.seq <= seq:
                    continue      # delivered already
                elif entry.seq != seq + 1:
                    self._count_gap(f"{entry.seq - seq - 1} entries missing (trimmed "
                                    "before this process read them)", batch, kept, entry.pos)
                    seq = entry.seq
                else:
                    seq = entry.seq
            batch.append((entry.pos, entry.kind, entry.name, entry.wire))
            kept.append(entry)
        self.received += len(raw)
        last_sid = raw[-1][0]
        uids = [(e.uid, e.sid, e.epoch) for e in kept if e.uid is not None]
        new_epoch = self.epoch is not None and epoch != self.epoch

        def commit() -> None:
            # Under the broker's registry lock, with the batch's recipients.
            self.delivered, self.epoch, self.seq = last_sid, epoch, seq
            ring = self.ring
            ring.extend(kept)
            while len(ring) > RING_SIZE:
                self.ring_from = ring.popleft().pos
            m = self.uids
            if new_epoch:
                m.clear()
            for uid, sid, e in uids:
                m.pop(uid, None)
                m[uid] = (sid, e)
            while len(m) > self.uids_cap:
                m.popitem(last=False)

        self.broker.deliver_local(batch, floors=self.floors, commit=commit)
        self.lag_ms = max(0, int(time.time() * 1000) - seq_of(last_sid)[0])

    def _count_gap(self, why: str, batch: List[Tuple[Any, str, Optional[str], bytes]],
                   kept: List[Entry], pos: Tuple[int, ...]) -> None:
        """Put a reset for every local stream before the entry at ``pos``."""
        # Between the entry before ``pos`` and it, whatever that one is.
        before = (pos[0], pos[1] - 1, 1) if pos[1] else (pos[0] - 1, 1 << 64, 1)
        batch.append((before, "all", None, _GAP_WIRE))
        kept.append(Entry(b"", before, b"", _GAP_SEQ, "all", None, None, False, _GAP_WIRE))
        self._note_gap(why)

    def _gap(self, why: str, resume: bytes) -> None:
        """Reset every local stream now (no entry follows yet) and read on
        after ``resume``."""
        p = seq_of(resume)
        marker = Entry(b"", (p[0], p[1], 1), b"", _GAP_SEQ, "all", None, None, False,
                       _GAP_WIRE)   # just after `resume`, before whatever follows it

        def commit() -> None:
            # What the ring held is of the old data: a replay from it resets.
            self.ring.clear()
            self.ring.append(marker)
            self.ring_from = p
            self.delivered = resume
            self.epoch = self.seq = None     # adopt what the new data holds
        self.broker.deliver_local([(None, "all", None, _GAP_WIRE)], commit=commit)
        self._note_gap(why)

    def _note_gap(self, why: str) -> None:
        self.gaps += 1
        n = self.broker.local_count("all", None)
        self.resets += n
        now = time.monotonic()
        if now - self._last_gap_log >= _LOG_EVERY:
            self._last_gap_log = now
            log.warning("Redis backplane: %s; %d local streams were sent %s "
                        "(gaps so far: %d)", why, n, RESET_EVENT, self.gaps)

    # -- replay support ------------------------------------------------------------

    def ring_after(self, low: bytes, high: bytes) -> Optional[List[Entry]]:
        """Under the registry lock: the delivered entries after ``low`` up to
        ``high`` from the ring, or None if the ring does not reach back to
        ``low`` or a gap lies between them."""
        lo, hi = seq_of(low), seq_of(high)
        ring = self.ring
        if lo < self.ring_from:
            return None
        out = []
        for entry in reversed(ring):
            if entry.pos <= lo:
                break
            if entry.pos <= hi:
                if entry.seq == _GAP_SEQ:
                    return None
                out.append(entry)
        out.reverse()
        return out
