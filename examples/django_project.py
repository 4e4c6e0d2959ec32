"""A one-file Django project streaming events with gosse.contrib.django.

    gunicorn -k gthread --threads 100 -b 127.0.0.1:8080 --chdir examples django_project
    curl -N localhost:8080/events                       # terminal 1
    curl 'localhost:8080/broadcast?data=hello'          # terminal 2

Serve Django over WSGI (gunicorn gthread, runserver), not ASGI.
"""
import django
from django.conf import settings

settings.configure(
    DEBUG=False, SECRET_KEY="change-me", ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__, MIDDLEWARE=["django.middleware.gzip.GZipMiddleware"],
    INSTALLED_APPS=[], DATABASES={})
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from gosse import Broker, Event  # noqa: E402
from gosse.contrib.django import sse_response  # noqa: E402

broker = Broker(history=100, auto_id=True)


def events(request):
    # Derive the client id from your own auth (request.user.pk) in a real app.
    return sse_response(broker, request, client_id=request.META.get("REMOTE_ADDR", "anon"))


def broadcast(request):
    n = broker.broadcast(Event(request.GET.get("data", "ping")))
    return HttpResponse(f"sent to {n} sessions\n")


urlpatterns = [path("events", events), path("broadcast", broadcast)]
application = get_wsgi_application()
