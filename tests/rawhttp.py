"""Raw-socket HTTP/1.1 for the tests where wire framing matters: a GET of an
SSE stream whose chunked body is decoded strictly by hand (not with gosse's
reader, which other tests exercise), then further requests on the same
keep-alive connection."""
import socket
import time

from gosse import EventStreamParser

HEX = b"0123456789abcdefABCDEF"


def big_event_parser():
    """gosse's parser with room for the multi-MiB events these tests send."""
    return EventStreamParser(max_line_bytes=1 << 24, max_event_size=None)


def read_head_from(sock, limit=65536):
    """Bytes from ``sock`` up to and including the blank line that ends an
    HTTP head (or what came before EOF / ``limit``)."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < limit:
        more = sock.recv(4096)
        if not more:
            break
        head += more
    return head


class FramingError(AssertionError):
    """The body is not valid HTTP/1.1 chunked framing (or stopped inside a
    chunk): what a proxy pooling this connection would misread."""


class RawStream:
    """GET ``path`` over a raw socket; decodes chunked framing strictly by hand.

    ``rcvbuf`` sets SO_RCVBUF before connecting (a small one makes the
    server's sends partial while this reader does not read). ``body`` holds
    the de-chunked bytes, ``events`` the parsed events, ``ended`` whether
    the last chunk arrived."""

    def __init__(self, url, path, rcvbuf=None, version="HTTP/1.1", timeout=30.0,
                 headers=None):
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()
        self.request(path, version, headers=headers)
        self.head = self.read_head()
        self.chunked = b"transfer-encoding: chunked" in self.head.lower()
        self.parser = big_event_parser()
        self.events = []
        self.body = bytearray()
        self.ended = False   # the last chunk arrived

    def request(self, path, version="HTTP/1.1", method="GET", headers=None):
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"{method} {path} {version}\r\nHost: t\r\n{extra}\r\n".encode())

    def _more(self, size=65536):
        data = self.sock.recv(size)
        if not data:
            raise EOFError("the server closed the connection")
        self.buf += data

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            self._more()
        end = self.buf.find(b"\r\n\r\n")
        head = bytes(self.buf[:end])
        del self.buf[:end + 4]
        return head

    def _read_chunk(self, size):
        """One chunk's data (strict: hex size, CRLF, data, CRLF)."""
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                break
            if len(self.buf) > 64:
                raise FramingError(f"not a chunk-size line: {bytes(self.buf[:40])!r}")
            self._more(size)
        line = bytes(self.buf[:end])
        if not (line and all(c in HEX for c in line)):
            raise FramingError(f"not a chunk-size line: {line[:40]!r}")
        length = int(line, 16)
        del self.buf[:end + 2]
        try:
            while len(self.buf) < length + 2:
                self._more(size)
        except (socket.timeout, EOFError) as exc:
            raise FramingError(
                f"body stopped inside a chunk of {length} bytes after {len(self.buf)} "
                f"({type(exc).__name__}); its last bytes: {bytes(self.buf[-40:])!r}") from exc
        data, end = bytes(self.buf[:length]), bytes(self.buf[length:length + 2])
        if end != b"\r\n":
            raise FramingError(f"chunk of {length} bytes not followed by CRLF: {end!r}, "
                               f"its last bytes {data[-40:]!r}")
        del self.buf[:length + 2]
        return data

    body = None   # set on first use: a test may build one with __new__ on a socketpair

    def _take(self, data):
        if self.body is None:
            self.body = bytearray()
        self.body += data
        self.events.extend(self.parser.feed(data))

    def read_events(self, n, size=65536, delay=0.0):
        """Read until ``n`` events in all arrived or the body ended; a
        ``delay`` after each read makes a slow reader."""
        while len(self.events) < n and not self.ended:
            if self.chunked:
                data = self._read_chunk(size)
                if not data:
                    self.ended = True
                    break
            else:
                if not self.buf:
                    self._more(size)
                data, self.buf = bytes(self.buf), bytearray()
            self._take(data)
            if delay:
                time.sleep(delay)   # a slow reader, not a synchronisation
        return self.events

    def read_to_end(self, size=65536, delay=0.0):
        """Read the chunked body up to its last chunk; nothing may follow it."""
        while not self.ended:
            data = self._read_chunk(size)
            if not data:
                self.ended = True
            else:
                self._take(data)
                if delay:
                    time.sleep(delay)   # a slow reader, not a synchronisation
        if self.buf:
            raise FramingError(f"bytes after the last chunk: {bytes(self.buf[:80])!r}")
        return self.events

    def next_response(self, path="/stats"):
        """Another GET on this connection (after the stream ended); return
        (head, body) read by Content-Length."""
        self.request(path)
        head = self.read_head()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            self._more()
        body, self.buf = bytes(self.buf[:length]), self.buf[length:]
        return head, body

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

