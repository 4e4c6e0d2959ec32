"""gosse.client requests: headers, bodies, sessions, redirects, and a real
WSGI server (Werkzeug's threaded server)."""
import json
import queue
import threading
import time

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from gosse.client import connect_with_sse_feed
from rawserver import RawServer, sse, status

pytestmark = pytest.mark.timeout(60)


def collect(sub, n, timeout=5):
    return [sub.get(timeout=timeout) for _ in range(n)]


def reconnecting(*pieces):
    """Handlers: the first stream ends (so the client reconnects), the second holds."""
    return [sse(*pieces, hold=False), sse(*pieces)]


def test_default_headers():
    with RawServer(sse(b"data: a\n\n")) as server:
        with connect_with_sse_feed(server.url()) as feed:
            feed.subscribe().get(timeout=3)
    request = server.requests[0]
    assert request.method == "GET"
    assert request.header("Accept") == "text/event-stream"
    assert request.header("Cache-Control") == "no-cache"
    assert request.header("Last-Event-ID") is None


def test_extra_headers_dict_can_override_defaults():
    headers = {"X-Token": "abc", "accept": "text/event-stream, */*;q=0.1"}
    with RawServer(reconnecting(b"data: a\n\n")) as server:
        with connect_with_sse_feed(server.url(), headers, retry=20) as feed:
            collect(feed.subscribe(), 2)
    for request in server.requests:
        assert request.header("X-Token") == "abc"
        assert request.header("Accept") == "text/event-stream, */*;q=0.1"
        assert [k.lower() for k, _ in request.headers].count("accept") == 1


def test_headers_callable_is_called_on_every_connect():
    calls = []

    def headers():
        calls.append(1)
        return {"Authorization": f"Bearer token-{len(calls)}"}

    handlers = [sse(b"data: a\n\n", hold=False), sse(b"data: b\n\n", hold=False),
                sse(b"data: c\n\n")]
    with RawServer(handlers) as server:
        with connect_with_sse_feed(server.url(), headers=headers, retry=20) as feed:
            assert [e.data for e in collect(feed.subscribe(), 3)] == ["a", "b", "c"]
    assert len(calls) == 3
    assert [r.header("Authorization") for r in server.requests] == [
        "Bearer token-1", "Bearer token-2", "Bearer token-3"]


def test_failing_headers_callable_on_reconnect_is_a_failed_attempt():
    calls = []

    def headers():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("token service down")
        return {"X-Call": str(len(calls))}

    with RawServer(reconnecting(b"data: x\n\n")) as server:
        with connect_with_sse_feed(server.url(), headers=headers, retry=20) as feed:
            collect(feed.subscribe(), 2)
    assert [r.header("X-Call") for r in server.requests] == ["1", "3"]


@pytest.mark.parametrize("body,expect,content_type", [
    ({"json": {"prompt": "hi", "n": 1}}, b'{"prompt": "hi", "n": 1}', "application/json"),
    ({"data": b"raw bytes"}, b"raw bytes", None),
    ({"data": {"a": "1", "b": "2"}}, b"a=1&b=2", "application/x-www-form-urlencoded"),
])
def test_request_body_is_sent_again_on_reconnect_when_asked(body, expect, content_type,
                                                            caplog):
    caplog.set_level("WARNING", logger="gosse")
    with RawServer(reconnecting(b"data: x\n\n")) as server:
        with connect_with_sse_feed(server.url(), method="POST", retry=20, reconnect=True,
                                   **body) as feed:
            collect(feed.subscribe(), 2)
    assert len(server.requests) == 2
    resent = [r for r in caplog.records if "re-sending the POST request body" in r.message]
    assert len(resent) == 1
    for request in server.requests:
        assert request.method == "POST"
        assert request.body == expect
        if content_type:
            assert request.header("Content-Type") == content_type


def test_session_cookies_and_auth_are_used_and_the_session_stays_open():
    session = requests.Session()
    session.cookies.set("sid", "s3cret", domain="127.0.0.1", path="/")
    session.auth = ("user", "pass")
    with RawServer(reconnecting(b"data: x\n\n")) as server:
        with connect_with_sse_feed(server.url(), session=session, retry=20) as feed:
            collect(feed.subscribe(), 2)
        for request in server.requests:
            assert request.header("Cookie") == "sid=s3cret"
            assert request.header("Authorization").startswith("Basic ")
        # The feed did not close a session it does not own.
        with connect_with_sse_feed(server.url(), session=session) as feed:
            feed.subscribe().get(timeout=3)
    session.close()


def test_cross_origin_redirect_drops_authorization_and_cookies():
    with RawServer(sse(b"data: elsewhere\n\n")) as target:
        location = f"http://localhost:{target.port}/sse"   # another host and port
        with RawServer(status(302, headers={"Location": location})) as origin:
            session = requests.Session()
            session.cookies.set("sid", "s3cret", domain="127.0.0.1", path="/")
            headers = {"Authorization": "Bearer s3cret", "X-Other": "kept"}
            with connect_with_sse_feed(origin.url(), headers, session=session) as feed:
                assert feed.subscribe().get(timeout=3).data == "elsewhere"
            session.close()
        first, = origin.requests
        assert first.header("Authorization") == "Bearer s3cret"
        assert first.header("Cookie") == "sid=s3cret"
        redirected, = target.requests
        assert redirected.header("Authorization") is None
        assert redirected.header("Cookie") is None
        assert redirected.header("X-Other") == "kept"
        assert redirected.header("Accept") == "text/event-stream"


def test_redirect_to_another_port_drops_authorization_and_cookie_headers():
    headers = {"Authorization": "Bearer s3cret", "Cookie": "sid=s3cret"}
    with RawServer(sse(b"data: x\n\n")) as target:
        with RawServer(status(307, headers={"Location": target.url()})) as origin:
            with connect_with_sse_feed(origin.url(), headers) as feed:
                feed.subscribe().get(timeout=3)
        assert origin.requests[0].header("Cookie") == "sid=s3cret"
        assert target.requests[0].header("Authorization") is None
        assert target.requests[0].header("Cookie") is None


def test_same_origin_redirect_keeps_authorization():
    def handler(conn):
        if conn.request.path == "/old":
            conn.respond(301, headers={"Location": "/sse"})
        else:
            sse(b"data: x\n\n")(conn)

    with RawServer(handler) as server:
        with connect_with_sse_feed(server.url("/old"),
                                   {"Authorization": "Bearer s3cret"}) as feed:
            feed.subscribe().get(timeout=3)
    assert [r.path for r in server.requests] == ["/old", "/sse"]
    assert server.requests[1].header("Authorization") == "Bearer s3cret"


# -- a real WSGI server ----------------------------------------------------------------

@pytest.fixture
def werkzeug_server():
    published = queue.Queue()
    stop = threading.Event()
    seen = []

    @Request.application
    def app(request):
        seen.append(request.headers.get("Last-Event-ID"))
        start = int(request.headers.get("Last-Event-ID") or 0)

        def stream():
            yield b"retry: 30\n\n"
            n = start
            while not stop.is_set():
                try:
                    item = published.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is None:
                    return      # the stream ends: the client reconnects
                n += 1
                yield f"id: {n}\ndata: {item}\n\n".encode()

        return Response(stream(), content_type="text/event-stream; charset=utf-8")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/", published, seen
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_against_werkzeug_threaded_server(werkzeug_server):
    url, published, seen = werkzeug_server
    with connect_with_sse_feed(url) as feed:
        sub = feed.subscribe()
        published.put("a")
        published.put("b")
        assert [(e.data, e.id) for e in collect(sub, 2)] == [("a", "1"), ("b", "2")]
        published.put(None)
        published.put("c")
        event = sub.get(timeout=5)
        assert (event.data, event.id, event.retry) == ("c", "3", 30)
        assert seen == [None, "2"]
        start = time.monotonic()
    assert time.monotonic() - start < 1


def test_json_payloads_end_to_end(werkzeug_server):
    url, published, _ = werkzeug_server
    with connect_with_sse_feed(url) as feed:
        sub = feed.subscribe("message")
        published.put(json.dumps({"x": "é"}, ensure_ascii=False))
        assert json.loads(sub.get(timeout=5).data) == {"x": "é"}


def test_example_client_feed_runs():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "examples", "client_feed.py"),
                           "--demo"], env={**os.environ, "PYTHONPATH": root},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "id='1' event='message' data='1'" and len(lines) == 5
