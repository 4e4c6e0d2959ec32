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
    env = {"GOSSE_TEST_QUEUE": "100000", "GOSSE_TEST_QUEUE_BYTES": str(64 << 20),
           "GOSSE_TEST_HEARTBEAT": "0.3"}
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


def test_no_socket_call_while_the_registry_lock_is_held(server):
    """Issue 12, defect 12: a broadcast to direct streams made its N sends
    while holding the one broker lock, so every connect(), stats() and other
    broadcast waited for them.  Watched with a profile hook in the
    broadcasting thread: not one socket call under the lock."""
    streams = [RawStream(server, f"/sse?client=locked{i}") for i in range(20)]
    try:
        assert wait_until(lambda: stats(server)["sessions_direct"] >= 20, timeout=10)
        r = requests.post(f"{server}/socket-calls-under-lock", data={"n": 50}, timeout=30)
        assert r.json() == []
        for s in streams:
            expect_ids(s.read_events(50), 50)
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


# -- the writer alone, over a socketpair ------------------------------------------------

def _writer_session(sock, **kw):
    from gosse.session import Mailbox, Session
    released = threading.Event()
    session = Session("w", "s1", frozenset(), Mailbox(kw.get("items", 1_000_000),
                                                      kw.get("bytes", 1 << 30)),
                      kw.get("heartbeat", 30.0), None, sock, lambda s: released.set())
    session.served = True
    return session, released


def test_writer_partial_sends_keep_framing_and_order():
    """20,000 events handed to the writer for a socket with a 4 KiB send
    buffer, read in 512-byte reads: the writer's partial sends, its joined
    bursts and its flushes must give every event once, in order, in valid
    chunks; finishing then gives the socket back blocking, with nothing after
    the last event, so the server's last chunk follows cleanly."""
    from gosse import Event
    from gosse.writer import SocketWriter, frame_chunk

    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server.settimeout(7.0)   # the server's own setting: restored on give-back
    writer = SocketWriter()
    session, _ = _writer_session(server)
    reader = RawStream.__new__(RawStream)   # the strict decoder, on this socket
    reader.sock, reader.buf, reader.chunked = client, bytearray(), True
    reader.parser, reader.events, reader.ended = EventStreamParser(), [], False
    client.settimeout(30)
    reader_thread = threading.Thread(target=lambda: reader.read_events(20001, 512))
    reader_thread.start()
    finished = writer.adopt(session, server, [Event("queued before", id="-1").encode()])
    recipients = (session,)
    for i in range(20000):
        writer.deliver(frame_chunk(Event(f"{i:08d}" + "z" * (i % 300), id=str(i)).encode()),
                       recipients)
    reader_thread.join(60)
    session.end("closed")
    writer.finish(session)
    assert finished.acquire(timeout=5) and not session.abort
    assert server.gettimeout() == 7.0
    server.sendall(b"0\r\n\r\n")   # what the server writes next
    reader.read_to_end()
    assert [e.id for e in reader.events] == ["-1"] + [str(i) for i in range(20000)]
    assert reader.ended
    writer.stop()
    writer.join(5)
    server.close()
    client.close()


def test_writer_cuts_a_half_sent_chunk_at_its_deadline():
    """A clean end whose flush cannot finish (the reader stopped reading)
    cuts the connection at the deadline instead of handing a half-written
    chunk back to the server (defect 1 of issue 12)."""
    from gosse.writer import SocketWriter, frame_chunk

    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer = SocketWriter(close_timeout=0.3)
    session, _ = _writer_session(server)
    finished = writer.adopt(session, server, [])
    writer.deliver(frame_chunk(b"data: " + b"x" * (2 << 20) + b"\n\n"), (session,))
    session.end("closed")
    writer.finish(session)
    assert finished.acquire(timeout=5)
    assert session.abort and session.end_reason == "closed"
    client.settimeout(5)
    received = 0
    while True:
        data = client.recv(1 << 16)
        if not data:
            break
        received += len(data)
    assert 0 < received < 2 << 20   # cut inside the chunk, and EOF: never a last chunk
    writer.stop()
    writer.join(5)
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


def test_writer_cuts_a_reader_that_takes_nothing_for_two_heartbeats(monkeypatch):
    """Bytes wait in the writer and the reader accepts none: after two
    heartbeat intervals (30 s at least; shortened here) the session ends as a
    slow reader, without a new event to find it out."""
    import gosse.writer
    from gosse.writer import SocketWriter, frame_chunk
    monkeypatch.setattr(gosse.writer, "STALLED_AFTER", 0.3)

    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer = SocketWriter()
    session, _ = _writer_session(server, heartbeat=0.2)
    finished = writer.adopt(session, server, [])
    writer.deliver(frame_chunk(b"data: " + b"x" * (1 << 20) + b"\n\n"), (session,))
    assert finished.acquire(timeout=5)
    assert session.abort and session.end_reason == "slow reader"
    writer.stop()
    writer.join(5)
    server.close()
    client.close()


def test_handoff_only_for_an_exact_allow_list():
    """handoff_socket says yes only for gunicorn's own loop (or Werkzeug's
    pass-through iterators) framing HTTP/1.1 chunks on a plain socket."""
    import ssl
    import types

    from gosse.writer import handoff_socket

    plain = socket.socket()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    tls = context.wrap_socket(socket.socket(), do_handshake_on_connect=False)
    # A stand-in for gunicorn's worker loop and Response (their names are
    # what the allow-list checks; the real ones run in the tests above).
    fake = types.ModuleType("gunicorn.http.wsgi")
    exec("class Response:\n"
         "    def __init__(self, sock, chunked, sent):\n"
         "        self.sock, self.chunked, self.headers_sent = sock, chunked, sent\n",
         fake.__dict__)
    loop = {"__name__": "gunicorn.workers.gthread", "Response": fake.Response}
    exec("def handle_request(sock, chunked, sent, call):\n"
         "    resp = Response(sock, chunked, sent)\n"
         "    return call()\n", loop)
    middle = {"__name__": "myapp.middleware"}
    exec("def rewrite(call):\n    return call()\n", middle)
    import sys

    def ask(environ, chunked=True, sent=True, through=None):
        def call():
            return handoff_socket(environ, sys._getframe(1))
        if through is not None:
            return loop["handle_request"](plain, chunked, sent, lambda: through(call))
        return loop["handle_request"](plain, chunked, sent, call)

    env = {"gunicorn.socket": plain}
    try:
        assert ask(env) is plain
        assert ask(env, chunked=False) is None            # HTTP/1.0, HEAD, uwsgi, length
        assert ask(env, sent=False) is None
        assert ask(env, through=middle["rewrite"]) is None  # unknown middleware frame
        assert ask({"gunicorn.socket": tls}) is None
        assert ask({"gunicorn.socket": None}) is None
        assert ask({"werkzeug.socket": plain}) is None
        assert handoff_socket(env, sys._getframe()) is None   # not a server loop
    finally:
        plain.close()
        tls.close()
