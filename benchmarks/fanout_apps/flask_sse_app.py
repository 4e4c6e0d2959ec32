"""Fan-out contender: flask-sse (Redis pub/sub) under gunicorn ``-k gthread``.
Each stream holds its own Redis subscription (one Redis connection and one
server thread); POST /broadcast is ``sse.publish(data)``.

/sse is flask-sse's own ``stream()`` view (``sse.messages()``, one
``str(Message)`` per event) with one change: a first ``:ok`` comment, so that
the response head reaches the client at once (flask-sse sends nothing until
the first event, and a WSGI server writes the head with the first body
bytes).  The subscription is made after that comment: the benchmark waits
for Redis' ``PUBSUB NUMSUB sse`` to reach N before it broadcasts."""
import os
import time

from flask import Flask, request, stream_with_context
from flask_sse import sse

PAD = "x" * 70
app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["FANOUT_REDIS_URL"]


@app.route("/sse")
def stream():
    @stream_with_context
    def generator():
        yield ":ok\n\n"
        for message in sse.messages(channel="sse"):
            yield str(message)
    return app.response_class(generator(), mimetype="text/event-stream")


@app.route("/broadcast", methods=["POST"])
def broadcast():
    sse.publish(f"{request.args['seq']} {time.monotonic():.6f} {PAD}")
    return "ok"
