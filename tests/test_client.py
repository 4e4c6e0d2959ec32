"""gosse.client over real sockets: delivery, parsing through HTTP framing,
routing, subscriptions, first-connect errors, close() and leaks.

Reconnection tests are in test_client_reconnect.py, request options
(headers, bodies, redirects, sessions) in test_client_requests.py.
"""
import gzip
import os
import queue
import random
import threading
import time
import zlib

import pytest
import requests

from gosse import Event, EventStreamError, FeedClosedError, FeedConnectionError, ResponseError
from gosse.client import SSEFeed, Subscription, connect_with_sse_feed
from rawserver import RawServer, sse, status
from servers import wait_until as wait_for
from vectors import VECTORS, as_dict, vector_bytes

pytestmark = pytest.mark.timeout(60)


def collect(sub, n, timeout=5):
    return [sub.get(timeout=timeout) for _ in range(n)]




def drain(sub, timeout=5):
    """Every event until the subscription ends quietly."""
    events = []
    while True:
        try:
            events.append(sub.get(timeout=timeout))
        except FeedClosedError:
            return events


# -- the conformance vectors through a live HTTP stream ------------------------

def _random_pieces(data, rng):
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


@pytest.fixture(scope="module")
def vector_server():
    def handler(conn):
        index = int(conn.request.path.rsplit("/", 1)[1])
        vector = VECTORS[index]
        rng = random.Random(vector["name"])
        conn.start(chunked=index % 2 == 0)
        for piece in _random_pieces(vector_bytes(vector), rng):
            conn.write(piece)
        conn.end()
    with RawServer(handler) as server:
        yield server


@pytest.mark.parametrize("index", range(len(VECTORS)), ids=[v["name"] for v in VECTORS])
def test_conformance_vector_through_http(vector_server, index):
    vector = VECTORS[index]
    with connect_with_sse_feed(vector_server.url(f"/v/{index}"), reconnect=False) as feed:
        sub = feed.subscribe()
        events = drain(sub)
        assert [as_dict(e) for e in events] == vector["events"]
        assert feed.last_event_id == vector["last_event_id"]
        expected_retry = vector["retry"] if vector["retry"] is not None else 3000
        assert feed.retry == expected_retry


# -- delivery ------------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True], ids=["unframed", "chunked"])
def test_small_event_is_delivered_while_the_connection_stays_open(chunked):
    # 13 bytes with no Content-Length and no chunked framing: a reader that
    # waits for a buffer to fill (iter_content, iter_lines) would stall here.
    payload = b"data: hello\n\n"
    assert len(payload) == 13
    received = threading.Event()
    still_open = []

    def handler(conn):
        conn.start(chunked=chunked)
        conn.write(payload)
        received.wait(5)
        still_open.append(conn.sock.fileno() != -1)
        conn.hold()

    with RawServer(handler) as server, connect_with_sse_feed(server.url()) as feed:
        sub = feed.subscribe()
        event = sub.get(timeout=2)
        received.set()
        assert event == Event("hello", event="message", id="")
    assert still_open == [True]


def test_crlf_split_across_writes_is_one_line_end():
    # requests' iter_lines turns a CR and LF in different chunks into two line
    # ends (psf/requests#3980), which would dispatch "a" on its own.
    def handler(conn):
        conn.start(chunked=False)
        for piece in (b"data: a\r", b"\ndata: b\r", b"\n", b"\r", b"\n"):
            conn.write(piece)
            time.sleep(0.02)  # pacing, so that the pieces arrive separately
        conn.hold()

    with RawServer(handler) as server, connect_with_sse_feed(server.url()) as feed:
        sub = feed.subscribe()
        assert sub.get(timeout=3).data == "a\nb"
        with pytest.raises(queue.Empty):
            sub.get(timeout=0.1)


def test_gzip_encoded_stream_is_decoded_incrementally():
    received = threading.Event()

    def handler(conn):
        conn.start(headers={"Content-Encoding": "gzip"})
        z = zlib.compressobj(wbits=31)
        conn.write(z.compress(b"data: one\n\n") + z.flush(zlib.Z_SYNC_FLUSH))
        received.wait(5)
        conn.write(z.compress(b"data: two\n\n") + z.flush(zlib.Z_SYNC_FLUSH))
        conn.hold()

    with RawServer(handler) as server, connect_with_sse_feed(server.url()) as feed:
        sub = feed.subscribe()
        assert sub.get(timeout=3).data == "one"
        received.set()
        assert sub.get(timeout=3).data == "two"


def test_whole_gzip_stream():
    body = gzip.compress(b"".join(b"data: %d\n\n" % i for i in range(100)))
    with RawServer(sse(body, hold=False, headers={"Content-Encoding": "gzip"})) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            assert [e.data for e in drain(feed.subscribe())] == [str(i) for i in range(100)]


def test_event_fields_and_last_event_id():
    stream = b"retry: 1500\nid: 1\nevent: a\ndata: x\n\ndata: y\n\nid: 2\n\n"
    with RawServer(sse(stream, hold=False)) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            events = drain(feed.subscribe())
            assert events == [Event("x", event="a", id="1", retry=1500),
                              Event("y", event="message", id="1", retry=1500)]
            assert feed.last_event_id == "2"   # the id-only block counts
            assert feed.retry == 1500


def test_events_before_the_first_subscription_are_kept():
    # The reader starts reading at the first subscription.
    with RawServer(sse(b"data: early\n\n")) as server:
        with connect_with_sse_feed(server.url()) as feed:
            time.sleep(0.2)
            assert feed.subscribe().get(timeout=3).data == "early"


# -- routing and subscriptions -----------------------------------------------

def test_event_type_routing():
    stream = (b"data: m1\n\nevent: foo\ndata: f1\n\nevent: bar\ndata: b1\n\n"
              b"event: message\ndata: m2\n\nevent: foo\ndata: f2\n\n")
    with RawServer(sse(stream, hold=False)) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            every = feed.subscribe()
            messages = feed.subscribe("message")
            foos = feed.subscribe("foo")
            nothing = feed.subscribe("nothing")
            assert every.event_type is None and foos.event_type == "foo"
            assert [e.data for e in drain(every)] == ["m1", "f1", "b1", "m2", "f2"]
            assert [e.data for e in drain(messages)] == ["m1", "m2"]
            assert [e.data for e in drain(foos)] == ["f1", "f2"]
            assert drain(nothing) == []


def test_iteration_and_queue_interfaces():
    with RawServer(sse(b"data: 1\n\ndata: 2\n\ndata: 3\n\n", hold=False)) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            assert isinstance(sub, Subscription) and isinstance(feed, SSEFeed)
            assert isinstance(sub.feed, queue.Queue)
            assert isinstance(sub.err_feed, queue.Queue)
            first = sub.feed.get(timeout=3)          # Go style
            assert first.data == "1"
            assert [e.data for e in sub] == ["2", "3"]   # ends quietly at the end
            assert sub.err_feed.empty()
            assert sub.closed
            with pytest.raises(FeedClosedError):
                sub.get(timeout=1)


def test_get_timeout_raises_queue_empty():
    with RawServer(sse()) as server, connect_with_sse_feed(server.url()) as feed:
        sub = feed.subscribe()
        start = time.monotonic()
        with pytest.raises(queue.Empty):
            sub.get(timeout=0.2)
        assert 0.15 < time.monotonic() - start < 2


def test_subscription_close_ends_its_iteration_only():
    sent = threading.Event()

    def handler(conn):
        conn.start()
        conn.write(b"data: 1\n\n")
        sent.wait(5)
        conn.write(b"data: 2\n\n")
        conn.hold()

    with RawServer(handler) as server, connect_with_sse_feed(server.url()) as feed:
        a, b = feed.subscribe(), feed.subscribe()
        got = []
        t = threading.Thread(target=lambda: got.extend(e.data for e in a))
        t.start()
        assert b.get(timeout=3).data == "1"
        with a:
            pass          # closes it
        t.join(1)
        assert not t.is_alive()
        assert got in ([], ["1"])
        sent.set()
        assert b.get(timeout=3).data == "2"
        assert a.closed and not b.closed


def test_feed_close_unblocks_iterators_quietly():
    with RawServer(sse(b"data: 1\n\n")) as server:
        feed = connect_with_sse_feed(server.url())
        subs = [feed.subscribe() for _ in range(3)]
        results = []
        got_one = [threading.Event() for _ in subs]

        def consume(sub, got):
            try:
                seen = []
                for e in sub:
                    seen.append(e.data)
                    got.set()          # it blocks for the next one now
                results.append(seen)
            except Exception as exc:  # pragma: no cover - would fail the test
                results.append(exc)

        threads = [threading.Thread(target=consume, args=(s, g))
                   for s, g in zip(subs, got_one)]
        for t in threads:
            t.start()
        assert feed.connected.wait(3)
        assert all(g.wait(10) for g in got_one)
        start = time.monotonic()
        feed.close()
        for t in threads:
            t.join(1)
        assert time.monotonic() - start < 1
        assert all(not t.is_alive() for t in threads)
        assert results == [["1"]] * 3
        assert feed.closed and not feed.connected.is_set()
        assert all(s.err_feed.empty() for s in subs)
        with pytest.raises(FeedClosedError):
            feed.subscribe()
        feed.close()  # idempotent


def test_close_while_reader_blocks_on_the_socket():
    with RawServer(sse(b": hi\n\n")) as server:
        feed = connect_with_sse_feed(server.url())
        feed.subscribe()
        time.sleep(0.1)  # the reader is now in a blocking read
        start = time.monotonic()
        feed.close()
        assert time.monotonic() - start < 1
        assert not feed._thread.is_alive()
        # The server sees the connection go away.
        assert server.wait_idle(3)


def test_context_manager_closes():
    with RawServer(sse(b"data: 1\n\n")) as server:
        with connect_with_sse_feed(server.url()) as feed:
            sub = feed.subscribe()
            assert sub.get(timeout=3).data == "1"
        assert feed.closed and sub.closed
        assert not feed._thread.is_alive()


# -- first connect -------------------------------------------------------------

@pytest.mark.parametrize("code", [404, 500, 401])
def test_first_connect_non_200(code):
    with RawServer(status(code, b"nope", content_type="text/html")) as server:
        with pytest.raises(ResponseError) as info:
            connect_with_sse_feed(server.url())
    err = info.value
    assert err.status_code == code and err.content_type == "text/html"
    assert str(code) in str(err) and "text/html" in str(err)
    assert err.url == server.url()


def test_first_connect_204():
    with RawServer(status(204, content_type=None)) as server:
        with pytest.raises(ResponseError) as info:
            connect_with_sse_feed(server.url())
    assert info.value.status_code == 204 and "204" in str(info.value)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
def test_first_connect_wrong_content_type(content_type):
    def handler(conn):
        conn.start(content_type=content_type)
        conn.write(b"data: x\n\n")
        conn.end()

    with RawServer(handler) as server:
        with pytest.raises(ResponseError) as info:
            connect_with_sse_feed(server.url())
    err = info.value
    assert err.status_code == 200 and err.content_type == content_type
    assert repr(content_type) in str(err) and "text/event-stream" in str(err)


def test_content_type_with_parameters_and_case():
    handler = sse(b"data: x\n\n", content_type="Text/Event-Stream; charset=utf-8")
    with RawServer(handler) as server, connect_with_sse_feed(server.url()) as feed:
        assert feed.subscribe().get(timeout=3).data == "x"


def test_first_connect_refused():
    server = RawServer(sse())
    url = server.url()
    server.close()
    with pytest.raises(FeedConnectionError) as info:
        connect_with_sse_feed(url)
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert url in str(info.value)


def test_first_connect_timeout():
    def handler(conn):
        conn.hold(2)  # never answers

    with RawServer(handler) as server:
        start = time.monotonic()
        with pytest.raises(FeedConnectionError) as info:
            connect_with_sse_feed(server.url(), timeout=0.3)
        assert time.monotonic() - start < 2
        assert isinstance(info.value.__cause__, requests.Timeout)


def test_bad_arguments():
    for kwargs in ({"data": b"x", "json": {}}, {"queue_size": 0}, {"retry": -1},
                   {"timeout": 0}, {"read_timeout": 0}, {"max_retries": -1},
                   {"last_event_id": "a\nb"}, {"max_line_bytes": 0}):
        with pytest.raises(ValueError):
            connect_with_sse_feed("http://127.0.0.1:9/", **kwargs)


# -- fatal stream errors ---------------------------------------------------------

def test_line_too_long_ends_the_feed_with_an_error():
    def handler(conn):
        conn.start()
        conn.write(b"data: ok\n\ndata: " + b"x" * 500 + b"\n\n")  # one write
        conn.hold()

    with RawServer(handler) as server:
        with connect_with_sse_feed(server.url(), max_line_bytes=100, retry=50) as feed:
            sub = feed.subscribe()
            error = sub.err_feed.get(timeout=3)
            assert isinstance(error, EventStreamError)
            assert [e.data for e in collect(sub, 1)] == ["ok"]
            with pytest.raises(EventStreamError):
                sub.get(timeout=1)
            assert feed.closed and feed.error is error
            assert len(server.requests) == 1


# -- back-pressure -----------------------------------------------------------------

def test_slow_subscriber_back_pressures_the_server_and_close_is_prompt():
    stalled = threading.Event()
    sent = []
    event = b"data: " + b"x" * 93 + b"\n\n"
    assert len(event) == 101

    def handler(conn):
        conn.start(chunked=False)
        conn.sock.settimeout(1.0)
        total = 0
        try:
            while total < 256 << 20:
                conn.sock.sendall(event * 100)
                total += len(event) * 100
        except OSError:  # the send timed out: the client stopped reading
            stalled.set()
        sent.append(total)
        conn.sock.settimeout(None)
        conn.hold()

    threads_before = threading.active_count()
    with RawServer(handler) as server:
        feed = connect_with_sse_feed(server.url(), queue_size=4)
        sub = feed.subscribe()
        assert stalled.wait(30), "the server never felt back-pressure"
        assert sent[0] < 256 << 20
        assert sub.feed.qsize() == 4
        start = time.monotonic()
        feed.close()
        assert time.monotonic() - start < 1
        assert not feed._thread.is_alive()
    assert threading.active_count() == threads_before


def test_slow_subscriber_loses_nothing():
    body = b"".join(b"id: %d\ndata: %d\n\n" % (i, i) for i in range(3000))
    with RawServer(sse(body, hold=False)) as server:
        with connect_with_sse_feed(server.url(), queue_size=8, reconnect=False) as feed:
            sub = feed.subscribe()
            first = sub.get(timeout=3)
            # The reader waits for room instead of dropping.
            assert wait_for(lambda: sub.feed.qsize() == 8)
            time.sleep(0.1)
            assert sub.feed.qsize() == 8
            rest = drain(sub)
            assert [e.data for e in [first] + rest] == [str(i) for i in range(3000)]
            assert feed.last_event_id == "2999"


# -- leaks -------------------------------------------------------------------------------

_Snapshot = tuple[set[threading.Thread], set[tuple[str, str]]]


def _resources() -> _Snapshot:
    """The live threads and the open descriptors, each as (fd, target); a socket's
    target names its inode, so a reused fd number counts as a new descriptor."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return set(threading.enumerate()), fds


def _left_behind(before: _Snapshot) -> tuple[list[str], list[tuple[str, str]]]:
    """The threads and descriptors that exist now and did not at ``before``.

    Only additions count: earlier tests' garbage (sockets in reference cycles)
    is closed by the cyclic collector whenever it runs, which can be in the
    middle of a test and made the plain counts shrink (the oldest session)."""
    threads, fds = _resources()
    return sorted(t.name for t in threads - before[0]), sorted(fds - before[1])


def test_200_feeds_leave_no_threads_or_descriptors():
    def handler(conn):
        conn.start(chunked=conn.index % 2 == 0)
        conn.write(b"data: %d\n\n" % conn.index)
        conn.hold()

    with RawServer(handler) as server:
        # Warm up imports and lazily created objects before counting.
        with connect_with_sse_feed(server.url()) as feed:
            feed.subscribe().get(timeout=3)
        assert server.wait_idle(5)
        before = _resources()
        for i in range(200):
            feed = connect_with_sse_feed(server.url())
            if i % 4:  # some feeds are closed before they read anything
                assert feed.subscribe().get(timeout=3).event == "message"
            feed.close()
            assert not feed._thread.is_alive()
        assert server.wait_idle(5)   # the server's threads see the disconnects
        assert _left_behind(before) == ([], [])


def test_feeds_ending_with_errors_leave_nothing_behind():
    first, then = sse(b"data: warm-up\n\n", hold=False), status(500)

    def handler(conn):  # each feed connects twice: a stream, then a 500
        (then if conn.index % 2 else first)(conn)

    with RawServer(handler) as server:
        def once():
            feed = connect_with_sse_feed(server.url(), retry=10)
            sub = feed.subscribe()
            assert sub.get(timeout=3).data == "warm-up"
            assert isinstance(sub.err_feed.get(timeout=3), ResponseError)
            feed._thread.join(3)
            assert not feed._thread.is_alive()

        once()
        assert server.wait_idle(5)
        before = _resources()
        for _ in range(20):
            once()
        assert server.wait_idle(5)
        assert _left_behind(before) == ([], [])
