"""A WSGI app around a Broker with a RedisBackplane, run by gunicorn with
several workers in the tests (``redis_app:app``).

Configured from the environment: ``GOSSE_REDIS_URL``, ``GOSSE_REDIS_PREFIX``,
``GOSSE_PRESENCE_TTL``, ``GOSSE_TEST_HEARTBEAT``, ``GOSSE_TEST_MAX_SESSIONS``
(per worker).  Every stream response
carries ``X-Worker-Pid`` so tests know which worker holds it.

* ``GET /sse?client=ID&topics=a,b`` the stream (Last-Event-ID resumes)
* ``POST /broadcast``, ``/send/<client>``, ``/publish/<topic>`` with form
  fields ``data``, ``event``, ``id``; 404 for an unknown client, 503 when
  Redis is unreachable
* ``GET /present/<client>`` -> ``1`` or ``0``; ``GET|POST /metadata/<client>``
* ``GET /stats`` -> the broker's stats plus ``pid``
"""
import json
import os

from werkzeug.wrappers import Request, Response

from gosse import Broker, Event, UnknownClientError
from gosse.backplane import BackplaneError
from gosse.backplane.redis import RedisBackplane
from servers import sse_view

PID = os.getpid()

backplane = RedisBackplane(os.environ.get("GOSSE_REDIS_URL", "redis://127.0.0.1:6379/0"),
                           prefix=os.environ.get("GOSSE_REDIS_PREFIX", "gosse-test"),
                           presence_ttl=float(os.environ.get("GOSSE_PRESENCE_TTL", "30")),
                           max_backoff=0.5)
_cap = os.environ.get("GOSSE_TEST_MAX_SESSIONS")
broker = Broker(heartbeat_interval=float(os.environ.get("GOSSE_TEST_HEARTBEAT", "15")),
                headers={"X-Worker-Pid": str(PID)}, auto_id=True, backplane=backplane,
                # a full worker answers 503, so clients that retry spread over workers
                max_sessions=int(_cap) if _cap else None, retry_after=0)


@Request.application
def _control(request):
    path = request.path
    try:
        if path == "/stats":
            return Response(json.dumps({**broker.stats(), "pid": PID}),
                            mimetype="application/json")
        if path.startswith("/present/"):
            return Response("1" if broker.is_client_present(path[len("/present/"):]) else "0")
        if path.startswith("/metadata/"):
            client = path[len("/metadata/"):]
            if request.method == "POST":
                broker.set_client_metadata(client, request.get_json(force=True))
                return Response("ok")
            return Response(json.dumps(broker.get_client_metadata(client)),
                            mimetype="application/json")
        form = request.form
        event = Event(form.get("data", ""), event=form.get("event"), id=form.get("id"))
        if path == "/broadcast":
            n = broker.broadcast(event)
        elif path.startswith("/send/"):
            n = broker.send(path[len("/send/"):], event)
        elif path.startswith("/publish/"):
            n = broker.publish(path[len("/publish/"):], event)
        else:
            return Response("not found", status=404)
        return Response(str(n), headers={"X-Worker-Pid": str(PID)})
    except UnknownClientError as exc:
        return Response(str(exc), status=404)
    except BackplaneError as exc:
        return Response(str(exc), status=503, headers={"Retry-After": "1"})


def app(environ, start_response):
    if environ["PATH_INFO"] == "/sse":
        return sse_view(broker, environ, start_response)
    return _control(environ, start_response)
