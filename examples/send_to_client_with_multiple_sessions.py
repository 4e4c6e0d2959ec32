"""Go example "send_to_client_with_multiple_sessions": one client reference,
several open sessions (tabs); send() reaches every one of them, a session's
own send() only that one.

    python examples/send_to_client_with_multiple_sessions.py
    curl -N 'localhost:8080/sse?client=bob'   # in two terminals
    curl -X POST 'localhost:8080/send?client=bob' -d data=both-tabs
"""
import os

from flask import Flask, abort, jsonify, request

from gosse import Broker, Event, UnknownClientError

app = Flask(__name__)
broker = Broker()


@app.route("/sse")
def sse():
    client = request.args["client"]
    conn = broker.connect(client, request.environ)
    if not conn.refused:
        conn.send(Event(f"welcome, this is session {conn.session_id}", event="hello"))
        broker.set_client_metadata(client, {"sessions": len(broker.sessions(client))})
    return conn


@app.route("/send", methods=["POST"])
def send():
    client = request.args["client"]
    try:
        n = broker.send(client, Event(request.form["data"]))
    except UnknownClientError as exc:
        abort(404, str(exc))
    return jsonify(sessions=n, metadata=broker.get_client_metadata(client))


if __name__ == "__main__":
    try:
        app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8080")), threaded=True)
    finally:
        broker.close()
