"""The deployment matrix (issue 14): every server and proxy of the deployment guide's
"Deploying" table (tests/deploy.py), a real process on 127.0.0.1, checked
with real clients: a raw socket with a strict chunk decoder
(tests/rawhttp.py), the gosse client, and sseclient-py.

Each deployment is checked for: first bytes within 1 s of connecting; an
event within 200 ms of publish; 200 multi-line non-ASCII events exact, in
order, once; a departed client noticed within two heartbeats; 200
connect/disconnect cycles leaving no thread, fd or session; SIGTERM ending
the streams by the documented recipe; and a request after a server-ended
stream on the same connection, byte-correct (where the server keeps it).

Marked ``matrix`` (deselected by default; ``.ci/matrix.sh`` runs it):
    python3 -m pytest -m matrix tests/test_deploy_matrix.py
"""
import threading
import time

import pytest
import requests

from defects_app import payload
from deploy import DEPLOYMENTS, past_hand_over, sigterm
from gosse import connect_with_sse_feed
from rawhttp import FramingError, RawStream
from servers import wait_until

pytestmark = [pytest.mark.matrix, pytest.mark.timeout(90)]

HEARTBEAT = 1.0   # GOSSE_T_HEARTBEAT of every deployment (tests/deploy.py)
N, SIZE = 200, 300


@pytest.fixture(scope="module", params=DEPLOYMENTS, ids=lambda d: d.name)
def deployed(request):
    deployment = request.param
    with deployment.start() as running:
        yield deployment, running


def get_json(url, path, timeout=10):
    return requests.get(f"{url}{path}", timeout=timeout).json()


def sessions(url):
    return get_json(url, "/proc")["sessions"]


def first_bytes(stream):
    """The first body bytes (a chunk's data, or what arrived of a
    close-delimited body)."""
    if stream.chunked:
        return stream._read_chunk(65536)
    while not stream.buf:
        stream._more()
    data, stream.buf = bytes(stream.buf), bytearray()
    stream._take(data)
    return data


def read_until_eof(stream, timeout=10.0):
    """A close-delimited body to its end; the events in it."""
    stream.sock.settimeout(timeout)
    try:
        while True:
            stream._more()
    except EOFError:
        pass
    data, stream.buf = bytes(stream.buf), bytearray()
    stream._take(data)
    return stream.events


def read_to_clean_end(deployment, stream, timeout=10.0):
    """Read the body to its end: the last chunk (chunked), or the peer's
    close (close-delimited); nothing after it."""
    if deployment.chunked:
        stream.sock.settimeout(timeout)
        return stream.read_to_end()
    return read_until_eof(stream, timeout)


def expect_events(events, n, size, tag):
    assert [e.id for e in events] == [f"{tag}-{i}" for i in range(n)]
    for i, e in enumerate(events):
        assert e.data == payload(tag, i, size), f"event {i} differs"


def test_first_bytes_within_a_second(deployed):
    deployment, running = deployed
    t0 = time.monotonic()
    with RawStream(running.url, "/sse?client=first", timeout=5) as s:
        assert s.head.startswith(b"HTTP/1.1 200"), s.head[:80]
        assert b"text/event-stream" in s.head
        assert first_bytes(s).startswith(b":ok\n\n")
        elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"first bytes {elapsed:.2f} s after connecting"


def test_event_within_200ms_of_publish(deployed):
    deployment, running = deployed
    if deployment.per_worker == 1:
        pytest.skip("the stream holds the only worker: nothing else can publish to it "
                    "(docs: the sync worker serves one stream per worker)")
    url = running.url
    with RawStream(url, "/sse?client=latency", timeout=5) as s:
        first_bytes(s)
        assert wait_until(lambda: sessions(url) == 1, timeout=5)
        delays = []
        for k in range(3):   # the best of 3: two cores shared with other work
            t0 = time.monotonic()
            requests.post(f"{url}/burst", params={"n": 1, "tag": f"l{k}"}, timeout=5)
            while not any(e.id == f"l{k}-0" for e in s.events):
                s.read_events(len(s.events) + 1)
            delays.append(time.monotonic() - t0)
            if delays[-1] < 0.2:
                break
        assert min(delays) < 0.2, f"event after {delays} s"


def test_200_events_exact_in_order_once(deployed):
    deployment, running = deployed
    url = running.url
    if deployment.per_worker == 1:   # one stream per worker: its events queued first
        with RawStream(url, f"/sse?client=exact&preload={N}&size={SIZE}", timeout=10) as s:
            s.read_events(N)
            expect_events(s.events, N, SIZE, "p")
        return
    import sseclient
    feed = connect_with_sse_feed(f"{url}/sse?client=exact-gosse", reconnect=False)
    peer = requests.get(f"{url}/sse?client=exact-peer", stream=True, timeout=10,
                        headers={"Accept": "text/event-stream"})
    try:
        sub = feed.subscribe()
        with RawStream(url, "/sse?client=exact-raw", timeout=10) as raw:
            assert wait_until(lambda: sessions(url) == 3, timeout=10), get_json(url, "/proc")
            got_peer = []

            def read_peer():
                for e in sseclient.SSEClient(peer).events():
                    if e.id and e.id.startswith("b-"):
                        got_peer.append(e)
                        if len(got_peer) == N:
                            return

            reader = threading.Thread(target=read_peer, daemon=True)
            reader.start()
            assert requests.post(f"{url}/burst", params={"n": N, "size": SIZE},
                                 timeout=20).json()["n"] == 3 * N
            # Once: what follows is the next event.  (It also pushes the last
            # event through sseclient-py, which reads in blocks of 128 bytes:
            # on a close-delimited body it holds back an event's last bytes.)
            requests.post(f"{url}/burst", params={"n": 1, "size": SIZE, "tag": "after"},
                          timeout=5)
            raw.read_events(N + 1)
            expect_events(raw.events[:N], N, SIZE, "b")
            assert [e.id for e in raw.events[N:]] == ["after-0"]
            got = [sub.get(timeout=10) for _ in range(N + 1)]
            expect_events(got[:N], N, SIZE, "b")
            assert got[N].id == "after-0"
            reader.join(10)
            assert [e.id for e in got_peer] == [f"b-{i}" for i in range(N)]
            assert all(e.data == payload("b", i, SIZE) for i, e in enumerate(got_peer))
    finally:
        feed.close()
        peer.close()


def test_departed_client_noticed_within_two_heartbeats(deployed):
    deployment, running = deployed
    url = running.url
    s = RawStream(url, "/sse?client=gone", timeout=5)
    first_bytes(s)
    if deployment.per_worker != 1:
        assert wait_until(lambda: sessions(url) == 1, timeout=5)
    s.close()
    t0 = time.monotonic()
    # the sync worker answers only once the stream released it
    assert wait_until(lambda: sessions(url) == 0, timeout=2 * HEARTBEAT + 1.0), \
        get_json(url, "/proc")
    print(f"{deployment.name}: departure noticed after {time.monotonic() - t0:.2f} s")


def cycles(url, n, clients=8, hb=0.1):
    """``n`` connect / first bytes / disconnect cycles from ``clients``
    threads (heartbeat ``hb``: servers that notice a departed client only
    when a write fails free its thread soon)."""
    failed = []

    def run(share):
        try:
            for _ in range(share):
                with RawStream(url, f"/sse?client=cycle&hb={hb}", timeout=10) as s:
                    first_bytes(s)
        except Exception as exc:   # reported below
            failed.append(exc)

    threads = [threading.Thread(target=run, args=(n // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failed, failed[:3]
    assert not any(t.is_alive() for t in threads)


def test_connect_disconnect_cycles_leave_nothing(deployed):
    deployment, running = deployed
    url = running.url
    clients = 1 if deployment.per_worker == 1 else 8
    cycles(url, 40, clients)                 # warm-up: thread pools grow to their size

    def proc():   # a connection of its own, closed by the server (not counted later)
        return requests.get(f"{url}/proc", headers={"Connection": "close"},
                            timeout=10).json()

    assert wait_until(lambda: proc()["sessions"] == 0, timeout=5)
    before = proc()
    cycles(url, 200, clients)

    def settled():
        now = proc()
        return (now["sessions"] == 0 and now["threads"] <= before["threads"]
                and now["fds"] <= before["fds"])

    assert wait_until(settled, timeout=5, interval=0.1), (
        {k: before[k] for k in ("sessions", "threads", "fds")},
        {k: proc()[k] for k in ("sessions", "threads", "fds")})
    after = proc()
    assert after["sessions_total"] - before["sessions_total"] == 200
    assert after["pool_threads"] <= 64   # gunicorn --threads (tests/deploy.py)


def test_sigterm_ends_streams_by_the_recipe(deployed):
    deployment, _ = deployed
    with deployment.start() as running:   # its own server: this one stops
        url = running.url
        with RawStream(url, "/sse?client=term", timeout=10) as s:
            first_bytes(s)
            if deployment.per_worker != 1:
                requests.post(f"{url}/burst", params={"n": 3, "size": SIZE, "tag": "t"},
                              timeout=5)
                s.read_events(3)
            else:
                past_hand_over(s)
            t0 = time.monotonic()
            sigterm(running)
            try:
                read_to_clean_end(deployment, s, timeout=5)
                ended = True
            except (FramingError, OSError, EOFError):
                ended = False
            took = time.monotonic() - t0
            for e in s.events:   # whatever arrived is whole
                assert e.id.startswith("t-") and e.data == payload("t", int(e.id[2:]), SIZE)
        if deployment.term_clean:
            assert ended, f"the stream was cut {took:.2f} s after SIGTERM"
            assert took < 5, f"the stream ended {took:.2f} s after SIGTERM"
        rc = running.proc.wait(10)
        stopped = time.monotonic() - t0
        log = running.log()
        assert rc in deployment.term_rc, (rc, log[-2000:])
        assert stopped < 5, f"exited {stopped:.2f} s after SIGTERM"
        assert "Traceback" not in log, log[-3000:]


def test_request_after_a_server_ended_stream(deployed):
    deployment, running = deployed
    url = running.url
    if deployment.per_worker == 1:
        pytest.skip("gunicorn's sync worker closes every connection after its response, "
                    "and nothing else can end the stream it serves")
    with RawStream(url, "/sse?client=ka", timeout=10) as s:
        first_bytes(s)
        assert wait_until(lambda: sessions(url) == 1, timeout=5)
        assert requests.post(f"{url}/close/ka", timeout=5).text == "1"
        read_to_clean_end(deployment, s)
        if not deployment.reuse:
            # The server said so and closes the connection after the body.
            assert not deployment.chunked or b"\r\nconnection: close" in s.head.lower()
            assert not s.buf
            s.sock.settimeout(5)
            assert s.sock.recv(1) == b""
            return
        head, body = s.next_response("/whoami")
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        assert body.isdigit(), body[:80]
        head, body = s.next_response("/proc")    # and once more: the framing held
        assert head.startswith(b"HTTP/1.1 200") and body.startswith(b"{"), (head, body[:80])
