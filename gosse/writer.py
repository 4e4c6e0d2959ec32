"""The socket writer: one thread per broker that owns handed-over sockets.

Under a threaded server every delivery through a session's queue wakes that
session's server thread, which then competes for the GIL: at a thousand
streams the wake-ups, not the Python code, are what the CPU does.  Where the
server's framing is known exactly (:func:`handoff_socket`), a stream's
thread therefore hands its socket to the broker's :class:`SocketWriter` once
the server has written the response head and the first bytes, and parks.

The writer is the only party that touches a handed-over socket until it
gives it back.  It runs a selector loop over non-blocking sockets, each with
an out-buffer bounded in bytes; a broadcast hands it one framed buffer and
the tuple of recipients (one wake-up per event, not per session), and
partial sends, the slow-reader cut-off, heartbeats, ``max_connection_age``
and closing with a deadline are ordinary cases of that loop.  When a
session is finished the writer restores the socket's blocking mode and
wakes the parked stream thread, which returns to the server: the server
writes the last chunk and may reuse the connection.  A session the writer
cannot finish cleanly (the peer left, a slow reader, a flush past its
deadline) has its connection cut, so no byte ever follows a half-written
chunk.
"""
from __future__ import annotations

import _socket
import heapq
import itertools
import logging
import os
import selectors
import socket
import ssl
import sys
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from .event import HEARTBEAT
from .session import ENDED_BY_AGE, ENDED_BY_CLIENT, ENDED_SLOW, Session

__all__ = ["SocketWriter", "handoff_socket", "frame_chunk"]

log = logging.getLogger("gosse.writer")

_monotonic = time.monotonic
_MSG_PEEK = getattr(socket, "MSG_PEEK", 0)
_IOV_MAX = 64          # buffers per sendmsg call
_JOIN_LIMIT = 256 * 1024   # bytes of consecutive events joined into one send

# Inbox items (any thread appends; the writer thread pops).
_EVENT, _ADOPT, _FINISH, _STOP = range(4)
# Timer kinds.
_T_HEARTBEAT, _T_AGE, _T_DEADLINE = range(3)
#: Seconds (at least; two heartbeat intervals if longer) that a reader may
#: accept no byte while bytes wait for it before it counts as a slow reader.
STALLED_AFTER = 30.0
# An idle session's out-buffer: no deque until a send is partial.
_EMPTY: Deque[Any] = deque(maxlen=0)


def frame_chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (RFC 9112, 7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


# -- which servers may hand their socket over ---------------------------------

# The functions that may stand between the server's loop and the stream's
# ``__next__`` without changing a byte: Werkzeug's ClosingIterator (Flask
# wraps every response in one), its str-to-bytes encoder, which passes
# bytes through unchanged, and gosse's Django body wrapper.  Any other frame (a middleware's generator that
# may rewrite the body) keeps the stream on the WSGI iterable.
_PASS_THROUGH = {
    ("werkzeug.wsgi", "__next__"),
    ("werkzeug.wrappers.response", "_iter_encoded"),
    ("werkzeug.sansio.response", "_iter_encoded"),
    ("werkzeug.wrappers.response", "iter_encoded"),
    ("gosse.contrib.django", "__next__"),
}
# The server loops whose ``resp`` local frames the body as HTTP/1.1 chunks
# on a plain blocking socket (gunicorn's sync and gthread workers).
_SERVER_LOOPS = {
    ("gunicorn.workers.gthread", "handle_request"),
    ("gunicorn.workers.sync", "handle_request"),
}


def _green() -> bool:
    """Whether gevent or eventlet has patched this process's sockets or
    threads (their sockets wait cooperatively; a writer thread would not)."""
    gm = sys.modules.get("gevent.monkey")
    if gm is not None:
        try:
            if gm.is_module_patched("socket") or gm.is_module_patched("threading"):
                return True
        except Exception:   # pragma: no cover - an unknown gevent
            return True
    ep = sys.modules.get("eventlet.patcher")
    if ep is not None:
        try:
            if ep.is_monkey_patched("socket") or ep.is_monkey_patched("thread"):
                return True
        except Exception:   # pragma: no cover
            return True
    return False


def handoff_socket(environ: Dict[str, Any], caller: Any) -> Optional[socket.socket]:
    """The socket a stream may hand to the writer, or None.

    ``caller`` is the frame that called the stream's ``__next__``.  The
    answer is yes only for an exact allow-list: gunicorn's sync or gthread
    worker iterating the body itself (or through :data:`_PASS_THROUGH`
    frames only), its response object framing the body as HTTP/1.1 chunks
    with the head already sent (not HTTP/1.0, HEAD, Content-Length, the
    uwsgi protocol or HTTP/2), on a plain stdlib TCP or unix socket (not
    TLS, not a gevent/eventlet socket, in a process nobody monkey-patched).
    """
    sock = environ.get("gunicorn.socket")
    if (sock is None or not isinstance(sock, _socket.socket)
            or type(sock).__module__ != "socket" or isinstance(sock, ssl.SSLSocket)
            or sock.type != socket.SOCK_STREAM or _green()):
        return None
    frame = caller
    for _ in range(16):
        if frame is None:
            return None
        where = (frame.f_globals.get("__name__"), frame.f_code.co_name)
        if where in _SERVER_LOOPS:
            break
        if where not in _PASS_THROUGH:
            return None
        frame = frame.f_back
    else:
        return None
    resp = frame.f_locals.get("resp")
    if (type(resp).__name__ != "Response" or type(resp).__module__ != "gunicorn.http.wsgi"
            or getattr(resp, "chunked", None) is not True
            or getattr(resp, "headers_sent", None) is not True
            or getattr(resp, "sock", None) is not sock):
        return None
    return sock


# -- the writer -------------------------------------------------------------------


class _Out:
    """The writer thread's state for one handed-over session (only that
    thread reads or writes it)."""

    __slots__ = ("session", "sock", "timeout", "buf", "size", "last_write", "closing",
                 "reading", "mask", "finished", "gone")

    def __init__(self, session: Session, sock: socket.socket, timeout: Optional[float],
                 finished: Any):
        self.session = session
        self.sock = sock
        self.timeout = timeout           # the server's socket timeout, restored on return
        self.buf: Deque[Any] = _EMPTY    # bytes / memoryviews not yet sent (a deque once used)
        self.size = 0                    # bytes in buf
        self.last_write = _monotonic()
        self.closing = False             # finishing: no more events, flush then return
        self.reading = True              # watching for the peer's EOF
        self.mask = 0                    # events registered with the selector
        self.finished = finished         # a held lock, released when the stream thread may return
        self.gone = False                # no longer owned


class SocketWriter:
    """Owns the sockets that streams hand over (see the module docstring).

    Methods other than the thread's own loop only append to its inbox and
    wake it; every socket operation on a handed-over socket happens in the
    writer thread.  ``close_timeout`` bounds how long a clean end may take
    to flush before the connection is cut.
    """

    def __init__(self, close_timeout: float = 1.0):
        self.close_timeout = close_timeout
        self.pid = os.getpid()
        self._inbox: Deque[Tuple[Any, ...]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sleeping = False           # writer thread: about to block in select()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._owned: Dict[Session, _Out] = {}   # writer thread only
        self._timers: List[Tuple[float, int, int, _Out]] = []   # writer thread only
        self._count = itertools.count()
        self._stopping = False           # writer thread only (set from a _STOP item)
        self.alive = True                # writer thread clears it when its loop ends
        self._thread = threading.Thread(target=self._run, name="gosse-writer", daemon=True)
        self._thread.start()

    # -- any thread -------------------------------------------------------------

    @property
    def owned(self) -> int:
        """How many sessions the writer holds now."""
        return len(self._owned)

    def queued(self) -> int:
        """How many buffers wait in the writer for their sockets (for stats;
        read from another thread, so only an estimate)."""
        return sum(len(out.buf) for out in list(self._owned.values()))

    def adopt(self, session: Session, sock: socket.socket, pending: List[bytes]) -> Any:
        """Take over ``sock`` for ``session``, first sending ``pending`` (the
        events its mailbox held).  Called under the broker's delivery lock,
        so that no event for the session is handed over before this.  Returns
        a held lock that the writer releases when the stream thread may
        return (a lock costs a tenth of a threading.Event per idle stream):
        wait with ``acquire(timeout=...)``."""
        finished = threading.Lock()
        finished.acquire()
        self._submit((_ADOPT, session, sock, pending, finished))
        return finished

    def deliver(self, framed: bytes, recipients: Tuple[Session, ...]) -> None:
        """Send ``framed`` (chunk-framed event bytes) to those of
        ``recipients`` the writer holds.  Called in event order."""
        self._submit((_EVENT, framed, recipients))

    def finish(self, session: Session, timeout: Optional[float] = None) -> None:
        """The session was asked to end (its ``end_reason`` and ``abort`` say
        how): flush and return it within ``timeout`` seconds (default
        ``close_timeout``), or cut it."""
        self._submit((_FINISH, session, self.close_timeout if timeout is None else timeout))

    def stop(self) -> None:
        """End the thread once it holds no session (the broker closed)."""
        self._submit((_STOP,))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _submit(self, item: Tuple[Any, ...]) -> None:
        self._inbox.append(item)
        if self._sleeping:
            try:
                self._wake_w.send(b"\0")
            except OSError:   # full (a wake-up is pending anyway) or closed
                pass

    # -- the writer thread --------------------------------------------------------

    def _run(self) -> None:
        inbox = self._inbox
        select = self._selector.select
        try:
            while True:
                if inbox:
                    self._drain_inbox()
                if self._stopping and not self._owned:
                    return
                timeout = self._run_timers()
                self._sleeping = True
                if inbox:              # appended before the flag was seen
                    self._sleeping = False
                    continue
                ready = select(timeout)
                self._sleeping = False
                for key, mask in ready:
                    out = key.data
                    if out is None:
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                        continue
                    if out.gone:
                        continue
                    if mask & selectors.EVENT_READ:
                        self._peer_readable(out)
                    if not out.gone and mask & selectors.EVENT_WRITE:
                        self._flush(out)
        except BaseException:   # pragma: no cover - a bug: free every stream thread
            log.exception("gosse writer thread failed; cutting its streams")
        finally:
            self.alive = False
            for out in list(self._owned.values()):
                self._cut(out, ENDED_BY_CLIENT)
            for item in list(inbox):
                if item[0] == _ADOPT:
                    item[1].end(ENDED_BY_CLIENT, abort=True)
                    item[4].release()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_inbox(self) -> None:
        inbox = self._inbox
        pop = inbox.popleft
        while inbox:
            item = pop()
            kind = item[0]
            if kind == _EVENT:
                framed, recipients = item[1], item[2]
                if inbox and inbox[0][0] == _EVENT and inbox[0][2] is recipients:
                    # A burst to the same recipients: one send per session.
                    parts = [framed]
                    size = len(framed)
                    while (inbox and size < _JOIN_LIMIT and inbox[0][0] == _EVENT
                           and inbox[0][2] is recipients):
                        more = pop()[1]
                        parts.append(more)
                        size += len(more)
                    framed = b"".join(parts)
                self._fan_out(framed, recipients)
            elif kind == _ADOPT:
                self._adopt(*item[1:])
            elif kind == _FINISH:
                out = self._owned.get(item[1])
                if out is not None:
                    self._begin_close(out, item[2])
            else:
                self._stopping = True

    def _adopt(self, session: Session, sock: socket.socket, pending: List[bytes],
               finished: Any) -> None:
        try:
            timeout = sock.gettimeout()
            sock.setblocking(False)
        except OSError:
            session.end(ENDED_BY_CLIENT, abort=True)
            finished.release()
            return
        out = _Out(session, sock, timeout, finished)
        self._owned[session] = out
        now = out.last_write
        if session.heartbeat:
            self._timer(now + session.heartbeat, _T_HEARTBEAT, out)
        if session.deadline is not None:
            self._timer(now + max(0.0, session.deadline - time.monotonic()), _T_AGE, out)
        if pending:
            self._send(out, frame_chunk(b"".join(pending)))
        if not out.gone:
            # An end asked for after the hand-over arrives as a _FINISH item,
            # behind the events delivered before it: not checked here.
            self._update(out)

    def _fan_out(self, framed: bytes, recipients: Tuple[Session, ...]) -> None:
        owned = self._owned
        if not owned:
            return
        get = owned.get
        for session in recipients:
            out = get(session)
            if out is not None and not out.closing:
                if out.buf:
                    out.buf.append(framed)
                    out.size += len(framed)
                    if out.size > session.mailbox.max_bytes or len(out.buf) > session.mailbox.max_items:
                        self._cut(out, ENDED_SLOW)
                else:
                    self._send(out, framed)

    def _send(self, out: _Out, data: bytes) -> None:
        """Send ``data`` now, keeping what the socket does not take."""
        if out.buf:
            out.buf.append(data)
            out.size += len(data)
            return
        try:
            sent = out.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._cut(out, ENDED_BY_CLIENT)
            return
        out.last_write = _monotonic()
        if sent < len(data):
            out.buf = deque((memoryview(data)[sent:],))
            out.size = len(data) - sent
            self._update(out)

    def _flush(self, out: _Out) -> None:
        buf = out.buf
        while buf:
            views = list(itertools.islice(buf, 0, _IOV_MAX))
            offered = sum(map(len, views))
            try:
                sent = out.sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._cut(out, ENDED_BY_CLIENT)
                return
            out.last_write = _monotonic()
            out.size -= sent
            full = sent < offered
            while sent:
                first = buf[0]
                n = len(first)
                if sent >= n:
                    buf.popleft()
                    sent -= n
                else:
                    buf[0] = memoryview(first)[sent:]
                    sent = 0
                    break
            if full:
                break     # the socket took less than offered
        if not buf and out.closing:
            self._give_back(out)
            return
        self._update(out)

    def _peer_readable(self, out: _Out) -> None:
        try:
            data = out.sock.recv(1, _MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._cut(out, ENDED_BY_CLIENT)
            return
        if not data:
            self._cut(out, ENDED_BY_CLIENT)   # the peer closed its side
        else:
            out.reading = False   # a pipelined request: the server's, not ours
            self._update(out)

    def _update(self, out: _Out) -> None:
        mask = ((selectors.EVENT_READ if out.reading else 0)
                | (selectors.EVENT_WRITE if out.buf else 0))
        if mask == out.mask:
            return
        try:
            if out.mask == 0:
                self._selector.register(out.sock, mask, out)
            elif mask == 0:
                self._selector.unregister(out.sock)
            else:
                self._selector.modify(out.sock, mask, out)
        except (OSError, ValueError, KeyError):
            self._cut(out, ENDED_BY_CLIENT)
            return
        out.mask = mask

    def _begin_close(self, out: _Out, timeout: Optional[float] = None) -> None:
        session = out.session
        if session.abort:
            self._cut(out, session.end_reason or ENDED_BY_CLIENT)
            return
        if not out.closing:
            out.closing = True
            wait = self.close_timeout if timeout is None else timeout
            self._timer(_monotonic() + wait, _T_DEADLINE, out)
        if not out.buf:
            self._give_back(out)

    def _release(self, out: _Out) -> None:
        out.gone = True
        self._owned.pop(out.session, None)
        if out.mask:
            try:
                self._selector.unregister(out.sock)
            except (KeyError, ValueError, OSError):
                pass
            out.mask = 0
        try:
            out.sock.settimeout(out.timeout)
        except OSError:
            pass
        out.buf = _EMPTY

    def _give_back(self, out: _Out) -> None:
        """Everything is sent: the server may write the last chunk."""
        self._release(out)
        out.finished.release()

    def _cut(self, out: _Out, reason: str) -> None:
        """End the session with its connection cut (a half-sent chunk must
        never be followed by the server's last chunk)."""
        session = out.session
        session.end(reason, abort=True)
        session.shutdown_socket()
        self._release(out)
        out.finished.release()

    def _timer(self, due: float, kind: int, out: _Out) -> None:
        heapq.heappush(self._timers, (due, next(self._count), kind, out))

    def _run_timers(self) -> Optional[float]:
        """Run the timers that are due; return seconds until the next one
        (at most 5, so that the loop always wakes)."""
        timers = self._timers
        now = _monotonic()
        while timers and timers[0][0] <= now:
            _, _, kind, out = heapq.heappop(timers)
            if out.gone:
                continue
            if kind == _T_HEARTBEAT:
                if out.closing:
                    continue
                quiet = now - out.last_write
                interval = out.session.heartbeat
                if quiet >= interval:
                    if not out.buf:
                        self._send(out, frame_chunk(HEARTBEAT))
                    elif quiet >= max(2 * interval, STALLED_AFTER):
                        # Bytes wait and the reader took none for two
                        # heartbeat intervals (30 s at least): it stopped.
                        self._cut(out, ENDED_SLOW)
                    if out.gone:
                        continue
                    self._timer(now + interval, _T_HEARTBEAT, out)
                else:
                    self._timer(out.last_write + interval, _T_HEARTBEAT, out)
            elif kind == _T_AGE:
                out.session.end(ENDED_BY_AGE)
                self._begin_close(out)
            else:   # _T_DEADLINE: the flush did not finish in time
                self._cut(out, out.session.end_reason or ENDED_BY_CLIENT)
        if not timers:
            return 5.0
        return min(5.0, max(0.0, timers[0][0] - _monotonic()))
