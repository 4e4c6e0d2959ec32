"""The per-session WSGI response body: an iterable that blocks on its queue.

A :class:`SessionStream` is what a WSGI server iterates for one open SSE
response.  Producers call :meth:`SessionStream.put` with already-encoded
bytes; the server thread, inside ``next()``, takes everything queued and
writes it as one chunk.  The queue is a ``deque`` plus a lock used as a
one-shot wake-up signal, which costs a fraction of ``queue.Queue.put`` (no
condition variable, no lock held while appending) on the broadcast path.

Direct writes: under a threaded server every delivery through the queue
wakes the stream's own thread, which then competes for the GIL; at a
thousand streams the wake-ups, not the Python code, are what the CPU does.
When the server is known to frame the body as HTTP/1.1 chunks on a plain
socket it hands to the app (gunicorn's sync and gthread workers, see
``direct_write_possible``), a stream switches, once the server has written
the response head and the first bytes, to writing events itself: the
producer sends the chunk-framed event straight to the socket with a
non-blocking send.  The stream's thread is woken only to finish what the
socket did not take (a partial send) and whatever was queued meanwhile,
which it writes in order, blocking in its own thread.  The server writes
the last chunk itself when the iteration ends.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import deque
from typing import Callable, List, NoReturn, Optional, Tuple

from .event import HEARTBEAT

__all__ = ["SessionStream", "direct_write_possible"]

# Why a stream ended (SessionStream.end_reason).
ENDED_BY_CLIENT = "disconnected"   # the write failed or the server closed us
ENDED_BY_APP = "closed"            # ClientConnection.close()
ENDED_BY_BROKER = "broker closed"  # Broker.close()
ENDED_SLOW = "slow reader"         # the session's queue overflowed
ENDED_BY_AGE = "max age"           # max_connection_age reached

_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_monotonic = time.monotonic


def frame_chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (RFC 9112, 7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def direct_write_possible(environ: dict, headers: List[Tuple[str, str]]) -> bool:
    """Whether a stream answering this request may write chunk-framed events
    to ``environ["gunicorn.socket"]`` itself.

    True for gunicorn's sync and gthread workers on a plain TCP socket,
    HTTP/1.1 and a method with a body (gunicorn then frames the body in
    chunks: no Content-Length is set); false for TLS, HTTP/1.0 or 2, HEAD,
    gevent/eventlet sockets and every other server.
    """
    if not _MSG_DONTWAIT:
        return False
    sock = environ.get("gunicorn.socket")
    return (isinstance(sock, socket.socket)          # not a gevent/eventlet socket
            and not isinstance(sock, ssl.SSLSocket)
            and sock.type == socket.SOCK_STREAM
            and str(environ.get("SERVER_SOFTWARE", "")).startswith("gunicorn")
            and environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
            and environ.get("REQUEST_METHOD") != "HEAD"
            and not any(name.lower() == "content-length" for name, _ in headers))


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
                 deadline: Optional[float] = None, direct: bool = False):
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
        # Direct writes (see the module docstring): allowed at all, active
        # (the server wrote the head and first bytes), who writes to the
        # socket now, and framed bytes a partial send left to write.
        self._direct_ok = direct and sock is not None
        self._direct = False
        self._write_lock = threading.Lock()
        self._partial = b""
        self._sent_at = 0.0          # time.monotonic() of the last direct write
        self.ending = False          # no more output: finish after the queue drains
        self.end_reason: Optional[str] = None
        self.closed = False          # close() ran
        self.started = False         # the server began iterating

    # -- producer side -------------------------------------------------

    def put(self, chunk: bytes, framed: Optional[bytes] = None) -> bool:
        """Queue encoded bytes for this stream (or, writing directly, send
        them); never blocks.  ``framed`` may give ``chunk`` already framed as
        an HTTP chunk, so that a broadcast frames it once.

        Returns False if the stream is ending, or was just ended because its
        queue is full (a reader that does not keep up).
        """
        if self.ending:
            return False
        if self._direct and self._write_lock.acquire(False):
            try:
                # Checked again under the lock: the stream thread turns
                # direct writes off (under it) before the server ends the body.
                if self._direct and not self._items and not self._partial:
                    return self._send_now(framed or frame_chunk(chunk))
            finally:
                self._write_lock.release()
        items = self._items
        if len(items) >= self._max_queued:
            self.end(ENDED_SLOW, abort=True)
            return False
        items.append(chunk)
        self._signal()
        return True

    def _send_now(self, framed: bytes) -> bool:
        # Under _write_lock, with nothing queued: the bytes go out in order.
        try:
            sent = self._sock.send(framed, _MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.end(ENDED_BY_CLIENT, abort=True)
            return False
        self._sent_at = _monotonic()
        if sent < len(framed):
            # The socket buffer is full: the stream thread writes the rest
            # (blocking), and what comes meanwhile is queued behind it.
            self._partial = framed[sent:]
            self._signal()
        return True

    def _signal(self) -> None:
        if self._wake.locked():
            try:
                self._wake.release()
            except RuntimeError:  # another thread released it first
                pass

    def preload(self, chunks: List[bytes]) -> None:
        """Queue chunks before the stream starts (a replay), regardless of
        the queue bound: they go out with the first bytes."""
        self._items.extend(chunks)

    @property
    def direct(self) -> bool:
        """Whether events are written straight to the socket now."""
        return self._direct

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
        if self._direct_ok:
            # The server has written the head and the first bytes.
            return self._serve_direct()
        while True:
            if items:
                return self._drain(items)
            if self.ending or self.closed:
                raise StopIteration
            timeout = self._wait_timeout()
            if timeout is None:
                continue
            if not self._wake.acquire(timeout=timeout) and not items:
                if self._deadline is None or time.monotonic() < self._deadline:
                    return HEARTBEAT

    def _wait_timeout(self) -> Optional[float]:
        """Seconds to wait for news before a heartbeat, or None once
        max_connection_age is reached (the stream was just ended)."""
        timeout = self._heartbeat
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                self.end(ENDED_BY_AGE)
                return None
            timeout = min(timeout, left)
        return timeout

    def _serve_direct(self) -> NoReturn:
        """Write to the socket from this thread until the stream ends, then
        return control to the server (which writes the last chunk)."""
        items = self._items
        lock = self._write_lock
        with lock:
            self._direct = True
            self._sent_at = _monotonic()
        try:
            while True:
                if items or self._partial:
                    with lock:
                        data = self._partial
                        self._partial = b""
                        if items:
                            data += frame_chunk(self._drain(items))
                        self._sock.sendall(data)
                        self._sent_at = _monotonic()
                    continue
                if self.ending or self.closed:
                    break
                timeout = self._wait_timeout()
                if timeout is None:
                    continue
                # Producers write without waking this thread: the silence
                # that calls for a heartbeat is counted from their last write.
                quiet = _monotonic() - self._sent_at
                timeout = max(0.0, min(timeout, self._heartbeat - quiet))
                if not self._wake.acquire(timeout=timeout):
                    with lock:
                        if (not items and not self._partial and not self.ending
                                and _monotonic() - self._sent_at >= self._heartbeat):
                            self._sock.sendall(frame_chunk(HEARTBEAT))
                            self._sent_at = _monotonic()
        except OSError:
            self.end(ENDED_BY_CLIENT, abort=True)
        finally:
            with lock:
                self._direct = False
                self._partial = b""
        raise StopIteration

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
