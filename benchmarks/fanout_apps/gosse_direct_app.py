"""EXPERIMENT, not gosse's code: what the profile suggests for gosse's
broadcast path under gunicorn gthread, measured as the ``gosse-direct``
contender (``bench_fanout.py --only gosse gosse-direct``).

Under gthread every delivery wakes the stream's server thread, which then
competes for the GIL with every other woken thread: perf shows ~75 % of the
worker's CPU in futex waits/wakes and context switches (~10-18 per
delivery at 1,000-2,000 streams), ~6 % in the socket sends themselves.
Here the *broadcasting* thread writes the event, framed as an HTTP/1.1
chunk (encoded and framed once per broadcast), straight to each stream's
socket (``environ["gunicorn.socket"]``) with a non-blocking send, as the
raw floor does; a stream's own thread is woken only when that cannot be
done in order: its socket buffer is full (partial send), or it is already
writing queued data.  That thread then writes (blocking, in its own
thread) the remainder and the queue, framed the same way, and returns no
bytes to gunicorn, whose chunked writer ignores an empty chunk and, at the
end, writes the terminating chunk itself.

Only for HTTP/1.1 responses served by gunicorn's gthread worker (chunked
framing, a plain socket in the environ); anything else uses gosse's normal
path.  A sketch: no TLS, no max_connection_age, no Werkzeug.
"""
import os
import socket
import threading
import time

import gosse.broker
from gosse import Broker, Event
from gosse.stream import ENDED_BY_CLIENT, SessionStream

PAD = "x" * 70
MSG_DONTWAIT = socket.MSG_DONTWAIT
_last = (None, None)          # the last chunk framed: one framing per broadcast


def frame(chunk):
    global _last
    last = _last
    if chunk is last[0]:
        return last[1]
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    _last = (chunk, framed)
    return framed


class DirectStream(SessionStream):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wlock = threading.Lock()     # who may write to the socket now
        self._partial = b""                # framed bytes a partial send left over
        self._direct = False               # head and first bytes are out: write directly

    def put(self, chunk):
        if self._direct and not self.ending and self._wlock.acquire(False):
            try:
                if not self._items and not self._partial:
                    framed = frame(chunk)
                    try:
                        n = self._sock.send(framed, MSG_DONTWAIT)
                    except BlockingIOError:
                        n = 0
                    except OSError:
                        self.end(ENDED_BY_CLIENT, abort=True)
                        return False
                    if n == len(framed):
                        return True
                    self._partial = framed[n:]          # the stream thread finishes it
                    if self._wake.locked():
                        try:
                            self._wake.release()
                        except RuntimeError:
                            pass
                    return True
            finally:
                self._wlock.release()
        return super().put(chunk)

    def __next__(self):
        if not self._direct:
            if self.started and self._sock is not None:
                # Second call: gunicorn has written the head and the first
                # bytes; from now on this stream writes to the socket itself.
                self._direct = True
            else:
                return super().__next__()           # the first bytes, via gunicorn
        items = self._items
        while True:
            if items or self._partial:
                with self._wlock:
                    n = len(items)
                    pop = items.popleft
                    data = self._partial + b"".join([frame(pop()) for _ in range(n)])
                    self._partial = b""
                    try:
                        self._sock.sendall(data)        # blocking, GIL released
                    except OSError:
                        self.end(ENDED_BY_CLIENT, abort=True)
                        raise StopIteration
                continue
            if self.ending or self.closed:
                raise StopIteration                     # gunicorn writes the last chunk
            if not self._wake.acquire(timeout=self._heartbeat) and not items \
                    and not self._partial:
                with self._wlock:
                    try:
                        self._sock.sendall(frame(b":\n\n"))
                    except OSError:
                        self.end(ENDED_BY_CLIENT, abort=True)
                        raise StopIteration


_tl = threading.local()       # this request may use the direct path


def _stream_factory(first, heartbeat, max_queued, on_close, sock=None, deadline=None):
    cls = DirectStream if getattr(_tl, "direct", False) else SessionStream
    return cls(first, heartbeat, max_queued, on_close, sock=sock, deadline=deadline)


gosse.broker.SessionStream = _stream_factory    # the experiment's only hook into gosse


broker = Broker(queue_size=int(os.environ.get("FANOUT_QUEUE", "1000000")),
                heartbeat_interval=60)
monotonic = time.monotonic
OK = [("Content-Type", "text/plain"), ("Content-Length", "2")]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sse":
        client = environ.get("QUERY_STRING", "").partition("client=")[2] or "anon"
        direct = (environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
                  and environ.get("SERVER_SOFTWARE", "").startswith("gunicorn")
                  and type(environ.get("gunicorn.socket")) is socket.socket)
        _tl.direct = direct
        try:
            conn = broker.connect(client, environ)
        finally:
            _tl.direct = False
        return conn(environ, start_response)
    if path == "/broadcast":
        seq = environ["QUERY_STRING"][4:]
        broker.broadcast(Event(f"{seq} {monotonic():.6f} {PAD}"))
        start_response("200 OK", OK)
        return [b"ok"]
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]
