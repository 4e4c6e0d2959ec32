"""Go example "broadcast_message": every connected browser tab receives the
same event every two seconds (``BROADCAST_EVERY`` seconds).

    python examples/broadcast_message.py          # then: curl -N localhost:8080/sse
"""
import os
import threading
import uuid

from flask import Flask, request

from gosse import Broker, JSONEvent

app = Flask(__name__)
broker = Broker(headers={"Access-Control-Allow-Origin": "*"})  # Go: NewBroker(headers)


@app.route("/sse")
def sse():
    return broker.connect(str(uuid.uuid4()), request.environ)


def broadcast_forever(stop: threading.Event) -> None:
    n = 0
    while not stop.wait(float(os.environ.get("BROADCAST_EVERY", "2"))):
        n += 1
        broker.broadcast(JSONEvent({"count": n}, event="foo_update", id=str(n)))


# Started at import, so it also runs under gunicorn (see gunicorn.conf.py).
stop = threading.Event()
threading.Thread(target=broadcast_forever, args=(stop,), daemon=True).start()

if __name__ == "__main__":
    try:
        app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8080")), threaded=True)
    finally:
        stop.set()
        broker.close()
