"""Serving gosse streams with waitress (pure Python; runs on Windows too).

    python examples/waitress_app.py        # then: curl -N localhost:8080/sse

Each open stream holds one waitress thread, so ``threads`` must exceed the
streams you expect plus about 4 for ordinary requests (waitress's default,
4, is exhausted by 4 streams: the whole app stops answering).
``channel_request_lookahead=1`` keeps a streaming connection watched, so a
client that leaves is noticed within a second (``waitress.client_disconnected``).
Leave ``send_bytes`` at its default.  ``close_on_sigterm`` ends every stream
cleanly on SIGTERM, then stops waitress.
"""
import os
import uuid

from flask import Flask, request

from gosse import Broker, Event
from gosse.contrib.signals import close_on_sigterm

STREAMS = int(os.environ.get("STREAMS", "100"))

app = Flask(__name__)
broker = Broker()


@app.route("/sse")
def sse():
    return broker.connect(str(uuid.uuid4()), request.environ)


@app.route("/say", methods=["POST"])
def say():
    return str(broker.broadcast(Event(request.get_data(as_text=True))))


if __name__ == "__main__":
    import waitress
    close_on_sigterm()
    waitress.serve(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")),
                   threads=STREAMS + 4, channel_request_lookahead=1)
