"""The per-session WSGI response body: an iterable that blocks on its queue.

A :class:`SessionStream` is what a WSGI server iterates for one open SSE
response.  Producers call :meth:`SessionStream.put` with already-encoded
bytes; the server thread, inside ``next()``, takes everything queued and
writes it as one chunk.  The queue is a ``deque`` plus a lock used as a
one-shot wake-up signal, which costs a fraction of ``queue.Queue.put`` (no
condition variable, no lock held while appending) on the broadcast path.
"""
from __future__ import annotations

import socket
import threading
import time
from collections import deque
from typing import Callable, List, Optional

from .event import HEARTBEAT

__all__ = ["SessionStream"]

# Why a stream ended (SessionStream.end_reason).
ENDED_BY_CLIENT = "disconnected"   # the write failed or the server closed us
ENDED_BY_APP = "closed"            # ClientConnection.close()
ENDED_BY_BROKER = "broker closed"  # Broker.close()
ENDED_SLOW = "slow reader"         # the session's queue overflowed
ENDED_BY_AGE = "max age"           # max_connection_age reached


class SessionStream:
    """The WSGI body iterable of one SSE session.

    ``put(chunk)`` never blocks: it appends to a bounded deque and wakes the
    server thread.  When the deque is full the stream is ended (the client
    reconnects and resumes by ``Last-Event-ID``) and ``put`` returns False.
    ``next()`` returns everything queued as one bytes chunk, or a heartbeat
    comment after ``heartbeat_interval`` seconds of silence.  ``close()``
    (called by the WSGI server when the response is over, for whatever
    reason) runs ``on_close`` exactly once.
    """

    def __init__(self, first_bytes: bytes, heartbeat_interval: float, max_queued: int,
                 on_close: Callable[["SessionStream"], None],
                 sock: Optional[socket.socket] = None,
                 deadline: Optional[float] = None):
        self._items: deque = deque()
        self._wake = threading.Lock()
        self._wake.acquire()  # locked = "nothing new"; put() releases it
        self._first = first_bytes
        self._heartbeat = heartbeat_interval
        self._max_queued = max_queued
        self._on_close = on_close
        self._sock = sock
        self._deadline = deadline
        self._close_lock = threading.Lock()
        self.ending = False          # no more output: finish after the queue drains
        self.end_reason: Optional[str] = None
        self.closed = False          # close() ran
        self.started = False         # the server began iterating

    # -- producer side -------------------------------------------------

    def put(self, chunk: bytes) -> bool:
        """Queue encoded bytes for this stream; never blocks.

        Returns False if the stream is ending, or was just ended because its
        queue is full (a reader that does not keep up).
        """
        if self.ending:
            return False
        items = self._items
        if len(items) >= self._max_queued:
            self.end(ENDED_SLOW, abort=True)
            return False
        items.append(chunk)
        if self._wake.locked():
            try:
                self._wake.release()
            except RuntimeError:  # another producer released it first
                pass
        return True

    def preload(self, chunks: List[bytes]) -> None:
        """Queue chunks before the stream starts (a replay), regardless of
        the queue bound: they go out with the first bytes."""
        self._items.extend(chunks)

    def queued(self) -> int:
        """How many chunks wait to be written."""
        return len(self._items)

    def end(self, reason: str, *, abort: bool = False) -> None:
        """Finish the response: after what is queued (``abort=False``), or at
        once, shutting the socket down so a server thread stuck writing to a
        reader that stopped reading is freed (``abort=True``)."""
        if not self.ending:
            self.end_reason = reason
            self.ending = True
        if abort:
            self._items.clear()
            self.shutdown_socket()
        try:
            self._wake.release()
        except RuntimeError:
            pass

    def shutdown_socket(self) -> None:
        """Shut the client socket down (if the server exposed it): the
        server's pending or next write fails and it closes the response."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- WSGI side -------------------------------------------------------

    def __iter__(self) -> "SessionStream":
        return self

    def __next__(self) -> bytes:
        items = self._items
        if not self.started:
            self.started = True
            if items:
                return self._first + self._drain(items)
            return self._first
        while True:
            if items:
                return self._drain(items)
            if self.ending or self.closed:
                raise StopIteration
            timeout = self._heartbeat
            if self._deadline is not None:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self.end(ENDED_BY_AGE)
                    continue
                timeout = min(timeout, left)
            if not self._wake.acquire(timeout=timeout) and not items:
                if self._deadline is None or time.monotonic() < self._deadline:
                    return HEARTBEAT

    @staticmethod
    def _drain(items: deque) -> bytes:
        n = len(items)
        if n == 1:
            return items.popleft()
        pop = items.popleft
        return b"".join([pop() for _ in range(n)])

    def close(self) -> None:
        """Called by the WSGI server when the response is finished (PEP 3333);
        safe to call more than once or from any thread."""
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
        if not self.ending:
            self.end_reason = ENDED_BY_CLIENT
            self.ending = True
        self._items.clear()
        try:
            self._wake.release()
        except RuntimeError:
            pass
        self._on_close(self)
