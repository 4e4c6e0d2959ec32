"""One SSE session's state: its mailbox of encoded events and its lifecycle.

A :class:`Session` is what the broker registers and delivers to.  Its parts
have one owner each:

* the :class:`Mailbox` is filled by whoever holds the broker's delivery lock
  (a broadcasting thread, a backplane listener) and emptied by the session's
  stream thread (the WSGI server thread iterating :class:`~gosse.body.SessionStream`);
* after a hand-over (:mod:`gosse.writer`) the socket and the outgoing bytes
  belong to the broker's writer thread until it gives them back;
* the lifecycle fields (``end_reason``, ``abort``, ``released``,
  ``sock_released``) change only under the session's own ``lock``, which is
  never held across a blocking call.
"""
from __future__ import annotations

import socket
import threading
import time
from collections import deque
from typing import Callable, Deque, FrozenSet, Iterable, List, Optional, Tuple

__all__ = ["Session", "Mailbox", "ENDED_BY_CLIENT", "ENDED_BY_APP", "ENDED_BY_BROKER",
           "ENDED_SLOW", "ENDED_BY_AGE", "ENDED_NOT_SERVED"]

# Why a session ended (Session.end_reason, ClientConnection.end_reason).
ENDED_BY_CLIENT = "disconnected"   # a write failed, the peer closed, the server closed us
ENDED_BY_APP = "closed"            # ClientConnection.close()
ENDED_BY_BROKER = "broker closed"  # Broker.close()
ENDED_SLOW = "slow reader"         # the session's queue overflowed (events or bytes)
ENDED_BY_AGE = "max age"           # max_connection_age reached
ENDED_NOT_SERVED = "not served"    # no server began sending the response in time

_RETIRED: Tuple[()] = ()

#: Most bytes one ``next()`` of the WSGI body (or one hand-over) takes from
#: a backlog at once, so that draining a lagging session never copies its
#: whole queue.
TAKE_LIMIT = 256 * 1024


class Mailbox:
    """Encoded events waiting for one session, bounded by count and bytes.

    One producer at a time (the broker's delivery lock), one consumer (the
    stream thread).  ``put`` never blocks; ``wait`` is the consumer's only
    blocking call and always has a timeout.  The wake-up signal is a lock
    held while there is nothing new, which costs less than a condition
    variable on the broadcast path.
    """

    __slots__ = ("_items", "_wake", "max_items", "max_bytes", "_bytes_in", "_bytes_out")

    def __init__(self, max_items: int, max_bytes: int):
        self._items: Deque[bytes] = deque()
        self._wake = threading.Lock()
        self._wake.acquire()          # locked = "nothing new"
        self.max_items = max_items
        self.max_bytes = max_bytes
        # Each counter has one writer (producer / consumer): their difference
        # is the queued byte count without a shared read-modify-write.
        self._bytes_in = 0
        self._bytes_out = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_bytes(self) -> int:
        return self._bytes_in - self._bytes_out

    def put(self, chunk: bytes) -> bool:
        """Queue ``chunk``; False (nothing queued) if the mailbox is full.  An
        empty mailbox takes any chunk, so one large event always fits."""
        items = self._items
        if items and (len(items) >= self.max_items
                      or self._bytes_in - self._bytes_out + len(chunk) > self.max_bytes):
            return False
        items.append(chunk)
        self._bytes_in += len(chunk)
        self.signal()
        return True

    def take(self, limit: int = TAKE_LIMIT) -> bytes:
        """Consumer: up to about ``limit`` bytes of queued chunks, joined
        (``b""`` if none)."""
        items = self._items
        if not items:
            return b""
        first = items.popleft()
        size = len(first)
        if not items or size >= limit:
            self._bytes_out += size
            return first
        out = [first]
        pop = items.popleft
        while items and size < limit:
            chunk = pop()
            out.append(chunk)
            size += len(chunk)
        self._bytes_out += size
        return b"".join(out)

    def take_all(self) -> List[bytes]:
        """Consumer: every queued chunk, in order."""
        items = self._items
        out = []
        while items:
            out.append(items.popleft())
        self._bytes_out += sum(map(len, out))
        return out

    def retire(self) -> List[bytes]:
        """Consumer, at the hand-over to the writer (under the broker's
        delivery lock): every queued chunk; the mailbox then holds nothing
        and takes nothing (the writer buffers the session's bytes), and its
        deque is freed (memory per idle stream)."""
        out = self.take_all()
        self._items = _RETIRED   # type: ignore[assignment]
        return out

    def wait(self, timeout: float) -> bool:
        """Consumer: block until something is put or :meth:`signal` is
        called, at most ``timeout`` seconds; return whether woken."""
        return self._wake.acquire(timeout=max(0.0, timeout))

    def signal(self) -> None:
        """Wake the consumer (any thread)."""
        if self._wake.locked():
            try:
                self._wake.release()
            except RuntimeError:   # another thread released it first
                pass


class Session:
    """The broker's record of one open SSE session (see the module doc for
    who owns what).  ``release`` is called by the broker with this session
    when it must be removed: exactly once, by whichever party ended it."""

    __slots__ = ("client_id", "session_id", "topics", "mailbox", "heartbeat", "deadline",
                 "sock", "lock", "end_reason", "abort", "released", "served",
                 "sock_released", "handed_over", "last_next", "created", "preloaded",
                 "_done", "finished", "close_by", "abandoned", "served_at", "in_next", "_release", "__weakref__")

    def __init__(self, client_id: str, session_id: str, topics: FrozenSet[str],
                 mailbox: Mailbox, heartbeat: float, deadline: Optional[float],
                 sock: Optional[socket.socket], release: Callable[[Session], None]):
        self.client_id = client_id
        self.session_id = session_id
        self.topics = topics
        self.mailbox = mailbox
        self.heartbeat = heartbeat
        self.deadline = deadline          # monotonic time of max_connection_age, or None
        self.sock = sock                  # the client socket if the server exposes it
        self.lock = threading.Lock()
        self.end_reason: Optional[str] = None   # set once, under lock
        self.abort = False                # under lock: discard output, cut the connection
        self.released = False             # under lock: removed from the broker
        self.served = False               # stream thread: a server is sending the response
        self.served_at = 0.0              # stream thread: when served became True
        self.sock_released = False        # under lock: the response is over; never touch sock
        self.handed_over = False          # under the broker's delivery lock: the writer owns sock
        self.last_next = time.monotonic()  # stream thread: when next() last returned
        self.in_next = False              # stream thread: inside next() (waiting for events)
        self.created = self.last_next
        self.preloaded: Tuple[bytes, ...] = ()   # replay, sent before live events
        self._done: Optional[threading.Event] = None   # made on first use, under lock
        self.finished = False             # under lock: released and done set
        self.close_by: Optional[float] = None   # monotonic deadline of a clean end
        self.abandoned = False            # its ClientConnection was freed (see abandon)
        self._release = release

    @property
    def ending(self) -> bool:
        return self.end_reason is not None

    @property
    def done(self) -> threading.Event:
        """A :class:`threading.Event` set once the session is released
        (made when first asked for: most sessions never are, and an Event
        costs about 1 KiB per idle stream)."""
        done = self._done
        if done is None:
            with self.lock:
                done = self._done
                if done is None:
                    done = self._done = threading.Event()
                    if self.finished:
                        done.set()
        return done

    def mark_done(self) -> None:
        """The broker removed the session: set ``done``."""
        with self.lock:
            self.finished = True
            done = self._done
        if done is not None:
            done.set()

    def abandon(self, _ref: object = None) -> None:
        """Weak-reference callback: nothing holds this session's connection
        or stream any more.  Only a flag (it may run inside any thread's
        garbage collection, holding any lock); the broker's janitor ends
        and releases the session."""
        self.abandoned = True

    def preload(self, chunks: Iterable[bytes]) -> None:
        """Queue a replay before any live event (called while registering,
        under the broker's registry lock); it is sent with the first bytes
        and does not count against the mailbox bound."""
        self.preloaded += tuple(chunks)

    def end(self, reason: str, *, abort: bool = False) -> bool:
        """Ask the session to finish: after what is queued, or at once with
        ``abort`` (the output is discarded and the connection cut).  The
        first reason wins; returns whether this call set it."""
        with self.lock:
            first = self.end_reason is None
            if first:
                self.end_reason = reason
            if abort:
                self.abort = True
        self.mailbox.signal()
        return first

    def shutdown_socket(self) -> bool:
        """Cut the client connection so that a server thread stuck writing
        to a reader that stopped reading is freed.  Only while a server is
        sending this response: a socket whose response has not started, or
        that already carries the next request, is never touched."""
        sock = self.sock
        if sock is None:
            return False
        with self.lock:
            if not self.served or self.sock_released:
                return False
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                return False
        return True

    def socket_closed(self) -> bool:
        """Whether the server has closed this response's connection (so it
        will never ask for more of the body)."""
        sock = self.sock
        try:
            return sock is not None and sock.fileno() == -1
        except (OSError, ValueError):
            return True

    def give_back_socket(self) -> None:
        """Stream thread: the response is over for us (the server writes the
        rest, or handles the next request on this connection)."""
        with self.lock:
            self.sock_released = True

    def release(self, reason: str = ENDED_BY_CLIENT) -> None:
        """Remove the session from the broker (once; later calls do nothing)."""
        with self.lock:
            if self.released:
                return
            self.released = True
            if self.end_reason is None:
                self.end_reason = reason
        self.mailbox.signal()
        self._release(self)

    def __repr__(self) -> str:
        return f"<Session {self.client_id!r} {self.session_id} {self.end_reason or 'open'}>"
