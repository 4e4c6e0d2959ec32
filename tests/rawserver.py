"""A scriptable raw-socket HTTP/1.1 server on 127.0.0.1 for client tests.

Each accepted connection gets its own thread, which reads the request and
hands a :class:`Conn` to a handler written by the test.  The handler decides
every byte of the answer: status line, headers, chunked or unframed body,
pauses, CRLF pairs split across writes, an orderly close or a reset::

    def handler(conn):
        conn.start(chunked=False)            # 200 text/event-stream, Connection: close
        conn.write(b"data: hello\\r")
        conn.write(b"\\n\\n")
        conn.hold()                          # until the client goes away

    with RawServer(handler) as server:
        feed = connect_with_sse_feed(server.url())
        ...
        server.requests[0].header("Last-Event-ID")

``RawServer([h1, h2])`` uses ``h1`` for the first connection and ``h2`` for
the second and later ones.
"""
import queue
import socket
import struct
import threading
import time


class Request:
    """A received request: ``method``, ``path``, ``headers`` (list of
    ``(name, raw value bytes)``), ``body`` bytes."""

    def __init__(self, method, path, headers, body):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def raw_header(self, name):
        """The raw bytes of the last header called ``name`` (any case), or None."""
        found = None
        for key, value in self.headers:
            if key.lower() == name.lower():
                found = value
        return found

    def header(self, name):
        """A header's value decoded as UTF-8, or None."""
        value = self.raw_header(name)
        return None if value is None else value.decode("utf-8")

    def __repr__(self):
        return f"<Request {self.method} {self.path}>"


class Conn:
    """One accepted connection, given to the handler with its request."""

    def __init__(self, server, sock, index):
        self.server = server
        self.sock = sock
        self.index = index        # 0 for the first connection of the server
        self.request = None
        self.chunked = False

    # -- reading -------------------------------------------------------------

    def _read_request(self):
        buf = b""
        while b"\r\n\r\n" not in buf:
            more = self.sock.recv(65536)
            if not more:
                return None
            buf += more
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, path, _version = lines[0].decode("latin-1").split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.decode("latin-1").strip(), value.strip()))
        request = Request(method, path, headers, b"")
        length = request.raw_header("Content-Length")
        if length is not None:
            length = int(length)
            while len(rest) < length:
                more = self.sock.recv(65536)
                if not more:
                    break
                rest += more
            request.body = rest[:length]
        elif (request.raw_header("Transfer-Encoding") or b"").lower() == b"chunked":
            request.body = self._read_chunked_body(rest)
        return request

    def _read_chunked_body(self, rest):
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += self.sock.recv(65536)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += self.sock.recv(65536)
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                return body

    # -- writing -------------------------------------------------------------

    def send(self, data):
        """Write raw bytes, exactly as given."""
        self.sock.sendall(data)

    def start(self, status=200, content_type="text/event-stream", headers=(),
              chunked=True, reason=None):
        """Send the status line and headers.  ``chunked=False`` sends
        ``Connection: close`` and no ``Content-Length`` (the body ends when the
        connection closes).  ``content_type=None`` sends no Content-Type."""
        self.chunked = chunked
        lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Whatever')}"]
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.append("Cache-Control: no-cache")
        lines.append("Transfer-Encoding: chunked" if chunked else "Connection: close")
        lines.extend(f"{k}: {v}" for k, v in (headers.items() if hasattr(headers, "items")
                                                else headers))
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def write(self, data):
        """Send a piece of the body: one HTTP chunk if chunked, else as is."""
        if not data:
            return
        if self.chunked:
            self.send(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.send(data)

    def respond(self, status, body=b"", content_type="text/plain", headers=()):
        """A complete, non-streaming answer (with Content-Length), then close."""
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}",
                 f"Content-Length: {len(body)}", "Connection: close"]
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.extend(f"{k}: {v}" for k, v in (headers.items() if hasattr(headers, "items")
                                                else headers))
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.close()

    def end(self):
        """End the body in an orderly way (the last chunk if chunked), then close."""
        if self.chunked:
            self.send(b"0\r\n\r\n")
        self.close()

    def close(self):
        """Close the connection (FIN)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def abort(self):
        """Reset the connection (RST)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def hold(self, timeout=30):
        """Keep the connection open until the client closes it (or the server
        closes, or ``timeout`` passes).  Returns True if the client closed."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except OSError:
            return False
        finally:
            self.sock.settimeout(None)


class RawServer:
    """Listens on 127.0.0.1 (an ephemeral port); see the module docstring."""

    def __init__(self, handler):
        self.handlers = handler if isinstance(handler, (list, tuple)) else [handler]
        self.requests = []                 # Request objects, in arrival order
        self.errors = []                   # exceptions raised by handlers
        self._arrivals = queue.Queue()     # (Request, Conn) as they arrive
        self._lock = threading.Lock()
        self._conns = []
        self._threads = []
        self._count = 0
        self._stopping = False
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, daemon=True,
                                          name="rawserver-accept")
        self._acceptor.start()

    def url(self, path="/sse"):
        return f"http://127.0.0.1:{self.port}{path}"

    def next_request(self, timeout=5):
        """Wait for the next request to arrive; return ``(request, conn)``."""
        return self._arrivals.get(timeout=timeout)

    @property
    def active(self):
        """Number of connection threads still running."""
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    def wait_idle(self, timeout=5):
        """Wait until every connection thread has finished; True if they did."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def _accept(self):
        while True:
            sock, _ = self._listener.accept()
            if self._stopping:
                sock.close()
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                index = self._count
                self._count += 1
                conn = Conn(self, sock, index)
                self._conns.append(conn)
                t = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                     name=f"rawserver-conn-{index}")
                self._threads.append(t)
                # Forget finished connections so long tests stay small.
                self._threads = [x for x in self._threads if x.is_alive() or x is t]
                self._conns = [c for c in self._conns if c.sock.fileno() != -1]
            t.start()

    def _serve(self, conn):
        try:
            request = conn._read_request()
            if request is None:
                return
            conn.request = request
            with self._lock:
                self.requests.append(request)
            self._arrivals.put((request, conn))
            self.handlers[min(conn.index, len(self.handlers) - 1)](conn)
        except Exception as exc:  # noqa: BLE001 - recorded for the test to inspect
            if not self._stopping:
                self.errors.append(exc)
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass

    def close(self):
        """Stop accepting, cut every connection, and join the threads."""
        self._stopping = True
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self._acceptor.join(2)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.wait_idle(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


_REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found",
            307: "Temporary Redirect", 401: "Unauthorized", 404: "Not Found",
            500: "Internal Server Error", 503: "Service Unavailable"}


def sse(*pieces, chunked=True, hold=True, headers=(), content_type="text/event-stream"):
    """A handler that starts an event stream, writes ``pieces`` (each as its
    own write), then holds the connection until the client leaves
    (``hold=True``) or ends the body and closes it (``hold=False``)."""
    def handler(conn):
        conn.start(chunked=chunked, headers=headers, content_type=content_type)
        for piece in pieces:
            conn.write(piece)
        if hold:
            conn.hold()
        else:
            conn.end()
    return handler


def status(code, body=b"", content_type="text/plain", headers=()):
    """A handler answering a plain, complete response."""
    def handler(conn):
        conn.respond(code, body, content_type=content_type, headers=headers)
    return handler
