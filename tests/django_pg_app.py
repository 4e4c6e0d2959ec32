"""A Django project on a real PostgreSQL (tests/pg_fixture.py) for gunicorn:
``GET /events`` runs a query (``?open_transaction=1``: in a transaction it
leaves open), then returns a gosse stream; ``GET /broadcast``
sends an event to every stream.  The database comes from the environment:
``GOSSE_PG_PORT``, ``GOSSE_PG_ATOMIC`` (``1``: ATOMIC_REQUESTS) and
``GOSSE_PG_CONN_MAX_AGE`` (seconds, or ``none`` for persistent connections)."""
import os

import django
from django.conf import settings

max_age = os.environ.get("GOSSE_PG_CONN_MAX_AGE", "0")
settings.configure(
    DEBUG=False, SECRET_KEY="test", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"], INSTALLED_APPS=[],
    USE_TZ=True,
    DATABASES={"default": {
        "ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1",
        "PORT": os.environ["GOSSE_PG_PORT"], "NAME": "postgres",
        "USER": os.environ.get("GOSSE_PG_USER", "gosse_app"),
        "ATOMIC_REQUESTS": os.environ.get("GOSSE_PG_ATOMIC") == "1",
        "CONN_MAX_AGE": None if max_age == "none" else int(max_age),
        "OPTIONS": {"connect_timeout": 5},
    }})
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from gosse import Broker, Event  # noqa: E402
from gosse.contrib.django import sse_response  # noqa: E402

broker = Broker(heartbeat_interval=0.5)


def events(request):
    if request.GET.get("open_transaction"):
        transaction.set_autocommit(False)   # and leave it open: work not committed yet
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [pid] = cursor.fetchone()
    response = sse_response(broker, request, client_id=request.GET.get("client", "anon"))
    response["X-Backend-Pid"] = str(pid)   # proof that the view used the database
    return response


def broadcast(request):
    return HttpResponse(str(broker.broadcast(Event(request.GET["data"]))))


urlpatterns = [path("events", events), path("broadcast", broadcast)]
application = get_wsgi_application()
