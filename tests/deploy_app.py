"""The app of the deployment matrix (tests/test_deploy_*.py): the routes of
tests/defects_app.py (``/sse``, ``/burst``, ``/close/<client>``,
``/stats``, ``/whoami``...) served by every server, plus:

* ``GET /proc``: this process's pid, thread count (``threads``, without
  gunicorn gthread's pool: ``pool_threads``) and open fds, and the
  ``SERVER_PROTOCOL`` and ``REMOTE_PORT`` of the last stream request (what
  a proxy spoke, on which upstream connection).
* ``GET /sse?client=ID&preload=N&size=S&hb=H``: a stream with N events
  (``payload("p", i, S)``, ids ``p-i``) queued before the response starts
  (for gunicorn's sync worker, whose one thread the stream holds: no other
  request can publish to it), heartbeat every H seconds.

``app`` is the plain WSGI app; ``django_app`` serves ``/sse`` through
Django (``gosse.contrib.django.sse_response``) and the rest as ``app``;
``DJANGO_SETTINGS_MODULE=deploy_app`` makes this module Django's settings
(for ``runserver``).  ``GOSSE_T_RECIPE=signal`` installs
:func:`gosse.contrib.signals.close_on_sigterm` (the documented recipe for
servers without gunicorn's hooks).
"""
import json
import os
import threading

from werkzeug.wrappers import Request, Response

from defects_app import app as defects_app
from defects_app import broker, make_event, record

# gunicorn gthread's request threads: a pool that grows up to --threads and
# stays (not a leak); every other thread counts.
POOL_THREADS = "ThreadPoolExecutor-"
# The SERVER_PROTOCOL and REMOTE_PORT of the last stream request: written by
# request threads, read by a test once the stream is open.
last_stream = {"protocol": None, "port": None}


def note_stream(environ):
    last_stream.update(protocol=environ.get("SERVER_PROTOCOL"), port=environ.get("REMOTE_PORT"))


def preloaded_stream(environ, start_response):
    args = Request(environ).args
    hb = args.get("hb")
    conn = broker.connect(args.get("client", "anon"), environ,
                          heartbeat_interval=float(hb) if hb else None)
    record.add(conn, environ)
    size = int(args.get("size", 0))
    for i in range(int(args.get("preload", 0))):
        conn.send(make_event("p", i, size))
    return conn(environ, start_response)


def proc_stats(environ, start_response):
    threads = threading.enumerate()
    pool = sum(1 for t in threads if t.name.startswith(POOL_THREADS))
    body = json.dumps({"pid": os.getpid(), "threads": len(threads) - pool, "pool_threads": pool,
                       "fds": len(os.listdir("/proc/self/fd")),
                       "protocol": last_stream["protocol"], "stream_port": last_stream["port"],
                       **broker.stats()})
    return Response(body, mimetype="application/json")(environ, start_response)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sse":
        note_stream(environ)
        query = environ.get("QUERY_STRING", "")
        if "preload=" in query or "hb=" in query:
            return preloaded_stream(environ, start_response)
    if path == "/proc":
        return proc_stats(environ, start_response)
    return defects_app(environ, start_response)


if os.environ.get("GOSSE_T_RECIPE") == "signal":
    from gosse.contrib.signals import close_on_sigterm
    close_on_sigterm()


# -- Django ------------------------------------------------------------------------

SECRET_KEY = "test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = __name__
MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware",
              "django.middleware.common.CommonMiddleware"]
INSTALLED_APPS = []
DATABASES = {}
USE_TZ = True
WSGI_APPLICATION = f"{__name__}.django_app"


def _django_events(request):
    from gosse.contrib.django import sse_response
    note_stream(request.environ)
    return sse_response(broker, request, client_id=request.GET.get("client", "anon"))


def _urls():
    from django.urls import path
    return [path("sse", _django_events)]


def __getattr__(name):   # urlpatterns only once Django asks (settings first)
    if name == "urlpatterns":
        return _urls()
    raise AttributeError(name)


_django = []


def django_app(environ, start_response):
    """``/sse`` through Django, everything else through ``app``."""
    if environ["PATH_INFO"] != "/sse":
        return app(environ, start_response)
    if not _django:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
        from django.core.wsgi import get_wsgi_application
        _django.append(get_wsgi_application())
    return _django[0](environ, start_response)
