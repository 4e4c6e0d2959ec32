"""The gosse client against the gosse server, over real sockets."""
import threading

import pytest

from broker_app import make_app
from gosse import Broker, Event, ResponseError, connect_with_sse_feed
from servers import werkzeug_server
from test_broker import wait_until


@pytest.fixture
def served():
    broker = Broker(history=1000, retry=50, heartbeat_interval=0.2)
    with werkzeug_server(make_app(broker)) as url:
        yield broker, url
        broker.close()


def test_routing_by_event_type(served):
    broker, url = served
    with connect_with_sse_feed(f"{url}/sse?client=a") as feed:
        news, everything, plain = feed.subscribe("news"), feed.subscribe(), feed.subscribe("message")
        assert wait_until(lambda: broker.is_client_present("a"))
        broker.broadcast(Event("n", event="news"))
        broker.broadcast(Event("m"))
        assert news.get(timeout=5).data == "n"
        assert [everything.get(timeout=5).data for _ in range(2)] == ["n", "m"]
        assert plain.get(timeout=5).data == "m"
        assert feed.retry == 50


def test_server_closing_streams_loses_and_duplicates_nothing(served):
    broker, url = served
    received = []
    with connect_with_sse_feed(f"{url}/sse?client=r") as feed:
        sub = feed.subscribe()
        stop = threading.Event()

        def publish():
            for i in range(300):
                broker.broadcast(Event(str(i), id=str(i)))
                if i % 50 == 25:  # the server ends the stream; the client resumes
                    total = broker.stats()["sessions_total"]
                    for conn in broker.sessions("r"):
                        conn.close()
                    # publish a few while it is away, then wait for its return
                    for j in range(3):
                        broker.broadcast(Event(f"{i}.{j}", id=f"{i}.{j}"))
                    wait_until(lambda: broker.stats()["sessions_total"] > total)  # noqa: B023 - waited for here
                if stop.is_set():
                    return

        assert wait_until(lambda: broker.is_client_present("r"))
        t = threading.Thread(target=publish)
        t.start()
        try:
            while len(received) < 318:
                received.append(sub.get(timeout=10).data)
        finally:
            stop.set()
            t.join(10)
        expected = []
        for i in range(300):
            expected.append(str(i))
            if i % 50 == 25:
                expected += [f"{i}.{j}" for j in range(3)]
        assert received == expected
        assert feed.last_event_id == "299"
        assert broker.stats()["sessions_total"] == 7


def test_closed_broker_refuses_reconnect_with_error(served):
    broker, url = served
    with connect_with_sse_feed(f"{url}/sse?client=x", max_retries=3) as feed:
        sub = feed.subscribe()
        assert wait_until(lambda: broker.is_client_present("x"))
        broker.broadcast(Event("last"))
        broker.close()  # the stream ends; reconnects get 500 (connect raises)
        assert sub.get(timeout=5).data == "last"
        error = sub.err_feed.get(timeout=10)
        assert isinstance(error, ResponseError) and error.status_code == 500
