"""Hostile servers through a live feed (gosse.client over real sockets, the
server scripted byte by byte with tests/rawserver.py): a 100 MB event, a
100 MB line, a server that trickles one byte per second, endless blank
lines and comments.

Big payloads are generated from a repeated block and checked by length and
SHA-256, never by comparing (or printing) giant strings."""
import hashlib
import select
import threading
import time

import pytest

import gosse.client
from gosse import EventStreamError, EventStreamParser, FeedClosedError
from gosse.client import connect_with_sse_feed
from rawserver import RawServer

pytestmark = pytest.mark.timeout(90)

MB100 = 100 * 1000 * 1000


class RecordingParser(EventStreamParser):
    """The feed's parser, recording the most it ever buffered."""
    instances = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_pending = 0
        self.max_data = 0
        self.fed = 0
        RecordingParser.instances.append(self)

    def feed(self, chunk):
        self.fed += len(chunk)
        try:
            return super().feed(chunk)
        finally:
            self.max_pending = max(self.max_pending, self._pending_len)
            self.max_data = max(self.max_data, self._data_size)


class Recording(list):
    def fed(self):
        """The parsers that were fed (one per connection; the feed also
        makes one to check its arguments)."""
        return [p for p in self if p.fed]


@pytest.fixture
def recording(monkeypatch):
    RecordingParser.instances = Recording()
    monkeypatch.setattr(gosse.client, "EventStreamParser", RecordingParser)
    return RecordingParser.instances


def pause(conn, seconds):
    """Wait ``seconds`` between trickled bytes, or until the client closes
    the connection (then raise ConnectionError)."""
    ready, _, _ = select.select([conn.sock], [], [], seconds)
    if ready and not conn.sock.recv(1):
        raise ConnectionError("the client went away")


def stream_blocks(conn, block, count, stop=None):
    """Write ``block`` ``count`` times (raw, not chunked); stop quietly when
    the client goes away or ``stop`` is set."""
    try:
        for _ in range(count):
            if stop is not None and stop.is_set():
                return
            conn.send(block)
    except OSError:
        pass


# -- 100 MB ------------------------------------------------------------------------

LINE_VALUE = (b"0123456789abcdef" * 64)[:1017]          # 1017 bytes
DATA_LINE = b"data: " + LINE_VALUE + b"\n"              # 1024 bytes
BLOCK = DATA_LINE * 64                                  # 64 KiB
BLOCKS = MB100 // len(BLOCK) + 1                        # just over 100 MB of lines


def many_lines_digest():
    """Length and SHA-256 of the data of an event of BLOCKS * 64 data lines."""
    h = hashlib.sha256()
    piece = (LINE_VALUE + b"\n") * 64
    for _ in range(BLOCKS - 1):
        h.update(piece)
    h.update((LINE_VALUE + b"\n") * 63 + LINE_VALUE)
    return BLOCKS * 64 * (len(LINE_VALUE) + 1) - 1, h.hexdigest()


def test_100mb_event_of_many_data_lines(recording):
    """A legitimate 100 MB event (100,000 lines of 1 KiB) arrives whole when
    max_event_size allows it, followed by the next event."""
    def handler(conn):
        conn.start(chunked=False)
        conn.send(b"id: big\n")
        stream_blocks(conn, BLOCK, BLOCKS)
        conn.send(b"\nid: next\ndata: after\n\n")
        conn.hold()

    length, digest = many_lines_digest()
    with RawServer(handler) as server:
        with connect_with_sse_feed(server.url(), max_event_size=128 << 20) as feed:
            sub = feed.subscribe()
            big = sub.get(timeout=60)
            after = sub.get(timeout=10)
            assert (big.id, big.event) == ("big", "message")
            assert len(big.data) == length
            assert hashlib.sha256(big.data.encode()).hexdigest() == digest
            del big
            assert (after.id, after.data) == ("next", "after")
            assert len(server.requests) == 1
    [parser] = recording.fed()
    assert parser.fed > MB100
    assert parser.max_pending <= len(DATA_LINE)   # lines are short: nothing waits
    assert parser.max_data <= length + 1


def test_100mb_event_over_the_default_limit_ends_the_feed(recording):
    """The same event against the default max_event_size (64 Mi characters):
    the feed ends with EventStreamError once the event passes the limit,
    having held no more than the limit, and does not reconnect."""
    stop = threading.Event()

    def handler(conn):
        conn.start(chunked=False)
        conn.send(b"data: small\n\n")
        stream_blocks(conn, BLOCK, BLOCKS, stop)
        conn.hold(timeout=10)

    with RawServer(handler) as server:
        with connect_with_sse_feed(server.url(), retry=50) as feed:
            sub = feed.subscribe()
            assert sub.get(timeout=10).data == "small"
            with pytest.raises(EventStreamError, match="max_event_size=67108864"):
                sub.get(timeout=60)
            stop.set()
            assert feed.closed and isinstance(feed.error, EventStreamError)
        assert len(server.requests) == 1
    [parser] = recording.fed()
    assert parser.max_data <= 64 << 20
    assert parser.fed < (64 << 20) + 3 * (1 << 20)   # stopped within a few reads


def test_100mb_single_line_needs_a_raised_limit(recording):
    """One 100 MB line: with the default max_line_bytes (1 MiB) the feed ends
    with EventStreamError after reading about 1 MiB, holding at most that;
    with max_line_bytes and max_event_size raised it arrives whole."""
    stop = threading.Event()
    piece = b"L" * (1 << 20)
    length = MB100

    def handler(conn):
        conn.start(chunked=False)
        conn.send(b"id: line\ndata: ")
        for _ in range(length // len(piece)):
            if stop.is_set():
                return
            try:
                conn.send(piece)
            except OSError:
                return
        conn.send(b"L" * (length % len(piece)) + b"\n\n")
        conn.hold()

    with RawServer(handler) as server:
        with connect_with_sse_feed(server.url(), retry=50) as feed:
            sub = feed.subscribe()
            with pytest.raises(EventStreamError, match="max_line_bytes=1048576"):
                sub.get(timeout=30)
            stop.set()
        assert len(server.requests) == 1
    [parser] = recording.fed()
    assert parser.max_pending <= 1 << 20
    assert parser.fed < 4 << 20

    stop.clear()
    recording.clear()
    with RawServer(handler) as server:
        with connect_with_sse_feed(server.url(), max_line_bytes=128 << 20,
                                   max_event_size=128 << 20) as feed:
            sub = feed.subscribe()
            event = sub.get(timeout=60)
            assert event.id == "line" and len(event.data) == length
            assert hashlib.sha256(event.data.encode()).hexdigest() == \
                hashlib.sha256(b"L" * length).hexdigest()
    [parser] = recording.fed()
    assert parser.max_pending <= len(b"data: ") + length


# -- a server that trickles --------------------------------------------------------

def test_trickle_one_byte_per_second_delivers_and_close_is_prompt():
    """One byte per second keeps a feed with a 1.6 s read_timeout alive (no
    reconnect), the event arrives intact, and close() in the middle of the
    next trickled event returns at once and releases the server."""
    next_started = threading.Event()
    gone = threading.Event()

    def handler(conn):
        conn.start(chunked=False)
        conn.send(b"id: 1\ndata: tric")
        try:
            for byte in b"k\n\n":        # the event completes after ~3 s
                pause(conn, 1.0)
                conn.send(bytes([byte]))
            conn.send(b"data: nev")
            for byte in b"er ends\n\n":
                pause(conn, 1.0)
                conn.send(bytes([byte]))
                next_started.set()   # mid-event: the client waits for more
        except OSError:
            gone.set()

    with RawServer(handler) as server:
        feed = connect_with_sse_feed(server.url(), read_timeout=1.6, retry=50)
        try:
            sub = feed.subscribe()
            t0 = time.monotonic()
            event = sub.get(timeout=10)
            assert (event.id, event.data) == ("1", "trick")
            assert 2.5 < time.monotonic() - t0 < 6
            assert next_started.wait(5)
            t1 = time.monotonic()
        finally:
            feed.close()
        assert time.monotonic() - t1 < 1.0
        assert not feed._thread.is_alive()
        with pytest.raises(FeedClosedError):
            sub.get(timeout=1)
        assert len(server.requests) == 1        # never mistaken for a dead peer
        assert gone.wait(2)                     # the server saw the client leave


def test_trickle_of_http_chunk_framing_byte_by_byte():
    """A chunked response whose every byte, framing included, comes in its
    own TCP segment: one-byte HTTP chunks, a CRLF split across writes, a
    UTF-8 sequence split across chunks."""
    payload = "id: 7\r\nevent: t\r\ndata: trickl\u00e9 \u20ac\r\n\r\n".encode()

    def handler(conn):
        conn.start(chunked=True)
        body = b"".join(b"1\r\n%s\r\n" % payload[i:i + 1] for i in range(len(payload)))
        try:
            for i in range(len(body)):
                conn.send(body[i:i + 1])
                time.sleep(0.003)
        except OSError:
            return
        conn.hold()

    with RawServer(handler) as server:
        with connect_with_sse_feed(server.url(), read_timeout=2, retry=50) as feed:
            sub = feed.subscribe()
            event = sub.get(timeout=10)
            assert (event.id, event.event, event.data) == ("7", "t", "trickl\u00e9 \u20ac")
            assert len(server.requests) == 1


# -- endless blank lines and comments -----------------------------------------------

@pytest.mark.parametrize("block", [b"\n" * 65536, b"\r\n" * 32768,
                                   (b": " + b"c" * 125 + b"\n") * 512],
                         ids=["blank-LF", "blank-CRLF", "comments"])
def test_endless_blank_lines_or_comments_keep_nothing_and_count_as_liveness(
        recording, block):
    """4 MiB of blank lines or comments dispatch nothing and buffer nothing;
    the id before them persists.  Then a trickle of them (one every 0.1 s
    for 1 s) keeps a 0.3 s read_timeout satisfied; silence after that is a
    dead connection: the feed reconnects with Last-Event-ID."""
    def first(conn):
        conn.start(chunked=False)
        conn.send(b"id: before\ndata: first\n\n")
        stream_blocks(conn, block, (4 << 20) // len(block))
        conn.send(b"data: second\n\n")
        try:
            for _ in range(10):
                conn.send(b":\n" if block.startswith(b":") else b"\n")
                pause(conn, 0.1)
        except OSError:
            return
        conn.hold(timeout=10)        # silent from now on

    def second(conn):
        conn.start(chunked=False)
        conn.send(b"data: third\n\n")
        conn.hold(timeout=10)

    with RawServer([first, second]) as server:
        with connect_with_sse_feed(server.url(), read_timeout=0.3, retry=50) as feed:
            sub = feed.subscribe()
            got = [sub.get(timeout=20) for _ in range(2)]
            t_second = time.monotonic()
            assert [(e.id, e.data) for e in got] == [("before", "first"),
                                                    ("before", "second")]
            third = sub.get(timeout=10)
            # Liveness for the 1 s of trickled lines, then 0.3 s of silence.
            assert time.monotonic() - t_second > 0.9
            assert (third.id, third.data) == ("before", "third")
            assert [r.header("Last-Event-ID") for r in server.requests] == [None, "before"]
    parser = recording.fed()[0]
    assert parser.fed >= 4 << 20
    assert parser.max_pending <= 130          # never more than one short line
    assert parser.max_data <= len("second") + 1


def test_max_event_size_is_checked_when_the_feed_is_made():
    for bad in (0, -5, 1.5):
        with pytest.raises(ValueError, match="max_event_size"):
            connect_with_sse_feed("http://127.0.0.1:9/", max_event_size=bad)
