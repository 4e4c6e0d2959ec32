import pytest

flask = pytest.importorskip("flask")

from gosse import Broker, Event  # noqa: E402
from gosse.contrib.flask import stream  # noqa: E402
from servers import SSEReader, wait_until, werkzeug_server  # noqa: E402


def test_flask_view_returning_a_stream():
    app = flask.Flask(__name__)
    broker = Broker(heartbeat_interval=0.2)

    @app.route("/sse/<user>")
    def sse(user):
        return stream(broker, user, topics=["news"])

    @app.route("/raw")
    def raw():  # the plain form: the connection itself is the view's result
        return broker.connect("raw", flask.request.environ)

    with werkzeug_server(app) as url:
        with SSEReader(f"{url}/sse/ann") as r, SSEReader(f"{url}/raw") as plain:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            assert wait_until(lambda: broker.stats()["sessions"] == 2)
            broker.publish("news", Event("n"))
            broker.send("ann", Event("for ann"))
            broker.broadcast(Event("all"))
            assert [e.data for e in r.wait_events(3)] == ["n", "for ann", "all"]
            assert [e.data for e in plain.wait_events(1)] == ["all"]
        assert wait_until(lambda: broker.stats()["sessions"] == 0)
    broker.close()
