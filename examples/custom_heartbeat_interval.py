"""Go example "custom_heartbeat_interval": a stream that writes a heartbeat
comment after 2 seconds of silence instead of the default 15 (Go:
ConnectWithHeartBeatInterval).

    python examples/custom_heartbeat_interval.py  # then: curl -N localhost:8080/sse
"""
import os
import uuid

from flask import Flask, request

from gosse import Broker

app = Flask(__name__)
broker = Broker()


@app.route("/sse")
def sse():
    return broker.connect(str(uuid.uuid4()), request.environ, heartbeat_interval=2.0)


if __name__ == "__main__":
    try:
        app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8080")), threaded=True)
    finally:
        broker.close()
