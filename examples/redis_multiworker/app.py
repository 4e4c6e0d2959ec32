"""Scale-out example: one Flask app, gunicorn with three worker processes,
one Redis.  Every stream, whichever worker holds it, gets every broadcast;
``send`` finds a client's sessions in any worker; a client reconnecting to
another worker resumes from its Last-Event-ID.

    cd examples/redis_multiworker
    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c gunicorn.conf.py app:app

    curl -N 'localhost:8080/sse?client=alice'              # a few of these
    curl -d data=hello localhost:8080/broadcast             # all of them
    curl -d data=psst localhost:8080/send/alice             # alice's sessions
    curl localhost:8080/present/alice                       # asked of any worker

See README.md beside this file.
"""
import os

from flask import Flask, Response, jsonify, request

from gosse import Broker, Event, UnknownClientError
from gosse.backplane import BackplaneError
from gosse.backplane.redis import RedisBackplane

app = Flask(__name__)

# Created at import: gunicorn (without --preload) imports the app in each
# worker, so each worker has its own broker; the backplane's listener and
# heartbeat threads start on first use in whichever process uses them.
broker = Broker(
    auto_id=True,                                    # ids from the Redis Stream: resumable anywhere
    headers={"X-Worker-Pid": str(os.getpid())},      # to see which worker holds a stream
    backplane=RedisBackplane(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                             prefix=os.environ.get("GOSSE_PREFIX", "gosse-example"),
                             history=10_000,         # events kept for Last-Event-ID replay
                             presence_ttl=30.0),     # a killed worker's clients expire after this
)


@app.route("/sse")
def sse():
    client = request.args.get("client", "anonymous")
    return broker.connect(client, request.environ)


def _event():
    return Event(request.values.get("data", ""), event=request.values.get("event"))


@app.route("/broadcast", methods=["POST"])
def broadcast():
    broker.broadcast(_event())
    return jsonify(worker=os.getpid())


@app.route("/send/<client>", methods=["POST"])
def send(client):
    try:
        broker.send(client, _event())
    except UnknownClientError:
        return Response(f"{client} is not connected to any worker\n", status=404)
    return jsonify(worker=os.getpid())


@app.route("/present/<client>")
def present(client):
    return jsonify(client=client, present=broker.is_client_present(client), worker=os.getpid())


@app.route("/stats")
def stats():
    return jsonify(worker=os.getpid(), **broker.stats())


@app.errorhandler(BackplaneError)
def redis_unavailable(exc):
    # Redis is unreachable: open streams keep going, publishing fails.
    return Response(f"{exc}\n", status=503, headers={"Retry-After": "1"})
