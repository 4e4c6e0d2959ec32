"""Hostile input to the server: injection attempts and malformed resume ids
never produce an extra field or event, a 500, or someone else's events."""
import socket

import pytest
import requests

from broker_app import make_app
from gosse import Broker, Event
from gosse.broker import RESET_EVENT
from servers import SSEReader, gunicorn_server, werkzeug_server
from test_broker import wait_until


@pytest.fixture
def served():
    broker = Broker(history=100, heartbeat_interval=0.5)
    with werkzeug_server(make_app(broker)) as url:
        yield broker, url
        broker.close()


INJECTIONS = [
    "1\n\ndata: injected\n\n",
    "1\r\nevent: admin\r\n",
    "1\rretry: 1\r",
    "1\0\n",
]


@pytest.mark.parametrize("evil", INJECTIONS)
def test_injection_through_id_and_event_over_http(served, evil):
    broker, url = served
    with SSEReader(f"{url}/sse?client=v") as r:
        assert wait_until(lambda: broker.is_client_present("v"))
        requests.post(f"{url}/broadcast", data={"data": "x", "id": evil, "event": evil},
                      timeout=5).raise_for_status()
        broker.broadcast(Event("end"))
        events = r.wait_events(2)
        assert [e.data for e in events] == ["x", "end"]
        clean = evil.replace("\r", "").replace("\n", "")
        assert events[0].id == clean.replace("\0", "")
        assert events[0].event == clean
        assert r.parser.retry is None
        assert b"injected" not in r.raw.replace(b"data: x", b"") or "injected" in clean


def test_unicode_line_separators_are_not_line_ends(served):
    broker, url = served
    seps = "a\u2028b\u2029c\x85d\x0be\x0cf"
    with SSEReader(f"{url}/sse?client=u") as r:
        assert wait_until(lambda: broker.is_client_present("u"))
        broker.broadcast(Event(seps, event=seps, id=seps))
        [e] = r.wait_events(1)
        assert (e.data, e.event, e.id) == (seps, seps, seps)


def test_topic_names_never_reach_the_wire(served):
    broker, url = served
    topic = "news\r\n\r\ndata: evil\r\n\r\n"
    with SSEReader(f"{url}/sse?client=t&topics=" + requests.utils.quote(topic)) as r:
        assert wait_until(lambda: broker.is_client_present("t"))
        assert broker.publish(topic, Event("ok")) == 1
        [e] = r.wait_events(1)
        assert e.data == "ok" and b"evil" not in r.raw


@pytest.mark.parametrize("last_id", ["unknown", "x" * 8000, "\u00e9t\u00e9", "\u2028"],
                         ids=["unknown", "8000-bytes", "utf8", "line-separator"])
def test_odd_last_event_id_gets_a_normal_stream_and_a_reset(served, last_id):
    broker, url = served
    broker.send("victim", Event("secret", id="s1")) if broker.is_client_present("victim") else None
    with SSEReader(f"{url}/sse?client=v",
                   headers={"Last-Event-ID": last_id.encode("utf-8").decode("latin-1")}) as r:
        assert r.status == 200
        [e] = r.wait_events(1)
        assert e.event == RESET_EVENT
        # echoed back only when short: a stream is not an amplifier
        assert e.data == (last_id if len(last_id.encode()) <= 256 else "")


def test_non_utf8_last_event_id(served):
    broker, url = served
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /sse?client=n HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe\x80\r\n\r\n")
        head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        data = head
        while b"event: " + RESET_EVENT.encode() not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk


def test_huge_last_event_id_is_refused_by_the_server_not_a_500(served):
    broker, url = served
    r = requests.get(f"{url}/sse?client=h", headers={"Last-Event-ID": "9" * 100_000},
                     timeout=5, stream=True)
    assert 400 <= r.status_code < 500  # the HTTP server's own header limit
    r.close()


def test_resume_never_replays_another_clients_events(served):
    broker, url = served
    with SSEReader(f"{url}/sse?client=alice") as a:
        assert wait_until(lambda: broker.is_client_present("alice"))
        broker.broadcast(Event("public", id="1"))
        broker.send("alice", Event("alice-only", id="2"))
        broker.publish("staff", Event("staff-only", id="3"))
        broker.broadcast(Event("public2", id="4"))
        a.wait_events(2)
    with SSEReader(f"{url}/sse?client=mallory", headers={"Last-Event-ID": "1"}) as m:
        assert [e.data for e in m.wait_events(1)] == ["public2"]
        broker.broadcast(Event("live", id="5"))
        assert [e.data for e in m.wait_events(2)] == ["public2", "live"]


def test_gunicorn_huge_header_is_a_4xx():
    with gunicorn_server("broker_app:app") as (url, _):
        r = requests.get(f"{url}/sse", headers={"Last-Event-ID": "9" * 100_000}, timeout=5)
        assert 400 <= r.status_code < 500
