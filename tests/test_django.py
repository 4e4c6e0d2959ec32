import threading

import pytest
import requests

pytest.importorskip("django")

from django_app import application, broker  # noqa: E402
from gosse import StreamingUnsupportedError  # noqa: E402
from gosse.contrib.django import sse_response  # noqa: E402
from servers import SSEReader, werkzeug_server  # noqa: E402
from test_broker import wait_until  # noqa: E402


def test_django_stream_not_gzipped_and_closes_session():
    closed = threading.Event()
    broker.set_disconnect_callback(lambda c, s: c == "dj" and closed.set())
    with werkzeug_server(application) as url:
        with SSEReader(f"{url}/events?client=dj",
                       headers={"X-Token": "1", "Accept-Encoding": "gzip"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            assert r.headers["Cache-Control"] == "no-cache, no-transform"
            assert r.headers.get("Content-Encoding") == "identity"
            assert wait_until(lambda: broker.is_client_present("dj"))
            assert requests.get(f"{url}/broadcast?data=hello", timeout=5).text == "1"
            [e] = r.wait_events(1)
            assert e.data == "hello"
        assert closed.wait(3)  # found by the next heartbeat write, then closed
        assert not broker.is_client_present("dj")


def test_django_refusal_keeps_status():
    with werkzeug_server(application) as url:
        r = requests.get(f"{url}/events", timeout=5)
        assert r.status_code == 403 and "token required" in r.text


def test_asgi_request_refused_clearly():
    class FakeASGIRequest:
        scope = {"type": "http"}
    with pytest.raises(StreamingUnsupportedError, match="WSGI"):
        sse_response(broker, FakeASGIRequest(), "x")
