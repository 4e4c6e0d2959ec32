"""The per-session WSGI response body: an iterable that blocks on the
session's mailbox.

A :class:`SessionStream` is what a WSGI server iterates for one open SSE
response.  Its thread (the server's) is the only consumer of the session's
mailbox: each ``next()`` returns what is queued as one chunk, or a
heartbeat comment after ``heartbeat_interval`` seconds of silence.  Where
the server is known to frame the body as HTTP/1.1 chunks on a plain socket
(:func:`gosse.writer.handoff_socket`), the second ``next()`` hands the
socket to the broker's writer instead and parks until the writer gives it
back; the iteration then ends and the server writes the last chunk.

The first ``next()`` may come from the framework rather than the server
(Flask takes the first item while it builds its response), so a session
counts as *served* only from the second one: before that the broker never
touches its socket, and a session that is never served expires.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, NoReturn, Optional, Tuple

from .event import HEARTBEAT
from .session import ENDED_BY_AGE, ENDED_BY_CLIENT, Session

__all__ = ["SessionStream"]

_monotonic = time.monotonic
PARK_CHECK = 60.0   # seconds between a parked stream's checks that its writer lives
CLIENT_CHECK = 1.0  # seconds between checks of waitress.client_disconnected

# hand_over(session, sock) -> (the writer's "finished" lock, the writer) or None
HandOver = Callable[[Session, object], Optional[Tuple[Any, Any]]]


class SessionStream:
    """The WSGI body iterable of one SSE session.

    ``close()`` (PEP 3333; called by the server when the response is over,
    for whatever reason) and the end of the iteration both release the
    session, so a middleware that drops ``close()`` leaks nothing.
    """

    __slots__ = ("session", "_first", "_environ", "_hand_over", "_started", "conn",
                 "_client_left", "__weakref__")

    def __init__(self, session: Session, first_bytes: bytes, environ: Dict[str, Any],
                 hand_over: Optional[HandOver] = None):
        self.session = session
        self._first = first_bytes
        self._environ = environ
        self._hand_over = hand_over
        self._started = False      # stream thread only
        self.conn: Any = None      # the ClientConnection, once it handed this body out
        # waitress (with channel_request_lookahead > 0) tells whether the
        # client left: no write needed to find out.
        self._client_left: Optional[Callable[[], bool]] = environ.get(
            "waitress.client_disconnected")

    def __iter__(self) -> SessionStream:
        return self

    def __next__(self) -> bytes:
        s = self.session
        s.in_next = True
        try:
            return self._next(s)
        finally:
            s.in_next = False
            s.last_next = _monotonic()   # the server writes what we returned

    def _next(self, s: Session) -> bytes:
        if not self._started:
            self._started = True
            if s.abort:
                self._finish()
            replay = b"".join(s.preloaded)
            s.preloaded = ()
            return self._first + replay + s.mailbox.take()
        if not s.served:
            s.served_at = _monotonic()
            s.served = True   # the server has written the head and the first bytes
            if self._hand_over is not None and not s.ending:
                try:
                    caller = sys._getframe(2)
                except ValueError:   # called from C (uWSGI): no server loop to hand over from
                    caller = None
                self._serve_by_writer(caller)
        mailbox = s.mailbox
        gone = self._client_left
        beat_at = _monotonic() + s.heartbeat if gone is not None else 0.0
        while True:
            if s.abort:
                self._finish()
            data = mailbox.take()
            if data:
                return data
            if s.ending or s.released:
                self._finish()
            timeout = s.heartbeat
            if s.deadline is not None:
                left = s.deadline - _monotonic()
                if left <= 0:
                    s.end(ENDED_BY_AGE)
                    continue
                timeout = min(timeout, left)
            if gone is not None:   # waitress: look once a second whether the client left
                if gone():
                    s.end(ENDED_BY_CLIENT)
                    continue
                timeout = min(timeout, beat_at - _monotonic())
                if timeout > CLIENT_CHECK:
                    mailbox.wait(CLIENT_CHECK)
                    continue
            if not mailbox.wait(timeout) and not len(mailbox) and not s.ending:
                if s.deadline is None or _monotonic() < s.deadline:
                    return HEARTBEAT

    def _serve_by_writer(self, caller: object) -> None:
        """Hand the socket over if the server allows it; then park until
        the writer is done with the session, and end the iteration."""
        from .writer import handoff_socket
        hand_over = self._hand_over
        sock = handoff_socket(self._environ, caller)
        if sock is None or hand_over is None:
            return
        handed = hand_over(self.session, sock)
        if handed is None:
            return
        finished, writer = handed
        # The writer releases the lock however it ends (its loop frees every
        # session it holds even when it fails); the timeout is only a
        # backstop, long so that 10,000 parked threads do not wake for it.
        while not finished.acquire(timeout=PARK_CHECK):
            if not writer.alive:
                self.session.end(ENDED_BY_CLIENT, abort=True)
                break
        self._finish()

    def _finish(self) -> NoReturn:
        """End the iteration: the server writes the rest (or, after an
        abort, finds the connection cut)."""
        s = self.session
        s.give_back_socket()
        s.release()
        raise StopIteration

    def close(self) -> None:
        """Called by the WSGI server when the response is finished; safe to
        call more than once or from any thread."""
        s = self.session
        s.give_back_socket()
        s.end(ENDED_BY_CLIENT)
        s.release()

    @property
    def started(self) -> bool:
        """Whether iteration began."""
        return self._started
