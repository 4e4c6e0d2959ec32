"""Go example "send_to_client_using_reference": address one client by the
reference it connected with.

    python examples/send_to_client_using_reference.py
    curl -N 'localhost:8080/sse?client=alice'                 # terminal 1
    curl -X POST 'localhost:8080/send?client=alice' -d data=hi  # terminal 2
"""
import os

from flask import Flask, abort, request

from gosse import Broker, Event, UnknownClientError

app = Flask(__name__)
broker = Broker()


@app.route("/sse")
def sse():
    # A real app derives the reference from its own authentication
    # (session cookie, token): never trust a client-chosen id for private data.
    return broker.connect(request.args["client"], request.environ)


@app.route("/send", methods=["POST"])
def send():
    try:
        broker.send(request.args["client"], Event(request.form["data"], event="private"))
    except UnknownClientError as exc:
        abort(404, str(exc))
    return "sent\n"


@broker.on_disconnect
def gone(client_id: str, session_id: str) -> None:
    print(f"client {client_id} session {session_id} disconnected")


if __name__ == "__main__":
    try:
        app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8080")), threaded=True)
    finally:
        broker.close()
