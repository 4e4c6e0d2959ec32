import socket
import socketserver
import threading
import time
from wsgiref import simple_server
from wsgiref.validate import validator

import pytest
import requests

from broker_app import make_app
from gosse import Broker, BrokerClosedError, Event, JSONEvent, Refusal, UnknownClientError
from gosse.broker import RESET_EVENT
from servers import SSEReader, gunicorn_server, wait_until, werkzeug_server


def post(url, **data):
    r = requests.post(url, data=data, timeout=10)
    r.raise_for_status()
    return int(r.text) if r.text.isdigit() else r.text




@pytest.fixture
def served():
    """(broker, base_url) on Werkzeug's threaded server; closed afterwards."""
    brokers = []

    def start(**kwargs):
        broker = Broker(**kwargs)
        brokers.append(broker)
        cm = werkzeug_server(make_app(broker))
        url = cm.__enter__()
        cms.append(cm)
        return broker, url

    cms = []
    yield start
    for b in brokers:
        b.close()
    for cm in cms:
        cm.__exit__(None, None, None)


def open_sessions(url, n, client="c", **kw):
    return [SSEReader(f"{url}/sse?client={client}{i if kw.get('distinct') else ''}")
            for i in range(n)]


def test_headers_and_first_bytes(served):
    broker, url = served(headers={"Access-Control-Allow-Origin": "*"}, retry=1500)
    with SSEReader(f"{url}/sse?client=a") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert r.headers["Cache-Control"] == "no-cache, no-transform"
        assert r.headers["X-Accel-Buffering"] == "no"
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        r.sock.settimeout(5)
        first = r.read_some()  # arrives before any event is sent
        assert first == b"retry: 1500\n\n"
        assert r.parser.retry == 1500


def test_hop_by_hop_headers_refused():
    with pytest.raises(ValueError, match="hop-by-hop"):
        Broker(headers={"Connection": "keep-alive"})


def test_passes_wsgiref_validate(served):
    broker = Broker(heartbeat_interval=0.1)

    def app(environ, start_response):
        conn = broker.connect("v", environ)
        return conn(environ, start_response)

    # wsgiref's own server: Werkzeug's environ itself fails the validator
    # (REMOTE_PORT is an int there).
    class Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
        daemon_threads = True

    class Quiet(simple_server.WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = simple_server.make_server("127.0.0.1", 0, validator(app),
                                       server_class=Server, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with SSEReader(f"{url}/sse") as r:
            assert wait_until(lambda: broker.is_client_present("v"))
            broker.broadcast(Event("hi"))
            assert r.wait_events(1)[0].data == "hi"
            r.read_some()  # a heartbeat goes through the validator too
            [conn] = broker.sessions("v")
            conn.close()
            r.read_until_eof(5)
        assert conn.wait(5) and not broker.is_client_present("v")
    finally:
        server.shutdown()
        server.server_close()
        broker.close()


def test_broadcast_to_50_sessions_in_order(served):
    broker, url = served(heartbeat_interval=0.2)  # closed readers found by the next write
    readers = [SSEReader(f"{url}/sse?client=c{i}") for i in range(50)]
    try:
        assert wait_until(lambda: broker.stats()["sessions"] == 50)
        for i in range(20):
            assert broker.broadcast(Event(f"m{i}", id=str(i))) == 50
        for r in readers:
            assert [e.data for e in r.wait_events(20)] == [f"m{i}" for i in range(20)]
    finally:
        for r in readers:
            r.close()
    assert wait_until(lambda: broker.stats()["sessions"] == 0)


def test_send_reaches_every_session_of_one_client_only(served):
    broker, url = served()
    mine = [SSEReader(f"{url}/sse?client=me") for _ in range(3)]
    other = SSEReader(f"{url}/sse?client=other")
    assert wait_until(lambda: len(broker.sessions("me")) == 3 and broker.is_client_present("other"))
    assert broker.send("me", Event("for me")) == 3
    broker.broadcast(Event("for all"))
    for r in mine:
        assert [e.data for e in r.wait_events(2)] == ["for me", "for all"]
    assert [e.data for e in other.wait_events(1)] == ["for all"]
    other.read_some() if other.events[1:] else None
    assert [e.data for e in other.events] == ["for all"]
    with pytest.raises(UnknownClientError, match="nobody"):
        broker.send("nobody", Event("x"))
    for r in mine + [other]:
        r.close()


def test_session_send_reaches_one_session(served):
    broker, url = served()
    conns = []
    broker_connect = broker.connect

    def spy(*a, **k):
        c = broker_connect(*a, **k)
        conns.append(c)
        return c
    broker.connect = spy
    a, b = SSEReader(f"{url}/sse?client=x"), SSEReader(f"{url}/sse?client=x")
    assert wait_until(lambda: len(conns) == 2)
    assert conns[1].send(Event("only b"))
    broker.broadcast(Event("all"))
    assert [e.data for e in a.wait_events(1)] == ["all"]
    assert [e.data for e in b.wait_events(2)] == ["only b", "all"]
    assert conns[0].session_id != conns[1].session_id and len(conns[0].session_id) == 36
    a.close(), b.close()


def test_topics(served):
    broker, url = served()
    news = SSEReader(f"{url}/sse?client=a&topics=news,sport")
    plain = SSEReader(f"{url}/sse?client=b")
    assert wait_until(lambda: broker.stats()["sessions"] == 2)
    assert broker.publish("news", Event("n1")) == 1
    assert broker.publish("weather", Event("w")) == 0
    broker.broadcast(Event("all"))
    assert [e.data for e in news.wait_events(2)] == ["n1", "all"]
    assert [e.data for e in plain.wait_events(1)] == ["all"]
    news.close(), plain.close()


def test_metadata_lifecycle(served):
    broker, url = served(heartbeat_interval=0.2)
    with pytest.raises(UnknownClientError):
        broker.set_client_metadata("m", {"x": 1})
    r = SSEReader(f"{url}/sse?client=m")
    assert wait_until(lambda: broker.is_client_present("m"))
    broker.set_client_metadata("m", {"x": 1})
    assert broker.get_client_metadata("m") == {"x": 1}
    r.close()
    assert wait_until(lambda: not broker.is_client_present("m"))
    with pytest.raises(UnknownClientError):
        broker.get_client_metadata("m")


def test_disconnect_detected_within_two_heartbeats(served):
    broker, url = served(heartbeat_interval=0.3)
    fired = []
    done = threading.Event()

    @broker.on_disconnect
    def gone(client_id, session_id):
        fired.append((client_id, session_id))
        done.set()

    r = SSEReader(f"{url}/sse?client=d")
    assert wait_until(lambda: broker.is_client_present("d"))
    [conn] = broker.sessions("d")
    r.sock.shutdown(socket.SHUT_RDWR)
    r.close()
    t0 = time.monotonic()
    assert done.wait(2 * 0.3 + 1.0)
    assert time.monotonic() - t0 <= 2 * 0.3 + 1.0
    assert conn.done.wait(1)
    time.sleep(0.7)  # give a duplicate call the chance to happen (there must be none)
    assert fired == [("d", conn.session_id)]
    assert conn.end_reason == "disconnected"


def test_callback_exception_is_logged_not_raised(served, caplog):
    broker, url = served()
    broker.set_disconnect_callback(lambda c, s: 1 / 0)
    r = SSEReader(f"{url}/sse?client=e")
    assert wait_until(lambda: broker.is_client_present("e"))
    [conn] = broker.sessions("e")
    conn.close()
    r.read_until_eof(5)
    assert conn.wait(5)
    assert wait_until(lambda: "disconnect callback failed" in caplog.text)


def test_connection_close_ends_response_and_fires_once(served):
    broker, url = served()
    calls = []
    broker.set_disconnect_callback(lambda c, s: calls.append(s))
    r = SSEReader(f"{url}/sse?client=f")
    assert wait_until(lambda: broker.is_client_present("f"))
    [conn] = broker.sessions("f")
    conn.send(Event("last words"))
    conn.close()
    conn.close()
    events = r.read_until_eof(5)
    assert [e.data for e in events] == ["last words"]
    assert conn.wait(5) and calls == [conn.session_id]
    assert conn.send(Event("too late")) is False


def test_stalled_reader_dropped_without_delaying_others(served):
    broker, url = served(queue_size=8)
    port = int(url.rsplit(":", 1)[1])
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /sse?client=stalled HTTP/1.1\r\nHost: x\r\n\r\n")  # never reads
    good = SSEReader(f"{url}/sse?client=good")
    assert wait_until(lambda: broker.stats()["sessions"] == 2)
    dropped = threading.Event()
    broker.set_disconnect_callback(lambda c, s: c == "stalled" and dropped.set())
    payload = "x" * 16384
    t0 = time.monotonic()
    for i in range(200):
        broker.broadcast(Event(payload, id=str(i)))
        assert good.wait_events(i + 1, timeout=5)[-1].id == str(i)
    elapsed = time.monotonic() - t0
    assert dropped.wait(5), broker.stats()
    assert broker.stats()["sessions_dropped_slow"] == 1
    assert elapsed < 10
    assert wait_until(lambda: broker.stats()["sessions"] == 1)
    stalled.close()
    good.close()


def test_replay_after_reconnect_no_loss_no_duplicate(served):
    broker, url = served(history=100, heartbeat_interval=0.2)
    r = SSEReader(f"{url}/sse?client=r")
    assert wait_until(lambda: broker.is_client_present("r"))
    for i in range(5):
        broker.broadcast(Event(f"e{i}", id=str(i)))
    last = r.wait_events(3)[2].id
    r.close()
    assert wait_until(lambda: not broker.is_client_present("r"))
    for i in range(5, 8):
        broker.broadcast(Event(f"e{i}", id=str(i)))
    broker.send("someone-else", Event("private", id="p")) if broker.is_client_present("someone-else") else None
    r2 = SSEReader(f"{url}/sse?client=r", headers={"Last-Event-ID": last})
    assert [e.data for e in r2.wait_events(5)] == ["e3", "e4", "e5", "e6", "e7"]
    broker.broadcast(Event("e8", id="8"))
    assert r2.wait_events(6)[-1].data == "e8"
    r2.close()


def test_replay_is_per_client_and_by_query_param(served):
    broker, url = served(history=10)
    a = SSEReader(f"{url}/sse?client=a")
    b = SSEReader(f"{url}/sse?client=b")
    assert wait_until(lambda: broker.stats()["clients"] == 2)
    broker.broadcast(Event("all0", id="0"))
    broker.send("a", Event("secret-a", id="1"))
    broker.send("b", Event("secret-b", id="2"))
    broker.broadcast(Event("all3", id="3"))
    a.close(), b.close()
    with SSEReader(f"{url}/sse?client=b&lastEventId=0") as rb:
        assert [e.data for e in rb.wait_events(2)] == ["secret-b", "all3"]


def test_unknown_last_event_id_gets_reset_event(served):
    broker, url = served(history=10)
    broker.broadcast(Event("x", id="1"))
    with SSEReader(f"{url}/sse?client=z", headers={"Last-Event-ID": "nope"}) as r:
        [e] = r.wait_events(1)
        assert (e.event, e.data) == (RESET_EVENT, "nope")


def test_auto_id_makes_everything_resumable(served):
    broker, url = served(history=10, auto_id=True)
    r = SSEReader(f"{url}/sse?client=q")
    assert wait_until(lambda: broker.is_client_present("q"))
    broker.broadcast(Event("a"))
    broker.broadcast(Event("b"))
    broker.broadcast(Event("c", id="custom"))
    ids = [e.id for e in r.wait_events(3)]
    epoch = ids[0].rsplit("-", 1)[0]
    assert ids == [f"{epoch}-1", f"{epoch}-2", "custom"]
    r.close()
    with SSEReader(f"{url}/sse?client=q", headers={"Last-Event-ID": ids[0]}) as r2:
        assert [e.data for e in r2.wait_events(2)] == ["b", "c"]


def test_heartbeat_comment_after_silence(served):
    broker, url = served(heartbeat_interval=0.2)
    with SSEReader(f"{url}/sse?client=h") as r:
        r.sock.settimeout(5)
        r.read_some()
        t0 = time.monotonic()
        assert r.read_some() == b":\n\n"
        assert 0.1 < time.monotonic() - t0 < 2


def test_per_connect_heartbeat_interval():
    broker = Broker(heartbeat_interval=60)

    def app(environ, start_response):
        return broker.connect("h", environ, heartbeat_interval=0.1)(environ, start_response)

    with werkzeug_server(app) as url, SSEReader(f"{url}/sse") as r:
        r.sock.settimeout(5)
        r.read_some()
        assert r.read_some() == b":\n\n"
    broker.close()


def test_several_queued_events_written_in_one_chunk():
    broker = Broker()
    conn = broker.connect("k", {"REQUEST_METHOD": "GET"})
    body = iter(conn({"REQUEST_METHOD": "GET"}, lambda status, headers: None))
    assert next(body) == b":ok\n\n"
    for i in range(5):
        broker.broadcast(Event(str(i)))
    # The stream finds five events queued: one item (one chunk) holds them all.
    assert next(body) == b"".join(Event(str(i)).encode() for i in range(5))
    broker.close()


def test_on_connect_refusal_before_headers(served):
    def auth(environ):
        if environ.get("HTTP_AUTHORIZATION") != "Bearer ok":
            return 401, "who are you?"
        return None
    broker, url = served(on_connect=auth)
    r = requests.get(f"{url}/sse?client=x", timeout=5)
    assert r.status_code == 401 and r.text == "who are you?\n"
    assert r.headers["Content-Type"].startswith("text/plain")
    with SSEReader(f"{url}/sse?client=x", headers={"Authorization": "Bearer ok"}) as ok:
        assert ok.status == 200
    assert isinstance(broker.connect("x", {"REQUEST_METHOD": "GET"}), Refusal)


def test_session_caps_answer_503(served):
    broker, url = served(max_sessions=3, max_sessions_per_client=2, retry_after=7)
    a1, a2 = SSEReader(f"{url}/sse?client=a"), SSEReader(f"{url}/sse?client=a")
    r = requests.get(f"{url}/sse?client=a", timeout=5)
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"
    assert "max_sessions_per_client=2" in r.text
    b1 = SSEReader(f"{url}/sse?client=b")
    assert b1.status == 200
    r = requests.get(f"{url}/sse?client=c", timeout=5)
    assert r.status_code == 503 and "max_sessions=3" in r.text
    for x in (a1, a2, b1):
        x.close()


def test_max_connection_age_ends_stream_cleanly(served):
    broker, url = served(max_connection_age=0.5, heartbeat_interval=0.2)
    with SSEReader(f"{url}/sse?client=old") as r:
        t0 = time.monotonic()
        r.read_until_eof(5)
        assert 0.4 <= time.monotonic() - t0 < 3
    assert wait_until(lambda: not broker.is_client_present("old"))


def test_broker_close_with_100_streams_is_prompt(served):
    before = threading.active_count()
    broker, url = served()
    readers = [SSEReader(f"{url}/sse?client=c{i}") for i in range(100)]
    assert wait_until(lambda: broker.stats()["sessions"] == 100, timeout=10)
    t0 = time.monotonic()
    broker.close()
    assert time.monotonic() - t0 < 1.0
    for r in readers:
        r.read_until_eof(5)
        r.close()
    assert broker.stats()["sessions"] == 0
    with pytest.raises(BrokerClosedError):
        broker.connect("late", {})
    with pytest.raises(BrokerClosedError):
        broker.broadcast(Event("late"))
    # Server threads finish; the broker itself started none.
    assert wait_until(lambda: threading.active_count() <= before + 1, timeout=5)


def test_connection_never_served_can_be_closed():
    broker = Broker()
    calls = []
    broker.set_disconnect_callback(lambda c, s: calls.append(c))
    conn = broker.connect("n", {"REQUEST_METHOD": "GET"})
    assert broker.is_client_present("n")
    conn.close()
    assert conn.done.is_set() and calls == ["n"] and not broker.is_client_present("n")


def test_bad_arguments():
    with pytest.raises(ValueError):
        Broker(heartbeat_interval=0)
    with pytest.raises(ValueError):
        Broker(queue_size=0)
    broker = Broker()
    with pytest.raises(TypeError):
        broker.connect(5, {})
    with pytest.raises(TypeError):
        broker.broadcast("not an event")
    with pytest.raises(TypeError):
        broker.connect("x", {}, topics="news")


def test_stats_counts(served):
    broker, url = served()
    r = SSEReader(f"{url}/sse?client=s")
    assert wait_until(lambda: broker.is_client_present("s"))
    broker.broadcast(JSONEvent({"a": 1}))
    r.wait_events(1)
    st = broker.stats()
    assert st["clients"] == 1 and st["sessions"] == 1 and st["events_delivered"] == 1
    r.close()


def test_under_gunicorn_gthread():
    with gunicorn_server("broker_app:app", env={"GOSSE_TEST_HISTORY": "50",
                                                       "GOSSE_TEST_HEARTBEAT": "0.2"}) as (url, proc):
        readers = [SSEReader(f"{url}/sse?client=g{i % 3}") for i in range(9)]
        assert wait_until(lambda: requests.get(f"{url}/stats", timeout=5).json()["sessions"] == 9,
                          timeout=10)
        for i in range(10):
            assert post(f"{url}/broadcast", data=f"b{i}", id=str(i)) == 9
        assert post(f"{url}/send/g1", data="to g1", id="s") == 3
        for i, r in enumerate(readers):
            expected = [f"b{k}" for k in range(10)] + (["to g1"] if i % 3 == 1 else [])
            assert [e.data for e in r.wait_events(len(expected))] == expected
        readers[0].close()
        with SSEReader(f"{url}/sse?client=g0", headers={"Last-Event-ID": "7"}) as again:
            assert [e.data for e in again.wait_events(2)] == ["b8", "b9"]
        for r in readers[1:]:
            r.close()
        assert wait_until(lambda: requests.get(f"{url}/stats", timeout=5).json()["sessions"] == 0,
                          timeout=10)
        r = requests.post(f"{url}/send/g1", data={"data": "x"}, timeout=5)
        assert r.status_code == 404


def test_gunicorn_stalled_reader_thread_is_freed():
    env = {"GOSSE_TEST_QUEUE": "4"}
    with gunicorn_server("broker_app:app", threads=4, env=env) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(b"GET /sse?client=stalled HTTP/1.1\r\nHost: x\r\n\r\n")
        good = SSEReader(f"{url}/sse?client=good")
        assert wait_until(lambda: requests.get(f"{url}/stats", timeout=5).json()["sessions"] == 2,
                          timeout=10)
        payload = "y" * 65536
        sent = 0
        while sent < 400:  # the kernel's socket buffers absorb a few MB first
            post(f"{url}/broadcast", data=payload, id=str(sent))
            sent += 1
            good.wait_events(sent, timeout=10)
            if sent % 20 == 0 and requests.get(f"{url}/stats", timeout=5).json()[
                    "sessions_dropped_slow"]:
                break
        st = {}
        assert wait_until(lambda: st.update(requests.get(f"{url}/stats", timeout=5).json())
                          or st["sessions"] == 1, timeout=10), st
        assert st["sessions_dropped_slow"] == 1
        stalled.close()
        good.close()
