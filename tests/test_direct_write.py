"""Direct writes (Broker(direct_write=True), the default) under gunicorn's
gthread worker: events written to the socket by the broadcasting thread,
chunk-framed, falling back to the stream's thread on a partial send.

Every test here reads the raw HTTP/1.1 bytes with a strict chunk decoder, so
a framing error, a byte out of place or a write after the last chunk fails
it.
"""
import socket
import threading
import time

import pytest
import requests

from gosse import EventStreamParser
from rawhttp import RawStream
from servers import SSEReader, gunicorn_server, wait_until

pytestmark = pytest.mark.timeout(120)


def stats(url):
    return requests.get(f"{url}/stats", timeout=5).json()


def post(url, **data):
    r = requests.post(url, data=data, timeout=60)
    r.raise_for_status()
    return int(r.text)


@pytest.fixture(scope="module")
def server():
    env = {"GOSSE_TEST_QUEUE": "100000", "GOSSE_TEST_HEARTBEAT": "0.3"}
    with gunicorn_server("broker_app:app", threads=40, env=env) as (url, proc):
        yield url


def expect_ids(events, n):
    assert [e.id for e in events[:n]] == [str(i) for i in range(n)]
    assert all(e.data.startswith(f"{i:08d}") for i, e in enumerate(events[:n]))


def test_streams_write_directly_in_order(server):
    streams = [RawStream(server, f"/sse?client=order{i}") for i in range(20)]
    try:
        assert all(s.chunked for s in streams)
        assert wait_until(lambda: stats(server)["sessions_direct"] == 20, timeout=10)
        done = []
        # Two bursts from two threads at once: the broker orders them.
        threads = [threading.Thread(target=lambda: done.append(post(f"{server}/burst", n=300)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert done == [20 * 300, 20 * 300]
        for s in streams:
            events = s.read_events(600)
            assert len(events) == 600
            # Each burst numbers 0..299; bursts may interleave, each stays in order.
            ids = [int(e.id) for e in events]
            assert sorted(ids) == sorted(list(range(300)) * 2)
        first = [e.id for e in streams[0].events]
        assert all([e.id for e in s.events] == first for s in streams)   # one order
    finally:
        for s in streams:
            s.close()


def test_partial_sends_keep_framing_and_order(server):
    """A reader that reads nothing while 12 MB are broadcast (more than the
    kernel's socket buffers hold, 4 MiB + 8 KiB here): non-blocking sends
    become partial, the stream's thread finishes them while later events
    queue behind; the bytes stay exact and in order."""
    slow = RawStream(server, "/sse?client=slow", rcvbuf=4096)
    fast = RawStream(server, "/sse?client=fast")
    try:
        assert wait_until(lambda: stats(server)["sessions_direct"] >= 2, timeout=10)
        result = []
        burst = threading.Thread(
            target=lambda: result.append(post(f"{server}/burst", n=400, size=32000)))
        burst.start()
        expect_ids(fast.read_events(400), 400)
        burst.join(60)          # every broadcast returned without waiting for slow
        assert result and result[0] >= 800
        assert stats(server)["queued"] > 0       # slow's socket could not take it all
        expect_ids(slow.read_events(400), 400)
        assert all(len(e.data) == 32000 for e in slow.events)
    finally:
        slow.close()
        fast.close()


def test_stream_ended_during_broadcasts_leaves_the_connection_clean(server):
    """The stream is closed while events are being written to it directly;
    its body must end with the last chunk and nothing after it, so that
    the next request on the same keep-alive connection is answered cleanly."""
    stop = threading.Event()

    def broadcaster():
        while not stop.is_set():
            post(f"{server}/burst", n=50, size=200)

    thread = threading.Thread(target=broadcaster)
    thread.start()
    try:
        for i in range(15):
            s = RawStream(server, f"/sse?client=end{i}")
            try:
                s.read_events(20)
                assert post(f"{server}/close/end{i}") == 1
                s.read_to_end()
                ids = [int(e.id) for e in s.events]
                assert all(b == a + 1 or b == 0 for a, b in zip(ids, ids[1:])), ids
                s.request("/stats")   # same connection
                head = s.read_head()
                assert head.startswith(b"HTTP/1.1 200"), head[:80]
            finally:
                s.close()
    finally:
        stop.set()
        thread.join(60)


def test_heartbeats_in_direct_mode(server):
    s = RawStream(server, "/sse?client=idle")
    try:
        assert wait_until(lambda: stats(server)["sessions_direct"] >= 1, timeout=10)
        chunks = []
        deadline = time.monotonic() + 5
        while len(chunks) < 3 and time.monotonic() < deadline:
            data = s._read_chunk(65536)
            if data != b":ok\n\n":
                chunks.append(data)
        assert chunks[:3] == [b":\n\n"] * 3
    finally:
        s.close()


def test_no_heartbeat_while_events_flow_directly(server):
    """Direct writes do not wake the stream's thread, yet it must not take
    a busy stream for a silent one (heartbeat interval 0.3 s here)."""
    s = RawStream(server, "/sse?client=busy")
    try:
        assert wait_until(lambda: stats(server)["sessions_direct"] >= 1, timeout=10)
        assert s._read_chunk(65536) == b":ok\n\n"
        chunks = []
        for i in range(12):             # an event every 0.1 s for 1.2 s
            post(f"{server}/send/busy", data=str(i))
            chunks.append(s._read_chunk(65536))
            time.sleep(0.1)
        assert b":\n\n" not in chunks and len(chunks) == 12
        assert s._read_chunk(65536) == b":\n\n"      # then silence: a heartbeat
    finally:
        s.close()


def test_http10_head_and_other_servers_use_the_iterable(server):
    before = stats(server)["sessions_direct"]
    s = RawStream(server, "/sse?client=old", version="HTTP/1.0")
    try:
        assert not s.chunked
        assert wait_until(lambda: stats(server)["sessions"] >= before + 1, timeout=10)
        assert stats(server)["sessions_direct"] == before
        assert post(f"{server}/burst", n=5) >= 1
        expect_ids(s.read_events(5), 5)
    finally:
        s.close()


def test_direct_write_false_uses_the_iterable():
    env = {"GOSSE_TEST_DIRECT": "0"}
    with gunicorn_server("broker_app:app", threads=8, env=env) as (url, proc):
        with SSEReader(f"{url}/sse?client=x") as r:
            assert wait_until(lambda: stats(url)["sessions"] == 1, timeout=10)
            assert post(f"{url}/burst", n=50) == 50
            expect_ids(r.wait_events(50), 50)
            assert stats(url)["sessions_direct"] == 0


def test_max_connection_age_ends_a_direct_stream_cleanly():
    env = {"GOSSE_TEST_MAX_AGE": "0.5"}
    with gunicorn_server("broker_app:app", threads=8, env=env) as (url, proc):
        s = RawStream(url, "/sse?client=aged")
        try:
            assert wait_until(lambda: stats(url)["sessions_direct"] == 1, timeout=10)
            assert post(f"{url}/burst", n=10) == 10
            start = time.monotonic()
            s.read_to_end()
            assert time.monotonic() - start < 5
            expect_ids(s.events, 10)
            assert wait_until(lambda: stats(url)["sessions"] == 0, timeout=5)
        finally:
            s.close()


# -- the stream alone, over a socketpair ------------------------------------------------

def test_interleaved_direct_and_thread_writes_keep_order():
    """20,000 events put as fast as possible on a stream whose reader drains
    a small socket buffer in small reads: direct sends, partial sends and
    the stream thread's writes of what queued meanwhile interleave; the
    reader must see every event once, in order, in valid chunks."""
    from gosse import Event
    from gosse.stream import SessionStream, frame_chunk

    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    closed = threading.Event()
    stream = SessionStream(b":ok\n\n", 30.0, 1_000_000, lambda s: closed.set(),
                           sock=server, direct=True)
    # What a server does: write the first bytes, then iterate on its own thread.
    server.sendall(frame_chunk(next(stream)))

    def serve():
        try:
            for data in stream:
                server.sendall(frame_chunk(data))
        finally:
            server.sendall(b"0\r\n\r\n")
            stream.close()

    server_thread = threading.Thread(target=serve)
    server_thread.start()
    reader = RawStream.__new__(RawStream)   # the strict decoder, on this socket
    reader.sock, reader.buf, reader.chunked = client, bytearray(), True
    reader.parser, reader.events, reader.ended = EventStreamParser(), [], False
    client.settimeout(30)
    got = []
    reader_thread = threading.Thread(target=lambda: got.extend(reader.read_events(20000, 512)))
    reader_thread.start()
    assert wait_until(lambda: stream.direct, timeout=5)
    wires = [Event(f"{i:08d}" + "z" * (i % 300), id=str(i)).encode() for i in range(20000)]
    for wire in wires:
        assert stream.put(wire, frame_chunk(wire))
    reader_thread.join(60)
    stream.end("closed")
    server_thread.join(10)
    assert closed.wait(5)
    assert [e.id for e in got] == [str(i) for i in range(20000)]
    server.close()
    client.close()


def test_head_request_gets_headers_and_holds_nothing(server):
    """gunicorn drops a HEAD response's body: a stream would hold a thread
    forever without noticing the client left.  HEAD gets the headers only."""
    before = stats(server)["sessions_total"]
    r = requests.head(f"{server}/sse?client=head", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    st = stats(server)
    assert st["sessions_total"] == before + 1
    assert requests.post(f"{server}/send/head", data={"data": "x"}, timeout=5).status_code == 404


def test_direct_write_possible_only_for_gunicorn_http11_plain_sockets():
    import ssl
    from gosse.stream import direct_write_possible

    plain = socket.socket()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    tls = context.wrap_socket(socket.socket(), do_handshake_on_connect=False)
    base = {"gunicorn.socket": plain, "SERVER_SOFTWARE": "gunicorn/27.0.1",
            "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_METHOD": "GET"}
    headers = [("Content-Type", "text/event-stream")]
    try:
        assert direct_write_possible(base, headers)
        for change in ({"gunicorn.socket": tls}, {"gunicorn.socket": None},
                       {"SERVER_SOFTWARE": "Werkzeug/3.1"}, {"SERVER_PROTOCOL": "HTTP/1.0"},
                       {"SERVER_PROTOCOL": "HTTP/2.0"}, {"REQUEST_METHOD": "HEAD"}):
            assert not direct_write_possible({**base, **change}, headers), change
        assert not direct_write_possible(base, headers + [("content-length", "10")])
    finally:
        plain.close()
        tls.close()
